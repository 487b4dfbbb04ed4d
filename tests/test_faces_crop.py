"""The crop rule (msfer.faces.crop): box, roll and five-point similarity crops, on generated and real photos."""
import cv2
import numpy as np
import pytest

from msfer.errors import MsferError
from msfer.faces.crop import (
    ARCFACE_SIZE,
    ARCFACE_TEMPLATE,
    DEFAULT_CROP_RULE,
    CropRule,
    crop_face,
    face_transform,
    map_boxes,
    map_boxes_back,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255)]


def template_in_crop(size: int, scale: float) -> np.ndarray:
    """Where the similarity rule puts the five landmarks in a size x size crop."""
    return ((ARCFACE_TEMPLATE / ARCFACE_SIZE - 0.5) / scale + 0.5) * size


def similarity(angle_degrees: float, scale: float, shift) -> np.ndarray:
    angle = np.radians(angle_degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, np.asarray(shift, float)[:, None]])


def test_the_rule_checks_its_settings_and_reads_old_records():
    assert CropRule.from_dict(None) == DEFAULT_CROP_RULE == CropRule("box", 1.0)
    assert CropRule.from_dict({"method": "similarity"}) == CropRule("similarity", 1.0)
    assert CropRule.from_dict(CropRule("roll", 1.2).to_dict()) == CropRule("roll", 1.2)
    with pytest.raises(MsferError, match="unknown crop method 'affine'"):
        CropRule("affine")
    with pytest.raises(MsferError, match="out of range"):
        CropRule("box", 0.1)
    with pytest.raises(MsferError, match="mapping"):
        CropRule.from_dict({"method": "box", "size": 2})
    with pytest.raises(MsferError, match="needs the face's five landmarks"):
        face_transform([0, 0, 10, 10], None, CropRule("roll"))


@pytest.mark.parametrize("scale", [1.0, 1.4])
def test_similarity_maps_the_landmarks_onto_the_template_within_a_pixel(scale):
    # A face whose five points are an exact similarity of the template (turned 25 degrees, 1.7x, shifted),
    # drawn as coloured dots on a grey photo: after cropping, each dot sits on its template point.
    to_image = similarity(25, 1.7, (140, 60))
    landmarks = ARCFACE_TEMPLATE @ to_image[:, :2].T + to_image[:, 2]
    photo = np.full((400, 400, 3), 90, np.uint8)
    for point, colour in zip(landmarks, COLOURS):
        cv2.circle(photo, tuple(int(round(v)) for v in point * 16), 8 * 16, colour, -1, shift=4)
    size = 112
    crop, transform = crop_face(photo, [0, 0, 1, 1], landmarks, CropRule("similarity", scale), size)
    expected = template_in_crop(size, scale)
    assert crop.shape == (size, size, 3)
    assert np.abs(landmarks @ transform[:, :2].T + transform[:, 2] - expected).max() < 0.05  # the map itself
    for colour, target in zip(COLOURS, expected):
        # the dot's pixels in the crop: every channel within 40 of its colour
        mask = np.all(np.abs(crop.astype(int) - colour) < 40, axis=2)
        assert mask.sum() > 20
        ys, xs = np.nonzero(mask)
        assert np.hypot(xs.mean() + 0.5 - target[0], ys.mean() + 0.5 - target[1]) < 1.0


def test_box_and_roll_crops_are_centred_on_the_box():
    box = np.array([100.0, 50.0, 180.0, 150.0])
    landmarks = np.array([[120, 90], [160, 80], [140, 110], [125, 130], [155, 125]], float)
    for method in ("box", "roll"):
        transform, side = face_transform(box, landmarks, CropRule(method, 1.2))
        assert side == 120 and np.allclose(transform @ [140, 100, 1.0], [60, 60])
    transform, _ = face_transform(box, landmarks, CropRule("roll"))
    eyes = landmarks[:2] @ transform[:, :2].T + transform[:, 2]
    assert eyes[0, 1] == pytest.approx(eyes[1, 1])  # level
    transform, _ = face_transform(box, landmarks, CropRule("box"))
    assert np.allclose(transform[:, :2], np.eye(2))  # not turned


def test_boxes_go_through_the_map_and_back():
    transform = similarity(30, 0.5, (10, 20))
    boxes = np.array([[40.0, 40.0, 80.0, 60.0]])
    mapped = map_boxes(boxes, transform)
    corners = np.array([[40, 40], [80, 40], [40, 60], [80, 60]]) @ transform[:, :2].T + transform[:, 2]
    assert np.allclose(mapped, [[*corners.min(0), *corners.max(0)]])
    box_only = np.array([[2.0, 0, 3], [0, 2.0, -1]])  # a scale and shift: boxes map exactly both ways
    assert np.allclose(map_boxes_back(map_boxes(boxes, box_only), box_only, 1000, 1000), boxes)
    assert np.allclose(map_boxes_back(map_boxes(boxes, box_only), box_only, 70, 1000), [[40, 40, 70, 60]])  # clipped


def test_a_rotated_face_is_upright_after_roll_and_similarity_alignment(astronaut):
    from msfer.faces.detection import detect_faces
    from msfer.faces.retinaface import RetinaFaceDetector

    detector = RetinaFaceDetector()
    centre = (225.0, 115.0)
    turn = cv2.getRotationMatrix2D(centre, 30, 1.0)  # the head tilted by 30 degrees
    rotated = cv2.warpAffine(astronaut, turn, (512, 512), borderMode=cv2.BORDER_REFLECT)
    upright_face, rotated_face = (detect_faces(detector, [image])[0][0] for image in (astronaut, rotated))
    size = 96
    tilts, differences = {}, {}
    for method in ("box", "roll", "similarity"):
        rule = CropRule(method, 1.0)
        crop, transform = crop_face(rotated, rotated_face.box, rotated_face.landmarks, rule, size)
        eyes = rotated_face.landmarks[:2] @ transform[:, :2].T + transform[:, 2]
        tilts[method] = np.degrees(np.arctan2(eyes[1, 1] - eyes[0, 1], eyes[1, 0] - eyes[0, 0]))
        reference, _ = crop_face(astronaut, upright_face.box, upright_face.landmarks, rule, size)
        differences[method] = np.abs(crop.astype(float) - reference.astype(float)).mean()
    assert abs(tilts["box"]) > 20  # the box crop keeps the tilt
    for method in ("roll", "similarity"):
        assert abs(tilts[method]) < 4, method  # the eye line of the crop is level
        # and the crop looks like the upright face's crop (measured: roll 0.23, similarity 0.41 of the box's)
        assert differences[method] < 0.6 * differences["box"], method
