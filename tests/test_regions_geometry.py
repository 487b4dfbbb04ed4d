"""Region geometry from a face box and five landmarks."""
from __future__ import annotations

import numpy as np
import pytest

from msfer.labels import MERGED_EYES_REGION_NAMES, REGION_NAMES
from msfer.regions.geometry import derive_regions

# A frontal face in a 200 x 200 image: eyes 40 px apart (the unit), nose, mouth corners.
BOX = [50, 40, 150, 170]
LANDMARKS = np.array([[80, 90], [120, 90], [100, 115], [84, 140], [116, 140]], dtype=float)


def size(box):
    return box[2] - box[0], box[3] - box[1]


def centre(box):
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def test_organ_boxes_are_sized_from_the_eye_distance_and_placed_on_their_landmarks():
    regions = derive_regions(BOX, LANDMARKS, 200, 200)
    assert list(regions) == list(REGION_NAMES)
    assert regions["face"] == BOX
    assert size(regions["left_eye"]) == pytest.approx((32, 24))  # 0.8 u x 0.6 u
    assert centre(regions["left_eye"]) == pytest.approx((80, 88))  # lifted 0.05 u towards the brow
    assert centre(regions["right_eye"])[0] == pytest.approx(120)
    assert regions["nose"] == pytest.approx([86, 102.5, 114, 123])  # from halfway eye line-tip to 0.2 u below
    assert regions["mouth"] == pytest.approx([74, 128, 126, 158])  # corners + 0.25 u either side, 0.3 u up, 0.45 u down
    assert regions["left_eye"][2] < regions["right_eye"][0]


def test_the_regions_scale_with_the_face():
    small = derive_regions(np.array(BOX) / 4, LANDMARKS / 4, 50, 50)
    large = derive_regions(BOX, LANDMARKS, 200, 200)
    for name in REGION_NAMES:
        assert np.array(small[name]) * 4 == pytest.approx(np.array(large[name]))


def test_a_turned_head_keeps_usable_organ_boxes():
    # Eyes 10 px apart in a 100 px wide face: the unit is floored at 0.3 of the face width.
    turned = LANDMARKS.copy()
    turned[0], turned[1] = [95, 90], [105, 90]
    regions = derive_regions(BOX, turned, 200, 200)
    assert size(regions["left_eye"])[0] == pytest.approx(0.8 * 30)


def test_boxes_are_clipped_to_the_image_and_organs_to_the_face():
    # The face box runs off the image's top-left; the mouth box would run below the face box.
    box = [-20, -10, 60, 70]
    landmarks = np.array([[5, 15], [35, 15], [20, 35], [8, 62], [32, 62]], dtype=float)
    regions = derive_regions(box, landmarks, 48, 48)
    assert regions["face"] == [0, 0, 48, 48]
    for name, (x1, y1, x2, y2) in regions.items():
        assert 0 <= x1 <= x2 <= 48 and 0 <= y1 <= y2 <= 48, name
    assert regions["mouth"][3] == 48


def test_merged_eyes_are_the_union_of_the_two_eye_boxes():
    separate = derive_regions(BOX, LANDMARKS, 200, 200)
    merged = derive_regions(BOX, LANDMARKS, 200, 200, merge_eyes=True)
    assert list(merged) == list(MERGED_EYES_REGION_NAMES)
    left, right = separate["left_eye"], separate["right_eye"]
    assert merged["eyes"] == [left[0], left[1], right[2], right[3]]
    assert merged["mouth"] == separate["mouth"]


def test_a_rolled_face_uses_the_true_eye_distance():
    angle = np.radians(30)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rolled = (LANDMARKS - [100, 100]) @ rotation.T + [100, 100]
    regions = derive_regions([50, 20, 150, 180], rolled, 200, 200)
    assert size(regions["left_eye"]) == pytest.approx((32, 24))
