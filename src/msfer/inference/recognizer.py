"""The Python API: :class:`EmotionRecognizer` finds every face in a photo and classifies its emotion.

Pipeline, per image:

1. **Detect** with RetinaFace on a copy downscaled so its longest side is at most
   ``detect_size`` (memory and time stay bounded for large photos; faces are then
   cropped from the full-resolution image). RetinaFace finds faces from about 20
   detector pixels on, so in a large photo that copy loses the small faces (a 4000 x
   2600 group photo at 640 px makes 80 px faces 13 px: none found). A photo where the
   copy would shrink a face of ``min_face`` pixels below 20 is also detected at the
   scale that keeps it at 20 (0.5 for the default 40 px), capped at ``MAX_FINE_PIXELS``
   detector pixels (24 MP photos keep 40 px; larger ones the smallest face grows with
   the square root of their size). That finer copy replaces the coarse one when it still
   shows the largest face the photo can hold within the detector's range (up to about
   550 px), so 1080p frames take one pass; otherwise both passes run and their faces are
   merged by non-maximum suppression. Photos up to twice ``detect_size`` (640 x 480
   photos and video, 720p) take the single coarse pass, as before. Each image is
   detected on its own (only same-size images share a forward pass), so its faces do
   not depend on the rest of its batch.
2. **Crop** each face square, centred on RetinaFace's box, with a side of
   ``crop_scale`` times the box's longer side. The default 1.0 is measured, not
   guessed: on 590 FER2013 public_test faces (upscaled and padded, then detected)
   the dataset's own crop side is 0.97x the RetinaFace box's longer side (median;
   10th-90th percentile 0.82-1.23) and the box is centred in the crop, so this
   framing matches what the network was trained on. Pixels outside the image are
   replicated from its edge. ``align=True`` also rotates the face so the eyes are
   level; it is off by default because FER2013 faces are not roll-aligned either
   (median roll 4.7 degrees, 10% of them over 20).
3. **Classify** the crops in batches of ``batch_size`` with the region network
   (PyTorch, or ONNX Runtime with ``backend="onnx"``); ``tta=True`` averages the
   probabilities of each crop and its mirror image. Resizing to the network's input,
   normalising and mirroring are :mod:`msfer.data.transforms`, the functions ``msfer
   evaluate`` and training's validation use: a crop gives the same input tensor and
   probabilities on every path.
4. **Decide** the label by the ``decision`` rule: ``"argmax"`` (default), the most probable
   emotion; ``"balanced"``, the class-prior adjustment a bundled model carries (higher mean
   class accuracy, for studies of rare emotions). The rule changes ``label`` and
   ``confidence`` (the probability of that label), never ``probs``.
5. **Map back** the emotion regions the network used from crop pixels to image pixels, and
   measure each face's quality (:func:`msfer.regions.quality.face_quality`).

Images are RGB everywhere in msfer. A numpy array is taken as RGB unless
``color_order="bgr"`` (what OpenCV's ``imread`` and ``VideoCapture`` give).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence, Union

import cv2
import numpy as np
import torch
from PIL import Image

from ..data.transforms import class_probabilities, mirror, model_input, resize_square
from ..errors import MsferError
from ..labels import EMOTIONS
from ..regions.quality import QualityThresholds, face_quality
from ..regions.retinaface import Face, non_maximum_suppression, resize_by

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]

# Keys under which `msfer export` stores the model's description in the ONNX metadata_props.
ONNX_METADATA_KEYS = ("classes", "input_size", "mean", "std", "region_names")
# Also written by `msfer export` (files exported before they existed lack them): the balanced
# decision rule's logit offsets, and the model's calibration summary (:func:`calibration_summary`).
ONNX_OPTIONAL_KEYS = ("balanced_offsets", "calibration")
DEFAULT_DECISION = "argmax"

# The face sizes (box width, detector pixels) the bundled RetinaFace finds, measured with the
# sample face scaled on a grey canvas: none at 14 px, score 0.83 at 16, >= 0.92 from 20 px; a
# face filling a 1300 px frame (box 545 x 652) still at 1.0, a second, spurious face from 1600 px.
DETECTOR_SMALLEST_FACE = 20
DETECTOR_LARGEST_FACE = 550
# Detector pixels of the fine pass at most: a 24 MP photo at scale 0.5 (about 0.9 s and 360 MB on 2 cores).
MAX_FINE_PIXELS = 6_000_000
DEFAULT_MIN_FACE = 40


@dataclass
class FaceResult:
    """One face: where it is and what the network thinks it expresses.

    All coordinates are in the input image's pixels. ``box`` is ``[x1, y1, x2, y2]``;
    ``landmarks`` are RetinaFace's five points (image-left eye, image-right eye, nose,
    left and right mouth corner); ``regions`` maps region names (face, eyes, nose,
    mouth) to the boxes the network attended to; ``probs`` has the 7 emotions in
    :data:`msfer.labels.EMOTIONS` order. ``score`` and ``landmarks`` are ``None`` for
    faces that were given pre-cropped (:meth:`EmotionRecognizer.classify_faces`);
    ``track_id`` is set only for video.

    ``label`` is the emotion the ``decision`` rule ("argmax" or "balanced") chose and
    ``confidence`` its probability; ``probs`` do not depend on the rule. The quality fields
    are those of :func:`msfer.regions.quality.face_quality`: ``face_size`` (pixels),
    ``sharpness``, ``roll`` and ``yaw`` (degrees; None without landmarks), ``quality``
    ("good" or "low") and ``quality_issues``.
    """

    box: list[float]
    score: float | None
    landmarks: list[list[float]] | None
    regions: dict[str, list[float]]
    probs: dict[str, float]
    label: str
    confidence: float
    decision: str = DEFAULT_DECISION
    face_size: float | None = None
    sharpness: float | None = None
    roll: float | None = None
    yaw: float | None = None
    quality: str | None = None
    quality_issues: list[str] = field(default_factory=list)
    track_id: int | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by ``msfer predict`` and returned by the REST service."""
        result = asdict(self)
        if self.track_id is None:
            del result["track_id"]
        return result


@dataclass(frozen=True)
class ModelSpec:
    """What preprocessing a classifier expects; read from the checkpoint or the ONNX metadata."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    region_names: tuple[str, ...]

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """N x S x S x 3 uint8 RGB -> N x 3 x S x S float32 (:func:`msfer.data.transforms.model_input`)."""
        return model_input(crops, self.mean, self.std).numpy()


def _check_classes(classes: Sequence[str], source: str) -> None:
    if tuple(classes) != EMOTIONS:
        raise MsferError(f"{source} predicts classes {list(classes)}, not msfer's {list(EMOTIONS)}")


def calibration_summary(record: dict | None, weights: Path | None = None) -> dict | None:
    """How a model's probabilities were calibrated and how well, or None when they were not.

    ``record`` is a checkpoint's ``calibration`` entry (``scripts/bundle_model.py`` writes it:
    ``method`` and how it was chosen). The figures measured on the held-out half of the
    validation split come from the record itself when it has them (``held_out``), else, for the
    bundled model, from its JSON record. Returns ``{"method", and if measured: "ece", "nll",
    "brier", "accuracy", "mean_confidence", "n"}``.
    """
    if not record:
        return None
    summary = {"method": record.get("method")}
    held_out = record.get("held_out")
    if held_out is None and weights is not None:
        from ..weights import BUNDLED_MODEL, bundled_record

        if BUNDLED_MODEL.is_file() and Path(weights).is_file() and os.path.samefile(weights, BUNDLED_MODEL):
            held_out = (bundled_record().get("calibration") or {}).get("held_out")
    figures = (held_out or {}).get("calibrated") or {}
    summary.update({key: figures[key] for key in ("ece", "nll", "brier", "accuracy", "mean_confidence", "n")
                    if key in figures})
    return summary


class TorchBackend:
    """Inference backend: the region network in PyTorch, from a checkpoint of ``msfer train``."""

    def __init__(self, weights: Path, device: str) -> None:
        import torch

        from ..engine.checkpoint import load_model

        self.torch = torch
        self.device = torch.device(device)
        self.model, meta = load_model(weights, self.device)
        self.model.eval()
        _check_classes(meta["classes"], str(weights))
        self.spec = ModelSpec(int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                              tuple(meta["region_names"]))
        self.balanced_offsets = self.model.balanced_offsets.float().cpu().numpy().astype(np.float64)
        self.calibration = calibration_summary(meta.get("calibration"), weights)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N x 7) and region boxes (N x R x 4, input pixels) of a normalised batch."""
        with self.torch.inference_mode():
            output = self.model(self.torch.from_numpy(batch).to(self.device))
        return output["logits"].float().cpu().numpy(), output["boxes"].float().cpu().numpy()


class OnnxBackend:
    """Inference backend: the region network in ONNX Runtime, from a file of ``msfer export`` (or its bytes)."""

    def __init__(self, model: Path | bytes, source: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise MsferError(f"cannot load ONNX model {source}: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in ONNX_METADATA_KEYS if key not in metadata]
        if missing:
            raise MsferError(f"{source} lacks msfer's metadata {missing}: export it with 'msfer export'")
        meta = {key: json.loads(metadata[key]) for key in ONNX_METADATA_KEYS}
        _check_classes(meta["classes"], source)
        self.spec = ModelSpec(int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                              tuple(meta["region_names"]))
        optional = {key: json.loads(metadata[key]) if key in metadata else None for key in ONNX_OPTIONAL_KEYS}
        offsets = optional["balanced_offsets"]
        self.balanced_offsets = np.zeros(len(EMOTIONS)) if offsets is None else np.asarray(offsets, dtype=np.float64)
        if self.balanced_offsets.shape != (len(EMOTIONS),):
            raise MsferError(f"{source}: balanced_offsets in its metadata must be {len(EMOTIONS)} numbers")
        self.calibration = optional["calibration"]
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        logits, boxes = self.session.run(["logits", "boxes"], {self.input_name: batch})
        return logits, boxes


def load_backend(weights: str | os.PathLike | None, device: str = "cpu", backend: str = "torch"):
    """The inference backend (:class:`TorchBackend` or :class:`OnnxBackend`) for ``weights``.

    ``weights`` defaults to the bundled model.

    ``weights`` is a ``.pt`` checkpoint, a run directory of ``msfer train`` (its best.pt) or an ``.onnx`` export.

    ``backend="onnx"`` with a ``.pt`` checkpoint exports it to ONNX in memory first.
    """
    from ..weights import default_weights_path

    path = Path(weights) if weights is not None else default_weights_path()
    if not path.exists():
        raise MsferError(f"model file {path} does not exist")
    if backend not in ("torch", "onnx"):
        raise MsferError(f"unknown backend {backend!r}: use 'torch' or 'onnx'")
    if path.suffix == ".onnx":
        if backend != "onnx":
            raise MsferError(f"{path} is an ONNX model: use backend 'onnx' (--backend onnx)")
        return OnnxBackend(path, str(path))
    if backend == "onnx":
        from .export import onnx_bytes

        torch_backend = TorchBackend(path, "cpu")
        return OnnxBackend(onnx_bytes(torch_backend.model, path, calibration=torch_backend.calibration),
                           f"{path} (exported to ONNX)")
    return TorchBackend(path, device)


def to_rgb_array(image: ImageInput, color_order: str = "rgb") -> np.ndarray:
    """``image`` as H x W x 3 uint8 RGB.

    A path is decoded with :func:`msfer.data.images.load_rgb` (an unreadable file
    raises :class:`MsferError` naming it). A PIL image follows the same rules
    (:func:`msfer.data.images.to_upright_rgb`): turned upright by its EXIF orientation,
    alpha composited on white, so an image gives one answer whether it is passed as a
    path or as an object. A numpy array is taken as it is: H x W (grey) or H x W x 3
    uint8, in ``color_order`` ("rgb", or "bgr" for OpenCV).
    """
    if isinstance(image, (str, os.PathLike)):
        from ..data.images import load_rgb

        return np.asarray(load_rgb(image))
    if isinstance(image, Image.Image):
        from ..data.images import to_upright_rgb

        try:  # a lazily opened image is decoded only here
            return np.asarray(to_upright_rgb(image))
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            name = getattr(image, "filename", "") or "a PIL image"
            raise MsferError(f"{name}: cannot decode image ({error})") from None
    array = np.asarray(image)
    if (array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3)
            or 0 in array.shape[:2]):
        raise MsferError(f"an image array must be H x W or H x W x 3 uint8, not empty, got {array.dtype} {array.shape}")
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if color_order not in ("rgb", "bgr"):
        raise MsferError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    return np.ascontiguousarray(array[:, :, ::-1]) if color_order == "bgr" else array


def face_transform(box: np.ndarray, landmarks: np.ndarray, crop_scale: float, align: bool) -> tuple[np.ndarray, int]:
    """The 2 x 3 affine map from image pixels to a square face crop at native resolution, and its side.

    The crop is centred on the face box; with ``align`` it is rotated about that centre
    so the eyes are level.
    """
    center = (box[:2] + box[2:]) / 2
    side = max(int(round(crop_scale * max(box[2] - box[0], box[3] - box[1]))), 1)
    angle = 0.0
    if align:
        eye_vector = landmarks[1] - landmarks[0]
        angle = float(np.degrees(np.arctan2(eye_vector[1], eye_vector[0])))
    transform = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), angle, 1.0)
    transform[:, 2] += side / 2 - center  # the face centre goes to the crop centre
    return transform, side


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


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    """``[x1, y1, x2, y2]`` clipped to an image of ``width`` x ``height`` pixels."""
    limits = np.array([width, height, width, height], dtype=np.float64)
    return np.clip(np.asarray(box, dtype=np.float64), 0, limits)


def map_boxes_back(boxes: np.ndarray, transform: np.ndarray, width: int, height: int) -> np.ndarray:
    """Boxes (R x 4) in crop pixels -> the axis-aligned boxes around them in image pixels, clipped to the image."""
    inverse = cv2.invertAffineTransform(transform)
    x1, y1, x2, y2 = boxes.T
    corners = np.stack([np.stack([x1, y1], 1), np.stack([x2, y1], 1), np.stack([x1, y2], 1), np.stack([x2, y2], 1)], 1)
    mapped = corners @ inverse[:, :2].T + inverse[:, 2]
    low, high = mapped.min(axis=1), mapped.max(axis=1)
    limits = np.array([width, height], dtype=np.float64)
    return np.hstack([np.clip(low, 0, limits), np.clip(high, 0, limits)])


def _rounded(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


class EmotionRecognizer:
    """Find faces and recognise their emotions.

    ``weights``: a checkpoint of ``msfer train`` (``.pt``) or an ``msfer export`` file
    (``.onnx``); default the bundled model. ``backend``: "torch" or "onnx" (a ``.pt``
    is then exported in memory). ``detector``: a
    :class:`msfer.regions.retinaface.RetinaFaceDetector` (default: its bundled weights).
    ``tta``: average with the mirrored crop. ``detect_size``: longest side of the coarse
    copy the detector sees. ``min_face``: the smallest face (pixels) to find in large
    photos, by a finer second copy (None or 0: the coarse copy alone, faster on large
    photos). ``decision``: the default decision rule, "argmax" or "balanced" (each
    ``predict*`` call can override it); "balanced" needs a model that carries its offsets,
    else :class:`MsferError`. ``quality``: the thresholds of the ``quality`` flag (default
    :class:`msfer.regions.quality.QualityThresholds`). See the
    module docstring for the pipeline and the choice of ``crop_scale`` and ``align``.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        backend: str = "torch",
        detector=None,
        tta: bool = False,
        batch_size: int = 32,
        detect_size: int = 640,
        crop_scale: float = 1.0,
        align: bool = False,
        min_face: float | None = DEFAULT_MIN_FACE,
        decision: str = DEFAULT_DECISION,
        quality: QualityThresholds | None = None,
    ) -> None:
        if detect_size < 1 or (min_face is not None and min_face < 0):
            raise MsferError(f"detect_size must be at least 1 and min_face 0 or more, got {detect_size} and {min_face}")
        self.classifier = load_backend(weights, device, backend)
        self.spec: ModelSpec = self.classifier.spec
        self.weights_name = str(weights) if weights is not None else "the bundled model"
        self.decision = DEFAULT_DECISION
        self.decision = self.check_decision(decision)
        self.quality = quality or QualityThresholds()
        if detector is None:
            from ..regions.retinaface import RetinaFaceDetector

            detector = RetinaFaceDetector()
        self.detector = detector
        self.tta, self.batch_size, self.detect_size = tta, max(int(batch_size), 1), detect_size
        self.crop_scale, self.align, self.min_face = crop_scale, align, min_face

    # -- public API --------------------------------------------------------------------

    @property
    def calibration(self) -> dict | None:
        """The model's :func:`calibration_summary` (None: its probabilities are not calibrated)."""
        return self.classifier.calibration

    def predict(self, image: ImageInput, color_order: str = "rgb", decision: str | None = None) -> list[FaceResult]:
        """Every face in ``image`` (a path, PIL image or numpy array; see :func:`to_rgb_array`), largest first.

        An image without a detectable face gives an empty list. ``decision``: this call's
        decision rule (default: the recognizer's).
        """
        return self.predict_batch([image], color_order, decision=decision)[0]

    def predict_batch(
        self, images: Sequence[ImageInput], color_order: str = "rgb", errors: str = "raise",
        decision: str | None = None,
    ) -> list[list[FaceResult] | MsferError]:
        """:meth:`predict` for many images: detection batched by image size, faces classified ``batch_size`` at a time.

        Each image's faces are the same as from :meth:`predict` on it alone.

        ``errors`` says what an input that cannot be read (a missing or corrupt file, a
        wrong array) does: ``"raise"`` (default) raises its :class:`MsferError` and no
        result is returned; ``"return"`` puts that :class:`MsferError` (its message names
        the file) in the input's place and still gives every other input its faces::

            for path, result in zip(paths, recognizer.predict_batch(paths, errors="return")):
                if isinstance(result, MsferError):
                    print("skipped", result)
        """
        if errors not in ("raise", "return"):
            raise ValueError(f"errors must be 'raise' or 'return', got {errors!r}")
        decision = self.check_decision(decision)
        results: list[list[FaceResult] | MsferError] = []
        arrays: dict[int, np.ndarray] = {}
        for index, image in enumerate(images):
            try:
                arrays[index] = to_rgb_array(image, color_order)
                results.append([])
            except MsferError as error:
                if errors == "raise":
                    raise
                results.append(error)
        readable = list(arrays)
        detections = self.detect([arrays[index] for index in readable])
        faces = [(index, face) for index, found in zip(readable, detections) for face in found]
        crops_and_transforms = [self.crop_face(arrays[index], face) for index, face in faces]
        probs, boxes = self.classify_crops([crop for crop, _ in crops_and_transforms])
        for (index, face), (_, transform), face_probs, face_boxes in zip(faces, crops_and_transforms, probs, boxes):
            height, width = arrays[index].shape[:2]
            regions = map_boxes_back(face_boxes, transform, width, height)
            box = clip_box(face.box, width, height)  # a face cut by the image edge extends past it
            quality = face_quality(arrays[index], box, face.score, face.landmarks, self.quality)
            results[index].append(self._result(box, face.score, face.landmarks, regions, face_probs, decision, quality))
        return results

    def classify_faces(self, crops: Sequence[ImageInput], color_order: str = "rgb",
                       decision: str | None = None) -> list[FaceResult]:
        """Classify images that are already face crops (e.g. FER2013), without detection.

        Each crop is resized to the network's input size as a whole; ``box`` is the
        whole crop, ``score``, ``landmarks``, ``roll`` and ``yaw`` are ``None``.
        """
        decision = self.check_decision(decision)
        arrays = [to_rgb_array(crop, color_order) for crop in crops]
        size = self.spec.input_size
        probs, boxes = self.classify_crops([resize_square(array, size) for array in arrays])
        results = []
        for array, face_probs, face_boxes in zip(arrays, probs, boxes):
            height, width = array.shape[:2]
            to_crop = np.array([[size / width, 0, 0], [0, size / height, 0]])
            regions = map_boxes_back(face_boxes, to_crop, width, height)
            box = np.array([0, 0, width, height])
            quality = face_quality(array, box, None, None, self.quality)
            results.append(self._result(box, None, None, regions, face_probs, decision, quality))
        return results

    def decide(self, probs: np.ndarray, decision: str | None = None) -> np.ndarray:
        """The class index (into ``EMOTIONS``) of each row of ``probs`` (N x 7) under ``decision``
        (default: the recognizer's rule); see :func:`msfer.engine.calibration.decide`."""
        decision = self.check_decision(decision)
        probs = np.asarray(probs, dtype=np.float64)
        if decision == "argmax":  # the same rule as calibration.decide, without importing torch for it
            return probs.argmax(axis=1)
        from ..engine.calibration import decide

        return decide(probs, self.classifier.balanced_offsets, decision)

    # -- steps -------------------------------------------------------------------------

    def detect(self, arrays: Sequence[np.ndarray]) -> list[list[Face]]:
        """RetinaFace faces per image (original pixels, boxes not clipped), largest first.

        Each image is detected at :func:`detection_scales`; the faces of two passes are merged by NMS.
        """
        plans = [detection_scales(*array.shape[:2], self.detect_size, self.min_face) for array in arrays]
        passes = [(index, scale) for index, scales in enumerate(plans) for scale in scales]
        copies = [resize_by(arrays[index], scale) for index, scale in passes]
        detections: list[list[Face]] = [[] for _ in arrays]
        for (index, _), copy, faces in zip(passes, copies, self.detector.detect(copies)):
            # Per axis, as the copy's sides were rounded: exact even for a 1 x 5000 image.
            scale_x, scale_y = copy.shape[1] / arrays[index].shape[1], copy.shape[0] / arrays[index].shape[0]
            detections[index] += [Face(face.box / [scale_x, scale_y, scale_x, scale_y], face.score,
                                       face.landmarks / [scale_x, scale_y]) for face in faces]
        for index, faces in enumerate(detections):
            if len(plans[index]) > 1 and len(faces) > 1:  # both passes can find the same face
                keep = non_maximum_suppression(np.array([face.box for face in faces]),
                                               np.array([face.score for face in faces]), self.detector.nms_threshold)
                faces = [faces[k] for k in keep]
            detections[index] = sorted(faces, key=lambda f: -(f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
        return detections

    def classify_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N x 7) and region boxes (N x R x 4, crop pixels) of S x S x 3 uint8 RGB crops."""
        size = self.spec.input_size
        if not len(crops):
            return np.zeros((0, len(EMOTIONS)), np.float32), np.zeros((0, len(self.spec.region_names), 4), np.float32)
        probs, boxes = [], []
        for start in range(0, len(crops), self.batch_size):
            # msfer.data.transforms: the same tensors and probabilities as msfer evaluate's
            batch = model_input(np.stack(crops[start : start + self.batch_size]), self.spec.mean, self.spec.std)
            logits, batch_boxes = self.classifier(batch.numpy())
            mirrored = torch.from_numpy(self.classifier(mirror(batch).numpy())[0]) if self.tta else None
            probs.append(class_probabilities(torch.from_numpy(logits), mirrored).numpy())
            boxes.append(np.clip(batch_boxes, 0, size))
        return np.concatenate(probs), np.concatenate(boxes)

    def crop_face(self, array: np.ndarray, face) -> tuple[np.ndarray, np.ndarray]:
        """The network-sized crop of one detected face, and the 2 x 3 map from image to crop pixels."""
        transform, side = face_transform(face.box, face.landmarks, self.crop_scale, self.align)
        native = cv2.warpAffine(array, transform, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        scale = self.spec.input_size / side
        return resize_square(native, self.spec.input_size), transform * scale

    def check_decision(self, decision: str | None) -> str:
        """``decision`` (None: the recognizer's), checked: a known rule, and for "balanced" a model that carries
        its offsets; else :class:`MsferError`."""
        if decision is None:
            return self.decision
        if decision != "argmax":
            from ..engine.calibration import DECISION_RULES

            if decision not in DECISION_RULES:
                raise MsferError(f"unknown decision rule {decision!r}: use one of {', '.join(DECISION_RULES)}")
            if not np.any(self.classifier.balanced_offsets):
                raise MsferError(f"{self.weights_name} has no balanced decision rule (its offsets are all zero: they "
                                 "are fitted when a model is bundled by scripts/bundle_model.py, and an ONNX file "
                                 "carries them when 'msfer export' wrote it from such a model); use decision 'argmax'")
        return decision

    def _result(self, box, score, landmarks, regions: np.ndarray, probs: np.ndarray, decision: str,
                quality: dict) -> FaceResult:
        best = int(self.decide(probs[None], decision)[0])
        return FaceResult(
            box=_rounded(box, 1),
            score=None if score is None else round(float(score), 4),
            landmarks=None if landmarks is None else _rounded(landmarks, 1),
            regions={name: _rounded(region, 1) for name, region in zip(self.spec.region_names, regions)},
            probs={name: round(float(p), 5) for name, p in zip(EMOTIONS, probs)},
            label=EMOTIONS[best],
            confidence=round(float(probs[best]), 5),
            decision=decision,
            **quality,
        )

