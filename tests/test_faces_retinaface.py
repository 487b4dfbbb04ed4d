"""RetinaFace on a real photo (skimage's astronaut, no network) and the detector's batching."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from msfer.errors import MsferError
from msfer.faces.retinaface import RetinaFaceDetector, anchors_for, non_maximum_suppression
from msfer.regions.geometry import derive_regions


@pytest.fixture(scope="module")
def detector() -> RetinaFaceDetector:
    return RetinaFaceDetector()


def test_astronaut_has_one_face_with_landmarks_where_they_belong(detector):
    image = astronaut()
    (faces,) = detector.detect([image])
    assert len(faces) == 1
    face = faces[0]
    assert face.score > 0.9
    x1, y1, x2, y2 = face.box
    # Eileen Collins' face is at about x 180-270, y 60-175 in the 512 x 512 photo.
    assert 160 < x1 < 200 and 250 < x2 < 290 and 40 < y1 < 80 and 160 < y2 < 200
    left_eye, right_eye, nose, left_mouth, right_mouth = face.landmarks
    assert np.all(face.landmarks >= [x1, y1]) and np.all(face.landmarks <= [x2, y2])
    assert left_eye[0] < right_eye[0] and left_mouth[0] < right_mouth[0]
    assert max(left_eye[1], right_eye[1]) < nose[1] < min(left_mouth[1], right_mouth[1])

    regions = derive_regions(face.box, face.landmarks, image.shape[1], image.shape[0])
    assert list(regions) == ["face", "left_eye", "right_eye", "nose", "mouth"]
    for name in ("left_eye", "right_eye", "nose", "mouth"):
        bx1, by1, bx2, by2 = regions[name]
        assert x1 <= bx1 < bx2 <= x2 and y1 <= by1 < by2 <= y2, name
    assert regions["left_eye"][2] <= regions["right_eye"][0] + 5  # side by side, barely touching
    assert regions["left_eye"][3] < regions["mouth"][1]


def test_a_batch_of_different_sizes_gives_each_image_its_own_coordinates(detector):
    image = astronaut()
    crop = image[30:230, 140:330]  # the face moved by (-140, -30)
    grey_face = cv2.cvtColor(cv2.resize(image[40:200, 150:300], (128, 128)), cv2.COLOR_RGB2GRAY)
    alone = detector.detect([image])[0][0]
    full, cropped, grey = detector.detect([image, crop, grey_face])
    assert len(full) == len(cropped) == len(grey) == 1
    np.testing.assert_allclose(full[0].box, alone.box, atol=0.5)
    np.testing.assert_allclose(cropped[0].box, alone.box - [140, 30, 140, 30], atol=4)
    np.testing.assert_allclose(cropped[0].landmarks, alone.landmarks - [140, 30], atol=3)


def test_blank_images_have_no_face(detector):
    assert detector.detect([np.full((96, 96, 3), 128, np.uint8), np.zeros((64, 80), np.uint8)]) == [[], []]
    assert detector.detect([]) == []


def test_anchor_layout_matches_the_network_output(detector):
    for height, width in [(128, 128), (112, 100), (512, 512)]:
        loc = detector.session.run(None, {detector.input_name: np.zeros((1, 3, height, width), np.float32)})[
            detector.output_order[0]
        ]
        assert loc.shape[1] == len(anchors_for(height, width))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]], dtype=np.float32)
    keep = non_maximum_suppression(boxes, np.array([0.8, 0.9, 0.7]), 0.4)
    assert keep.tolist() == [1, 2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_nms_keeps_what_torchvision_keeps(dtype):
    torch = pytest.importorskip("torch")
    from torchvision.ops import nms

    rng = np.random.default_rng(0)
    for trial in range(50):
        corner = rng.uniform(0, 80, (40, 2))
        boxes = np.hstack([corner, corner + rng.uniform(5, 40, (40, 2))]).astype(dtype)
        scores = rng.permutation(40).astype(dtype) / 40 + 0.01  # distinct: no ties to break
        for threshold in (0.3, 0.4, 0.7):
            keep = non_maximum_suppression(boxes, scores, threshold)
            reference = nms(torch.from_numpy(boxes), torch.from_numpy(scores), threshold).tolist()
            assert keep.dtype == np.int64 and keep.tolist() == reference, (trial, threshold)
    assert non_maximum_suppression(np.zeros((0, 4)), np.zeros(0), 0.4).tolist() == []


def test_model_path_errors_name_the_file(tmp_path):
    with pytest.raises(MsferError, match="missing.onnx"):
        RetinaFaceDetector(tmp_path / "missing.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(MsferError, match="broken.onnx"):
        RetinaFaceDetector(broken)


def test_another_export_of_the_same_form_can_be_loaded(tmp_path, detector):
    from msfer.weights import RETINAFACE_MODEL

    exported = tmp_path / "retinaface.onnx"
    exported.write_bytes(RETINAFACE_MODEL.read_bytes())
    other = RetinaFaceDetector(exported, score_threshold=0.5, threads=1)
    (faces,) = other.detect([astronaut()])
    np.testing.assert_allclose(faces[0].box, detector.detect([astronaut()])[0][0].box, atol=1e-3)


def test_exactly_one_headless_opencv_is_installed():
    from importlib.metadata import distributions

    names = {d.metadata["Name"].lower() for d in distributions()}
    opencv = sorted(name for name in names if name.startswith("opencv"))
    assert opencv == ["opencv-python-headless"], opencv
    assert cv2.imdecode(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1], cv2.IMREAD_GRAYSCALE).shape == (4, 4)
