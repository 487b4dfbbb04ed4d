"""Finding every face of whole photos at the scales the detector needs: the detection step of the
whole pipeline, shared by :class:`msfer.inference.EmotionRecognizer` and training's photo validation.

RetinaFace sees a copy of each image downscaled so its longest side is at most ``detect_size``
(memory and time stay bounded for large photos). It finds faces from about 20 detector pixels on,
so in a large photo that copy loses the small faces (a 4000 x 2600 group photo at 640 px makes
80 px faces 13 px: none found). A photo where the copy would shrink a face of ``min_face`` pixels
below 20 is also detected at the scale that keeps it at 20 (0.5 for the default 40 px), capped at
:data:`MAX_FINE_PIXELS` detector pixels (24 MP photos keep 40 px; larger ones the smallest face
grows with the square root of their size). That finer copy replaces the coarse one when it still
shows the largest face the photo can hold within the detector's range (up to about 550 px), so
1080p frames take one pass; otherwise both passes run and their faces are merged: by non-maximum
suppression, and then a box lying mostly inside a larger face's box (at least :data:`CONTAINED`
of its area) is dropped, since the fine pass, seeing a face larger than it can frame, can give a
second, partial box on it (a phantom face with an emotion of its own). Photos up to twice
``detect_size`` (640 x 480 photos and video, 720p) take the single coarse pass. Each image is
detected on its own (only same-size images share a forward pass), so its faces do not depend on
the rest of its batch.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .retinaface import Face, non_maximum_suppression, resize_by

# The face sizes (box width, detector pixels) the bundled RetinaFace finds, measured with the
# sample face scaled on a grey canvas: none at 14 px, score 0.83 at 16, >= 0.92 from 20 px; a
# face filling a 1300 px frame (box 545 x 652) still at 1.0, a second, spurious face from 1600 px.
DETECTOR_SMALLEST_FACE = 20
DETECTOR_LARGEST_FACE = 550
# Detector pixels of the fine pass at most: a 24 MP photo at scale 0.5 (about 0.9 s and 360 MB on 2 cores).
MAX_FINE_PIXELS = 6_000_000
DEFAULT_MIN_FACE = 40
DEFAULT_DETECT_SIZE = 640
# Merging two passes, a box with at least this share of its area inside a larger face's box is a part of that face.
# Two real faces overlap less: one half hidden behind another keeps over half of its box outside the other's.
CONTAINED = 0.7


def detection_scales(height: int, width: int, detect_size: int, min_face: float | None) -> list[float]:
    """The scales (detector pixels per image pixel) an image is detected at: one or two (see the module docstring).

    ``detect_size``: the coarse copy's longest side. ``min_face``: the smallest face to find, image pixels
    (None or 0: the coarse copy alone).
    """
    coarse = min(1.0, detect_size / max(height, width))
    if not min_face:
        return [coarse]
    fine = min(1.0, DETECTOR_SMALLEST_FACE / min_face, (MAX_FINE_PIXELS / (height * width)) ** 0.5)
    if fine <= coarse:
        return [coarse]
    if fine * min(height, width) <= DETECTOR_LARGEST_FACE:
        return [fine]
    return [fine, coarse]


def detect_faces(detector, arrays: Sequence[np.ndarray], detect_size: int = DEFAULT_DETECT_SIZE,
                 min_face: float | None = DEFAULT_MIN_FACE) -> list[list[Face]]:
    """The faces of each image (H x W x 3 uint8 RGB), in original pixels (boxes not clipped), largest box first.

    ``detector``: a :class:`msfer.faces.retinaface.RetinaFaceDetector` (or anything with its ``detect``
    and ``nms_threshold``). Each image is detected at :func:`detection_scales`; the faces of two passes
    are merged by NMS.
    """
    plans = [detection_scales(*array.shape[:2], detect_size, min_face) for array in arrays]
    passes = [(index, scale) for index, scales in enumerate(plans) for scale in scales]
    copies = [resize_by(arrays[index], scale) for index, scale in passes]
    detections: list[list[Face]] = [[] for _ in arrays]
    for (index, _), copy, faces in zip(passes, copies, detector.detect(copies)):
        # Per axis, as the copy's sides were rounded: exact even for a 1 x 5000 image.
        scale_x, scale_y = copy.shape[1] / arrays[index].shape[1], copy.shape[0] / arrays[index].shape[0]
        detections[index] += [Face(face.box / [scale_x, scale_y, scale_x, scale_y], face.score,
                                   face.landmarks / [scale_x, scale_y]) for face in faces]
    for index, faces in enumerate(detections):
        if len(plans[index]) > 1 and len(faces) > 1:  # both passes can find the same face, or a part of it
            keep = non_maximum_suppression(np.array([face.box for face in faces]),
                                           np.array([face.score for face in faces]), detector.nms_threshold)
            faces = drop_contained([faces[k] for k in keep])
        detections[index] = sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    return detections


def drop_contained(faces: list[Face], share: float = CONTAINED) -> list[Face]:
    """``faces`` less each one whose box has at least ``share`` of its area inside a larger kept face's box
    (intersection over the smaller box's area), largest boxes first."""
    def area(box: np.ndarray) -> float:
        return max(float(box[2] - box[0]), 0.0) * max(float(box[3] - box[1]), 0.0)

    kept: list[Face] = []
    for face in sorted(faces, key=lambda f: -area(f.box)):
        inside = False
        for larger in kept:
            width = min(face.box[2], larger.box[2]) - max(face.box[0], larger.box[0])
            height = min(face.box[3], larger.box[3]) - max(face.box[1], larger.box[1])
            if width > 0 and height > 0 and width * height >= share * area(face.box):
                inside = True
                break
        if not inside:
            kept.append(face)
    return kept
