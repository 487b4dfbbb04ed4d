"""Every rule of the quality filter, the choice of face in a single-face crop, and the per-face quality measures."""
from __future__ import annotations

import numpy as np
import pytest

from msfer.faces.quality import QUALITY_ISSUES, QualityThresholds, face_quality, roll_degrees, sharpness, yaw_degrees
from msfer.faces.retinaface import Face
from msfer.regions.filter import REJECTION_REASONS, QualityRules, rejection_reason, select_face

BOX = np.array([50.0, 40.0, 150.0, 170.0])
LANDMARKS = np.array([[80, 90], [120, 90], [100, 115], [84, 140], [116, 140]], dtype=float)


def face(landmarks=LANDMARKS, box=BOX, score=0.99) -> Face:
    return Face(np.asarray(box, dtype=float), score, np.asarray(landmarks, dtype=float))


def rotated(points: np.ndarray, degrees: float, centre=(100, 110)) -> np.ndarray:
    angle = np.radians(degrees)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return (points - centre) @ rotation.T + centre


def test_a_frontal_face_passes():
    assert rejection_reason(face()) is None


def test_low_score():
    assert rejection_reason(face(score=0.4)) == "low_score"
    assert rejection_reason(face(score=0.4), QualityRules(min_score=0.3)) is None


def test_landmarks_outside_the_face_box():
    outside = LANDMARKS.copy()
    outside[4] = [175, 140]  # a mouth corner 25 px right of the box
    assert rejection_reason(face(outside)) == "landmarks_outside_face"
    grazing = LANDMARKS.copy()
    grazing[4] = [153, 140]  # within the 5% margin
    assert rejection_reason(face(grazing)) is None


def test_roll():
    assert roll_degrees(rotated(LANDMARKS, 20)) == pytest.approx(20)
    assert rejection_reason(face(rotated(LANDMARKS, 40), box=[20, 20, 180, 200])) is None
    assert rejection_reason(face(rotated(LANDMARKS, 70), box=[20, 20, 180, 200])) == "roll"
    swapped = LANDMARKS[[1, 0, 2, 3, 4]]  # eyes swapped: a roll of 180 degrees
    assert rejection_reason(face(swapped)) == "roll"


@pytest.mark.parametrize("point, position", [(2, [100, 85]), (2, [100, 145]), (3, [116, 140])])
def test_landmark_order(point, position):
    # nose above the eyes; nose below the mouth; mouth corners swapped
    landmarks = LANDMARKS.copy()
    landmarks[point] = position
    if point == 3:
        landmarks[4] = [84, 140]
    assert rejection_reason(face(landmarks)) == "landmark_order"


def test_landmark_order_is_judged_in_the_face_frame():
    # Rolled 50 degrees, the nose is beside the eye in image y but still below the eye line.
    assert rejection_reason(face(rotated(LANDMARKS, 50), box=[20, 20, 180, 200])) is None


def test_eye_distance_against_face_width():
    profile = LANDMARKS.copy()
    profile[0], profile[1] = [95, 90], [110, 90]  # 15 px of a 100 px face
    assert rejection_reason(face(profile)) == "eye_distance"
    assert rejection_reason(face(profile), QualityRules(min_eye_distance=0.1)) is None
    narrow_box = [72, 40, 128, 170]  # eyes 40 px apart in a 56 px wide box
    assert rejection_reason(face(box=narrow_box)) == "eye_distance"


def test_the_first_failing_rule_is_the_reason():
    assert REJECTION_REASONS[0] == "low_score"
    outside = LANDMARKS.copy()
    outside[4] = [175, 140]
    assert rejection_reason(face(outside, score=0.1)) == "low_score"


def test_select_face_keeps_the_largest_most_central_confident_face():
    central = face(box=[30, 30, 90, 90])
    corner_large = face(box=[60, 60, 128, 128])
    small = face(box=[0, 0, 20, 20])
    weak_huge = face(box=[0, 0, 120, 120], score=0.3)
    assert select_face([], 120, 120) is None
    assert select_face([small, central], 120, 120) is central
    assert select_face([corner_large, central], 120, 120) is central  # 68^2 x 0.13 < 60^2 x 1
    assert select_face([weak_huge, central], 120, 120, min_score=0.5) is central
    assert select_face([weak_huge], 120, 120, min_score=0.5) is weak_huge


# -- Face quality at inference: yaw, sharpness and the quality flag ----------------------------------------------


def turned(degrees: float, eye_half: float = 20.0, depth: float = 20.0) -> np.ndarray:
    """Landmarks of a head turned by ``degrees`` (positive toward the image's right), seen from the front:
    eyes and mouth corners on the face plane, the nose tip ``depth`` px in front of it (weak perspective)."""
    angle = np.radians(degrees)
    # (x across, y down, z toward the camera) on the head; the turn rotates x and z about the vertical axis.
    points = np.array([[-eye_half, 0, 0], [eye_half, 0, 0], [0, 25, depth], [-16, 50, 0], [16, 50, 0]], dtype=float)
    x = points[:, 0] * np.cos(angle) + points[:, 2] * np.sin(angle)
    return np.stack([x + 100, points[:, 1] + 90], axis=1)


def test_yaw_of_a_frontal_face_is_zero_and_follows_the_turn():
    assert yaw_degrees(LANDMARKS) == pytest.approx(0.0)
    # With the nose tip half an eye distance in front of the eyes, the proxy is the turn itself.
    for degrees in (-60, -30, -10, 10, 30, 60):
        assert yaw_degrees(turned(degrees)) == pytest.approx(degrees, abs=1e-6)
    # A longer nose reads as more turn: it is a proxy, monotonic in the true angle.
    values = [yaw_degrees(turned(d, depth=30)) for d in (0, 10, 20, 40)]
    assert values == sorted(values) and values[1] > 10


def test_yaw_does_not_depend_on_roll_scale_or_position():
    for degrees in (15, -40):
        points = turned(degrees)
        assert yaw_degrees(rotated(points, 35)) == pytest.approx(degrees, abs=1e-6)
        assert yaw_degrees(points * 3 + 50) == pytest.approx(degrees, abs=1e-6)
        assert roll_degrees(rotated(points, 35)) == pytest.approx(35)


def test_sharpness_falls_with_blur_and_is_zero_for_a_flat_patch():
    import cv2

    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 256, (32, 32), dtype=np.uint8), (128, 128), interpolation=cv2.INTER_NEAREST)
    patch = np.repeat(texture[:, :, None], 3, axis=2)
    values = [sharpness(cv2.GaussianBlur(patch, (0, 0), sigma) if sigma else patch) for sigma in (0, 1, 2, 4)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0] / 10
    assert sharpness(np.full((50, 40, 3), 128, np.uint8)) == 0.0
    assert sharpness(np.zeros((0, 10, 3), np.uint8)) == 0.0
    assert sharpness(texture) == pytest.approx(values[0], rel=1e-4)  # grey or RGB alike


def test_face_quality_fields_and_flag():
    import cv2

    rng = np.random.default_rng(1)
    image = cv2.resize(rng.integers(0, 256, (60, 60, 3), dtype=np.uint8), (240, 240), interpolation=cv2.INTER_NEAREST)
    good = face_quality(image, [50, 40, 150, 170], 0.99, LANDMARKS)
    assert set(good) == {"face_size", "sharpness", "roll", "yaw", "quality", "quality_issues"}
    assert good["face_size"] == 100.0 and good["sharpness"] > 0 and good["roll"] == 0.0 and good["yaw"] == 0.0
    assert good["quality"] == "good" and good["quality_issues"] == []
    blurred = cv2.GaussianBlur(image, (0, 0), 8)
    bad = face_quality(blurred, [50, 40, 62, 170], 0.3, rotated(turned(60), 45, centre=(100, 100)))
    # By default the detector's score and the roll are not judged (the bundled model lost no accuracy to them).
    assert bad["quality"] == "low" and bad["quality_issues"] == ["small", "blurry", "yaw"]
    judged = QualityThresholds(min_score=0.9, max_roll=30)
    every = face_quality(blurred, [50, 40, 62, 170], 0.3, rotated(turned(60), 45, centre=(100, 100)), judged)
    assert every["quality_issues"] == list(QUALITY_ISSUES)  # every rule fails, in order
    nothing = QualityThresholds(None, None, None, None, None)
    assert face_quality(blurred, [50, 40, 62, 170], 0.3, rotated(turned(60), 45, centre=(100, 100)),
                        nothing)["quality"] == "good"
    assert bad["face_size"] == 12.0
    assert bad["roll"] == pytest.approx(45, abs=0.1) and bad["yaw"] == pytest.approx(60, abs=0.1)
    # A face given already cropped has no score or landmarks: those rules are not judged.
    crop = face_quality(image, [0, 0, 240, 240], None, None)
    assert crop["roll"] is None and crop["yaw"] is None and crop["quality"] == "good"
    strict = QualityThresholds(min_face_size=120)
    assert face_quality(image, [50, 40, 150, 170], 0.99, LANDMARKS, strict)["quality_issues"] == ["small"]
