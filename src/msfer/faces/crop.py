"""The one crop rule: how a face found in a photo becomes the square crop the network sees.

Training (photo sets cropped from their ``msfer annotate`` records, :mod:`msfer.engine.datasets`),
the training's photo validation and inference (:class:`msfer.inference.EmotionRecognizer`) all
crop with :func:`crop_face`, so a model sees faces framed the same way in training and in use.
A model's checkpoint carries its rule (``crop_rule``, written by :func:`msfer.model.checkpoint.describe`
from the training config's ``data.crop_rule``); checkpoints without one use :data:`DEFAULT_CROP_RULE`.

Methods (:class:`CropRule`):

* ``box``: a square centred on the detector's face box, ``scale`` x the box's longer side, not
  rotated (msfer's rule until v2; the default).
* ``roll``: the same square, rotated about the box centre so that the eye line is level.
* ``similarity``: the least-squares similarity (rotation, uniform scale, shift) that maps
  RetinaFace's five landmarks onto :data:`ARCFACE_TEMPLATE` (``cv2.estimateAffinePartial2D``);
  ``scale`` 1.0 is the template's own framing (the 112 x 112 ArcFace crop), 1.25 a crop 25% wider
  and taller (12.5% more on each side; the template shrunk by 1/1.25 about the crop centre).

Every method crops at the face's native resolution first (a side of about the face's size in
image pixels) and then resizes with :func:`msfer.data.transforms.resize_square`, the resize every
path uses; pixels outside the image repeat its edge (``cv2.BORDER_REPLICATE``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import cv2
import numpy as np

from ..data.transforms import resize_square
from ..errors import MsferError

CROP_METHODS = ("box", "roll", "similarity")
# The crop side relative to what `scale` 1.0 frames: far outside this the crop is either a
# part of the face or mostly background.
MIN_SCALE, MAX_SCALE = 0.25, 4.0

# ArcFace's five-point template in its 112 x 112 crop (pixels; x right, y down), in RetinaFace's
# landmark order: image-left eye, image-right eye, nose tip, left and right mouth corner. From
# insightface (MIT licence), python-package/insightface/utils/face_align.py, ``arcface_dst``; the
# framing of the face-recognition crops of Deng et al., ArcFace (CVPR 2019).
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]], dtype=np.float64)
ARCFACE_SIZE = 112


@dataclass(frozen=True)
class CropRule:
    """How a detected face is cropped: ``method`` ("box", "roll" or "similarity", see the module
    docstring) and ``scale`` (dimensionless, in [0.25, 4]: for box and roll the crop side over the
    face box's longer side; for similarity the crop side over ArcFace's 112 px framing).

    Raises :class:`MsferError` for an unknown method or a scale out of range.
    """

    method: str = "box"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.method not in CROP_METHODS:
            raise MsferError(f"unknown crop method {self.method!r}: use one of {', '.join(CROP_METHODS)}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not (
                MIN_SCALE <= self.scale <= MAX_SCALE):
            raise MsferError(f"crop scale {self.scale!r} is out of range: expected a number in "
                             f"[{MIN_SCALE:g}, {MAX_SCALE:g}]")
        object.__setattr__(self, "scale", float(self.scale))

    def to_dict(self) -> dict[str, Any]:
        """``{"method": str, "scale": float}``: the form configs, checkpoints and ONNX metadata hold."""
        return asdict(self)

    @classmethod
    def from_dict(cls, value: dict | None) -> "CropRule":
        """The rule a config, checkpoint or ONNX file records; None or missing keys: the defaults (box, 1.0)."""
        if value is None:
            return DEFAULT_CROP_RULE
        if isinstance(value, CropRule):
            return value
        if not isinstance(value, dict) or set(value) - {"method", "scale"}:
            raise MsferError(f"a crop rule is a mapping {{method, scale}}, got {value!r}")
        return cls(**value)

    @classmethod
    def recorded(cls, value: dict | None, source: str) -> "CropRule":
        """The rule a model file (named ``source``) records (None: box at scale 1.0, the rule of models that
        recorded none); an invalid one is an :class:`MsferError` naming the file."""
        try:
            return cls.from_dict(value)
        except MsferError as error:
            raise MsferError(f"{source}: its crop_rule {value!r} is not valid ({error})") from None


DEFAULT_CROP_RULE = CropRule()


def _similarity(landmarks: np.ndarray, scale: float) -> tuple[np.ndarray, int]:
    """The similarity from image pixels to a crop whose template is framed by ``scale``, and the crop's side."""
    # The template in crop units (0..1), shrunk by 1/scale about the crop centre.
    target = (ARCFACE_TEMPLATE / ARCFACE_SIZE - 0.5) / scale + 0.5
    # RANSAC with a threshold far beyond the unit crop keeps all five points as inliers, and the
    # Levenberg-Marquardt refinement then gives the least-squares similarity of all of them.
    unit, _ = cv2.estimateAffinePartial2D(np.asarray(landmarks, np.float64).reshape(-1, 1, 2),
                                          target.reshape(-1, 1, 2), method=cv2.RANSAC, ransacReprojThreshold=1e3)
    if unit is None:  # degenerate landmarks (all in one point): no similarity exists
        raise MsferError("the face's landmarks are degenerate: no similarity maps them onto the template")
    per_pixel = float(np.sqrt(abs(np.linalg.det(unit[:, :2]))))  # crop units per image pixel
    side = max(int(round(1.0 / per_pixel)), 1)
    return unit * side, side


def face_transform(box: np.ndarray, landmarks: np.ndarray | None, rule: CropRule) -> tuple[np.ndarray, int]:
    """The 2 x 3 affine map from image pixels to the face's square crop at native resolution, and its side (px).

    ``box``: ``[x1, y1, x2, y2]``; ``landmarks``: 5 x 2 in RetinaFace order (needed by "roll" and
    "similarity"). For "box" and "roll" the box centre goes to the crop centre.
    """
    box = np.asarray(box, dtype=np.float64)
    if rule.method != "box" and landmarks is None:
        raise MsferError(f"crop method {rule.method!r} needs the face's five landmarks")
    if rule.method == "similarity":
        return _similarity(landmarks, rule.scale)
    center = (box[:2] + box[2:]) / 2
    side = max(int(round(rule.scale * max(box[2] - box[0], box[3] - box[1]))), 1)
    angle = 0.0
    if rule.method == "roll":
        eye_vector = np.asarray(landmarks[1], np.float64) - np.asarray(landmarks[0], np.float64)
        angle = float(np.degrees(np.arctan2(eye_vector[1], eye_vector[0])))
    transform = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle, 1.0)
    transform[:, 2] += side / 2 - center  # the face centre goes to the crop centre
    return transform, side


def crop_face(image: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None, rule: CropRule,
              size: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``size`` x ``size`` x 3 uint8 crop of one face of ``image`` (H x W x 3 uint8), and the 2 x 3 map
    from image pixels to that crop's pixels."""
    native, transform = native_crop(image, box, landmarks, rule)
    return resize_square(native, size), transform * (size / len(native))


def native_crop(image: np.ndarray, box: np.ndarray, landmarks: np.ndarray | None,
                rule: CropRule) -> tuple[np.ndarray, np.ndarray]:
    """The face's crop by ``rule`` at the face's own resolution (side x side x 3 uint8, edges replicated),
    and the 2 x 3 map from image pixels to it; :func:`crop_face` resizes it to the network's side."""
    transform, side = face_transform(box, landmarks, rule)
    native = cv2.warpAffine(image, transform, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return native, transform


def map_boxes(boxes: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Boxes (R x 4, ``x1, y1, x2, y2``) through a 2 x 3 affine map: the axis-aligned boxes around their
    mapped corners (R x 4), not clipped."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1), np.stack([x2, y2], 1)], 1)
    mapped = corners @ np.asarray(transform)[:, :2].T + np.asarray(transform)[:, 2]
    return np.hstack([mapped.min(axis=1), mapped.max(axis=1)])


def map_boxes_back(boxes: np.ndarray, transform: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (R x 4) in crop pixels -> the axis-aligned boxes around them in image pixels, clipped to the
    ``width`` x ``height`` image; ``transform`` maps image to crop pixels."""
    return clip_boxes(map_boxes(boxes, cv2.invertAffineTransform(np.asarray(transform, dtype=np.float64))),
                      width, height)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (... x 4, ``x1, y1, x2, y2`` pixels, float) clipped to a ``width`` x ``height`` image."""
    limits = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(np.asarray(boxes, dtype=np.float64), 0, limits)


def pixel_window(box, width: int, height: int) -> tuple[int, int, int, int]:
    """The whole pixels a box (``x1, y1, x2, y2``, float pixels) covers in a ``width`` x ``height`` image, as slice
    bounds ``(left, top, right, bottom)``: its edges rounded outwards and clipped to the image (``right <= left`` or
    ``bottom <= top`` when it covers none)."""
    return (max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0),
            min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height))
