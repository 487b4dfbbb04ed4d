"""Every rule of the quality filter, and the choice of face in a single-face crop."""
from __future__ import annotations

import numpy as np
import pytest

from msfer.regions.quality import REJECTION_REASONS, QualityRules, rejection_reason, roll_degrees, select_face
from msfer.regions.retinaface import Face

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
