"""Emotion regions (face, eyes, nose, mouth) from a RetinaFace box and its five landmarks.

RetinaFace gives points, the region detector needs boxes. Every organ box is sized in
one unit, ``u``, the inter-ocular distance (eye centre to eye centre, Euclidean, so a
rolled head measures the same), floored at ``MIN_UNIT_OF_FACE_WIDTH`` of the face
box width so that a turned head, whose eyes come close in the image, still gets
organ boxes of a usable size. In units of ``u`` (an adult's eye is about 0.5 u wide,
the mouth about 0.8 u, the nose about 0.6 u):

* each eye: 0.8 u wide, 0.6 u high, centred 0.05 u above the eye centre, so that
  it takes in the lid and the start of the brow that carry expression;
* both eyes (``merge_eyes``): the union of the two eye boxes;
* nose: 0.7 u wide centred on the nose tip, from halfway between the eye line and
  the tip down to 0.2 u below the tip (the nostrils);
* mouth: the corners plus 0.25 u either side (at least 1 u wide), from 0.3 u above
  to 0.45 u below the corners' midpoint, since an open mouth (surprise, fear) opens
  downwards.

The face box is RetinaFace's own, clipped to the image. Organ boxes are clipped to
the face box: the organs are parts of the face, and the region detector then never
learns an organ that sticks out of its face.
"""
from __future__ import annotations

import numpy as np

from ..labels import region_names

MIN_UNIT_OF_FACE_WIDTH = 0.3
EYE_WIDTH, EYE_HEIGHT, EYE_LIFT = 0.8, 0.6, 0.05
NOSE_WIDTH, NOSE_BELOW_TIP = 0.7, 0.2
MOUTH_SIDE_MARGIN, MOUTH_MIN_WIDTH, MOUTH_ABOVE, MOUTH_BELOW = 0.25, 1.0, 0.3, 0.45

Box = list[float]


def _clip(box: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """``box`` clipped to ``bounds`` (both x1, y1, x2, y2); a box wholly outside becomes an empty one on the edge."""
    low = np.clip(box[:2], bounds[:2], bounds[2:])
    high = np.clip(box[2:], bounds[:2], bounds[2:])
    return np.concatenate([low, np.maximum(high, low)])


def _centred(cx: float, cy: float, width: float, height: float) -> np.ndarray:
    return np.array([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2])


def derive_regions(
    box: Box | np.ndarray, landmarks: np.ndarray | list, width: int, height: int, merge_eyes: bool = False
) -> dict[str, Box]:
    """Region boxes ``{name: [x1, y1, x2, y2]}`` in the landmarks' pixel frame.

    ``landmarks`` are RetinaFace's five points (image-left eye, image-right eye, nose,
    left and right mouth corner); ``width`` and ``height`` are the image's size. The
    names are ``msfer.labels.region_names(merge_eyes)``, in that order.
    """
    points = np.asarray(landmarks, dtype=np.float64).reshape(5, 2)
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    face = _clip(np.asarray(box, dtype=np.float64), np.array([0.0, 0.0, width, height]))
    unit = max(float(np.linalg.norm(right_eye - left_eye)), MIN_UNIT_OF_FACE_WIDTH * (face[2] - face[0]))

    eye_boxes = [
        _centred(eye[0], eye[1] - EYE_LIFT * unit, EYE_WIDTH * unit, EYE_HEIGHT * unit) for eye in (left_eye, right_eye)
    ]
    eye_line_y = (left_eye[1] + right_eye[1]) / 2
    nose_box = np.array([
        nose[0] - NOSE_WIDTH * unit / 2,
        (eye_line_y + nose[1]) / 2,
        nose[0] + NOSE_WIDTH * unit / 2,
        nose[1] + NOSE_BELOW_TIP * unit,
    ])
    mouth_center = (left_mouth + right_mouth) / 2
    mouth_width = max(abs(right_mouth[0] - left_mouth[0]) + 2 * MOUTH_SIDE_MARGIN * unit, MOUTH_MIN_WIDTH * unit)
    mouth_box = np.array([
        mouth_center[0] - mouth_width / 2,
        mouth_center[1] - MOUTH_ABOVE * unit,
        mouth_center[0] + mouth_width / 2,
        mouth_center[1] + MOUTH_BELOW * unit,
    ])

    if merge_eyes:
        eyes = {"eyes": np.concatenate([np.minimum(*eye_boxes)[:2], np.maximum(*eye_boxes)[2:]])}
    else:
        eyes = {"left_eye": eye_boxes[0], "right_eye": eye_boxes[1]}
    boxes = {"face": face, **eyes, "nose": nose_box, "mouth": mouth_box}
    regions = {name: _clip(boxes[name], face) if name != "face" else face for name in region_names(merge_eyes)}
    return {name: [float(v) for v in region] for name, region in regions.items()}
