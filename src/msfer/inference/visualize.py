"""Annotated images: each face's box, its label with confidence, and the emotion regions the network used (a plain
classifier has none: its faces get the box and label alone)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .results import FaceResult

FACE_COLOR = (0, 200, 0)
# RGB colours of the organ regions; the face region is the face box itself, so it is not drawn twice.
REGION_COLORS = {
    "left_eye": (0, 160, 255),
    "right_eye": (0, 160, 255),
    "eyes": (0, 160, 255),
    "nose": (255, 200, 0),
    "mouth": (255, 60, 160),
}


def draw_faces(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of ``image`` (H x W x 3 uint8 RGB) with ``faces`` drawn on it; lines scale with the image size."""
    canvas = np.ascontiguousarray(image).copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1200)
    for face in faces:
        for name, region in face.regions.items():
            if name in REGION_COLORS:
                cv2.rectangle(canvas, _point(region[:2]), _point(region[2:]), REGION_COLORS[name], thickness)
        x1, y1 = _point(face.box[:2])
        cv2.rectangle(canvas, (x1, y1), _point(face.box[2:]), FACE_COLOR, thickness + 1)
        caption = f"{face.label} {face.confidence:.0%}" + (f" #{face.track_id}" if face.track_id is not None else "")
        (width, height), baseline = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, font_scale, thickness)
        top = max(y1 - height - baseline - 2, 0)  # above the box, or inside it at the image's top edge
        cv2.rectangle(canvas, (x1, top), (x1 + width + 4, top + height + baseline + 2), FACE_COLOR, cv2.FILLED)
        cv2.putText(canvas, caption, (x1 + 2, top + height + 1), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0),
                    thickness, cv2.LINE_AA)
    return canvas


def _point(xy: Sequence[float]) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))
