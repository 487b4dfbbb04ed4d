"""Annotated images: each face's box, its label with confidence, and the emotion regions the network used (a plain
classifier has none: its faces get the box and label alone).

Faces are marked as the service's web page marks them: a solid green box for a face of good quality, a **dashed
orange** box for one of low quality (small, blurred or turned away: its label is less often right), whose caption
also says "low quality". A caption never leaves the image: it stands above its box, inside the box where the box
touches the top edge, is moved left where the box touches the right edge, and is drawn smaller where the image is
narrower than it.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from .results import FaceResult

FACE_COLOR = (0, 200, 0)  # the web page's "#00c800"
LOW_QUALITY_COLOR = (255, 140, 0)  # the web page's "#ff8c00"
# RGB colours of the organ regions; the face region is the face box itself, so it is not drawn twice.
REGION_COLORS = {
    "left_eye": (0, 160, 255),
    "right_eye": (0, 160, 255),
    "eyes": (0, 160, 255),
    "nose": (255, 200, 0),
    "mouth": (255, 60, 160),
}
FONT = cv2.FONT_HERSHEY_SIMPLEX
SMALLEST_FONT_SCALE = 0.25


def draw_faces(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """A copy of ``image`` (H x W x 3 uint8 RGB) with ``faces`` drawn on it; lines scale with the image size."""
    canvas = np.ascontiguousarray(image).copy()
    thickness = max(1, round(max(canvas.shape[:2]) / 400))
    font_scale = max(0.4, max(canvas.shape[:2]) / 1200)
    for face in faces:
        for name, region in face.regions.items():
            if name in REGION_COLORS:
                cv2.rectangle(canvas, _point(region[:2]), _point(region[2:]), REGION_COLORS[name], thickness)
        low = face.quality == "low"
        color = LOW_QUALITY_COLOR if low else FACE_COLOR
        top_left, bottom_right = _point(face.box[:2]), _point(face.box[2:])
        line = thickness + 1
        if low:  # the page's dash pattern: 3 line widths drawn, 2 left out
            _dashed_rectangle(canvas, top_left, bottom_right, color, line, 3 * line, 2 * line)
        else:
            cv2.rectangle(canvas, top_left, bottom_right, color, line)
        caption = (f"{face.label} {face.confidence:.0%}" + (", low quality" if low else "")
                   + (f" #{face.track_id}" if face.track_id is not None else ""))
        _draw_caption(canvas, caption, top_left, color, font_scale, thickness)
    return canvas


def _draw_caption(canvas: np.ndarray, caption: str, corner: tuple[int, int], color: tuple[int, int, int],
                  font_scale: float, thickness: int) -> None:
    """``caption`` on a filled ``color`` label at the box's top-left ``corner``, whole inside the image."""
    height, width = canvas.shape[:2]
    (text_width, text_height), baseline = cv2.getTextSize(caption, FONT, font_scale, thickness)
    while text_width + 4 > width and font_scale > SMALLEST_FONT_SCALE:  # an image narrower than the caption
        font_scale = max(SMALLEST_FONT_SCALE, font_scale * 0.8)
        thickness = 1
        (text_width, text_height), baseline = cv2.getTextSize(caption, FONT, font_scale, thickness)
    label_width, label_height = text_width + 4, text_height + baseline + 2
    x1, y1 = corner
    left = min(max(x1, 0), max(width - label_width, 0))  # moved left at the right edge
    top = y1 - label_height if y1 - label_height >= 0 else max(y1, 0)  # above the box, or inside it at the top edge
    top = max(min(top, height - label_height), 0)  # and never below the bottom edge
    cv2.rectangle(canvas, (left, top), (left + label_width - 1, top + label_height - 1), color, cv2.FILLED)
    cv2.putText(canvas, caption, (left + 2, top + text_height + 1), FONT, font_scale, (0, 0, 0), thickness,
                cv2.LINE_AA)


def _dashed_rectangle(canvas: np.ndarray, top_left: tuple[int, int], bottom_right: tuple[int, int],
                      color: tuple[int, int, int], thickness: int, dash: int, gap: int) -> None:
    """A rectangle outline ``thickness`` pixels wide (centred on the box's edges, as ``cv2.rectangle`` draws it) of
    dashes ``dash`` pixels long with ``gap`` pixels between them; OpenCV draws no dashed line."""
    (x1, y1), (x2, y2) = top_left, bottom_right
    before, after = thickness // 2, (thickness - 1) // 2  # the line's pixels on either side of the edge

    def fill(left: int, top: int, right: int, bottom: int) -> None:
        cv2.rectangle(canvas, (left, top), (right, bottom), color, cv2.FILLED)

    for start in range(x1 - before, x2 + after + 1, dash + gap):  # top and bottom edges
        end = min(start + dash - 1, x2 + after)
        fill(start, y1 - before, end, y1 + after)
        fill(start, y2 - before, end, y2 + after)
    for start in range(y1 - before, y2 + after + 1, dash + gap):  # left and right edges
        end = min(start + dash - 1, y2 + after)
        fill(x1 - before, start, x1 + after, end)
        fill(x2 - before, start, x2 + after, end)


def _point(xy: Sequence[float]) -> tuple[int, int]:
    return int(round(xy[0])), int(round(xy[1]))
