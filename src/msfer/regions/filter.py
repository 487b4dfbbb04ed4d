"""The quality filter: the automatic form of the paper's manual removal of bad pseudo-labels.

The paper (sections 3.1, 4.3) ran RetinaFace over RAF-DB and removed "the parts with
large differences" by hand. Here every detection is checked against rules that a
person looking at it would apply, in this order, and the first one that fails is its
rejection reason:

* ``low_score``: RetinaFace's confidence is below ``min_score``;
* ``landmarks_outside_face``: a landmark lies outside the face box (with a margin of
  ``landmark_margin`` of the box size, since RetinaFace's boxes often graze the
  mouth corners and the chin);
* ``roll``: the eye line is tilted more than ``max_roll_degrees`` (this also catches
  swapped eyes, a roll beyond 90 degrees);
* ``landmark_order``: in the face's own frame (the eye line turned level), the eyes
  are not above the nose, the nose not above the mouth, or the mouth corners are
  swapped;
* ``eye_distance``: the inter-ocular distance is implausible against the face width
  (a frontal face has about 0.4; much less is a profile whose landmarks are guessed,
  much more a box that missed the face).

Datasets of single-face crops sometimes show a second face (a hand-held photo, a
person behind); :func:`select_face` keeps the largest, most central one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..faces.quality import roll_degrees
from ..faces.retinaface import Face

REJECTION_REASONS: tuple[str, ...] = ("low_score", "landmarks_outside_face", "roll", "landmark_order", "eye_distance")


@dataclass(frozen=True)
class QualityRules:
    """Thresholds of the quality filter (see the module docstring for what each rule means)."""

    min_score: float = 0.5
    landmark_margin: float = 0.05
    min_eye_distance: float = 0.2
    max_eye_distance: float = 0.7
    max_roll_degrees: float = 60.0


def rejection_reason(face: Face, rules: QualityRules = QualityRules()) -> str | None:
    """The first rule ``face`` fails (one of :data:`REJECTION_REASONS`), or None when it passes them all."""
    points = np.asarray(face.landmarks, dtype=np.float64)
    x1, y1, x2, y2 = (float(v) for v in face.box)
    face_width, face_height = x2 - x1, y2 - y1
    if face.score < rules.min_score:
        return "low_score"
    margin = rules.landmark_margin * np.array([face_width, face_height])
    if np.any(points < np.array([x1, y1]) - margin) or np.any(points > np.array([x2, y2]) + margin):
        return "landmarks_outside_face"
    if abs(roll_degrees(points)) > rules.max_roll_degrees:
        return "roll"
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    eye_vector = right_eye - left_eye
    eye_distance = float(np.linalg.norm(eye_vector))
    across = eye_vector / max(eye_distance, 1e-9)
    down = np.array([-across[1], across[0]])
    eye_center = (left_eye + right_eye) / 2
    nose_depth = float((nose - eye_center) @ down)
    mouth_depth = float(((left_mouth + right_mouth) / 2 - eye_center) @ down)
    if not (0 < nose_depth < mouth_depth) or float((right_mouth - left_mouth) @ across) <= 0:
        return "landmark_order"
    if not rules.min_eye_distance <= eye_distance / max(face_width, 1e-9) <= rules.max_eye_distance:
        return "eye_distance"
    return None


def select_face(faces: Sequence[Face], width: int, height: int, min_score: float = 0.0) -> Face | None:
    """The face a single-face crop is about: the largest, most central one.

    Ranked by area times centrality (1 at the image centre, 0 at a corner), among the
    faces scoring at least ``min_score`` when there are any (so a large, weak false
    detection never displaces a real face), else among all.
    """
    if not faces:
        return None
    confident = [face for face in faces if face.score >= min_score] or list(faces)
    image_center = np.array([width, height], dtype=np.float64) / 2
    half_diagonal = float(np.linalg.norm(image_center))

    def rank(face: Face) -> float:
        x1, y1, x2, y2 = (float(v) for v in face.box)
        offset = np.linalg.norm(np.array([x1 + x2, y1 + y2]) / 2 - image_center)
        centrality = max(0.0, 1.0 - offset / half_diagonal)
        return (x2 - x1) * (y2 - y1) * centrality

    return max(confident, key=rank)
