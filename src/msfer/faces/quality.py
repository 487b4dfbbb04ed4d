"""Face quality: how far a face is from what the classifier reads well.

:func:`face_quality` gives these measures in every output of ``msfer predict``, the API and
the service:

* ``face_size``: the shorter side of the face box clipped to the image, in image pixels (a
  face cut by the image edge counts only its visible part; the shorter side because a box
  that is narrow in either direction holds little of the face);
* ``sharpness``: the variance of the Laplacian (OpenCV's 3 x 3 aperture) of the face box's
  grey pixels resized to ``SHARPNESS_SIZE`` x ``SHARPNESS_SIZE``; 0 for a flat patch, a few
  hundred for a sharp face. A face smaller than that size is enlarged first, so its value also
  falls with its resolution: it measures the detail the face holds at a fixed scale;
* ``roll``: the eye line's angle in degrees (:func:`roll_degrees`), in (-180, 180], 0 level,
  positive when the image-right eye is lower;
* ``yaw``: a geometric proxy for the head's turn from the five landmarks (:func:`yaw_degrees`),
  in (-90, 90), 0 frontal, positive when the face turns toward the image's right;
* ``quality``: ``"good"``, or ``"low"`` when one of :class:`QualityThresholds` fails, the
  failures listed in ``quality_issues`` (``small``, ``low_score``, ``blurry``, ``roll``,
  ``yaw``). The thresholds were chosen from measured accuracy (:class:`QualityThresholds`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


def roll_degrees(landmarks: np.ndarray) -> float:
    """Angle of the line from the image-left eye to the image-right eye, in degrees (0: level)."""
    dx, dy = landmarks[1] - landmarks[0]
    return math.degrees(math.atan2(dy, dx))


def yaw_degrees(landmarks: np.ndarray) -> float:
    """A proxy for the head's yaw from RetinaFace's five landmarks, in degrees in (-90, 90).

    In the face's own frame (the eye line turned level), ``r`` is the nose tip's offset from
    the face's midline (the mean of the eye midpoint and the mouth-corner midpoint) along the
    eye line, divided by half the eye distance; ``yaw = atan(r)``. Under a weak-perspective
    view of a head whose nose tip lies about half an eye distance in front of the eyes
    (typical adult proportions) this is the turn angle: a turn ``t`` moves the nose by
    ``d sin t`` while the eyes close up to ``2 d cos t``. 0 is frontal; positive when the nose
    is right of the midline in the image (the face turned toward the image's right). It is a
    proxy: beyond about 45 degrees RetinaFace guesses the hidden landmarks and it saturates.
    """
    points = np.asarray(landmarks, dtype=np.float64)
    left_eye, right_eye, nose, left_mouth, right_mouth = points
    eye_vector = right_eye - left_eye
    eye_distance = float(np.linalg.norm(eye_vector))
    if eye_distance < 1e-9:
        return 0.0
    across = eye_vector / eye_distance
    midline = ((left_eye + right_eye) / 2 + (left_mouth + right_mouth) / 2) / 2
    return math.degrees(math.atan(float((nose - midline) @ across) / (eye_distance / 2)))


# Side of the grey face patch the sharpness is measured on (pixels).
SHARPNESS_SIZE = 64


def sharpness(patch: np.ndarray) -> float:
    """Variance of the Laplacian of ``patch`` (H x W x 3 RGB or H x W grey uint8) at ``SHARPNESS_SIZE`` square.

    0 for an empty or flat patch; grows with fine detail and contrast (a few hundred for a sharp face).
    """
    if patch.size == 0:
        return 0.0
    grey = cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY) if patch.ndim == 3 else patch
    shrinking = grey.shape[0] * grey.shape[1] > SHARPNESS_SIZE ** 2
    grey = cv2.resize(grey, (SHARPNESS_SIZE, SHARPNESS_SIZE),
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return float(cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F).var())


QUALITY_ISSUES: tuple[str, ...] = ("small", "low_score", "blurry", "roll", "yaw")


@dataclass(frozen=True)
class QualityThresholds:
    """Where a face's quality turns ``"low"``: ``min_face_size`` pixels, ``min_score`` (RetinaFace's
    confidence), ``min_sharpness`` (variance of the Laplacian), ``max_roll`` and ``max_yaw`` (absolute
    degrees); None: that measure is not judged.

    Chosen with the bundled model (v2) by ``benchmarks/face_quality.py`` (``docs/quality.json``; README,
    "Face quality and accuracy"): size and sharpness are the typical face of the mildest controlled
    degradation of TCCE val photos (shrinking, blurring) that cost 5 points of accuracy (38.4 px and
    215, rounded); yaw is the loosest threshold whose FER2013 public_test faces were 5 points less
    accurate than their class mix predicts. Roll and the detector's score are not judged: rotating the
    photos by up to 60 degrees cost at most 3.1 points (the aligned crop levels the eyes), and no score
    threshold met the rule. A model cropped or trained otherwise may need others (measure it with
    ``benchmarks/face_quality.py --weights``).
    """

    min_face_size: float | None = 40.0
    min_score: float | None = None
    min_sharpness: float | None = 200.0
    max_roll: float | None = None
    max_yaw: float | None = 30.0


def quality_issues(face_size: float, score: float | None, sharpness: float, roll: float | None, yaw: float | None,
                   thresholds: QualityThresholds | None = None) -> list[str]:
    """The :data:`QUALITY_ISSUES` a face's measures fail, in that order (a measure or threshold None: not
    judged); ``thresholds`` default :class:`QualityThresholds`."""
    t = thresholds or QualityThresholds()
    return [name for name, failed in (
        ("small", t.min_face_size is not None and face_size < t.min_face_size),
        ("low_score", None not in (score, t.min_score) and score < t.min_score),
        ("blurry", t.min_sharpness is not None and sharpness < t.min_sharpness),
        ("roll", None not in (roll, t.max_roll) and abs(roll) > t.max_roll),
        ("yaw", None not in (yaw, t.max_yaw) and abs(yaw) > t.max_yaw),
    ) if failed]


def face_quality(image: np.ndarray, box: Sequence[float], score: float | None, landmarks: np.ndarray | None,
                 thresholds: QualityThresholds | None = None) -> dict:
    """The quality measures of one face.

    ``face_size``, ``sharpness``, ``roll``, ``yaw``, ``quality``, ``quality_issues``.

    ``image`` is H x W x 3 uint8 RGB, ``box`` ``[x1, y1, x2, y2]`` already clipped to it,
    ``score`` RetinaFace's confidence and ``landmarks`` its 5 x 2 points (None for a face
    given already cropped: then no score, roll or yaw is measured or judged).
    """
    x1, y1, x2, y2 = box
    face_size = max(min(x2 - x1, y2 - y1), 0.0)
    left, top = math.floor(x1), math.floor(y1)
    right, bottom = max(math.ceil(x2), left + 1), max(math.ceil(y2), top + 1)
    sharp = sharpness(image[top:bottom, left:right])
    roll = yaw = None
    if landmarks is not None:
        roll, yaw = roll_degrees(np.asarray(landmarks, dtype=np.float64)), yaw_degrees(landmarks)
    issues = quality_issues(face_size, score, sharp, roll, yaw, thresholds)
    return {"face_size": round(float(face_size), 1), "sharpness": round(sharp, 1),
            "roll": None if roll is None else round(roll, 1), "yaw": None if yaw is None else round(yaw, 1),
            "quality": "low" if issues else "good", "quality_issues": issues}
