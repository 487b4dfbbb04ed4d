"""The Python API: :class:`EmotionRecognizer` finds every face in a photo and classifies its emotion.

Pipeline, per image:

1. **Detect** with RetinaFace on a copy downscaled so its longest side is at most
   ``detect_size`` (faces are then cropped from the full-resolution image), plus a finer
   copy for large photos so that faces down to ``min_face`` pixels are found
   (:func:`msfer.faces.detection.detect_faces`, which training's photo validation uses too).
2. **Crop** each face by the model's crop rule (:mod:`msfer.faces.crop`, the rule training
   cropped photos with; the checkpoint or ONNX file carries it). A model without a recorded
   rule (every model before v2, the bundled one included) uses ``box`` at scale 1.0: a square
   centred on RetinaFace's box with a side of the box's longer side. That default is measured,
   not guessed: on 590 FER2013 public_test faces (upscaled and padded, then detected) the
   dataset's own crop side is 0.97x the RetinaFace box's longer side (median; 10th-90th
   percentile 0.82-1.23) and the box is centred in the crop, so this framing matches what
   such a network was trained on; FER2013 faces are not roll-aligned either (median roll 4.7
   degrees, 10% of them over 20). ``crop_rule``, ``crop_scale`` and ``align`` override the
   model's rule. Pixels outside the image are replicated from its edge.
3. **Classify** the crops in batches of ``batch_size`` with the emotion network, the region
   network or a plain classifier (PyTorch, or ONNX Runtime with ``backend="onnx"``);
   ``tta=True`` averages the probabilities of each crop and its mirror image. Resizing to the network's input,
   normalising and mirroring are :mod:`msfer.data.transforms`, the functions ``msfer
   evaluate`` and training's validation use: a crop gives the same input tensor and
   probabilities on every path.
4. **Decide** the label by the ``decision`` rule: ``"argmax"``, the most probable
   emotion; ``"balanced"``, the class-prior adjustment a bundled model carries (higher mean
   class accuracy). The default is the model's own rule, chosen when it was bundled (the
   bundled model's: argmax; a model that names none: argmax). The rule changes ``label`` and
   ``confidence`` (the probability of that label), never ``probs``.
5. **Photo temperature**: a face found in a photo (not a crop given to :meth:`EmotionRecognizer.classify_faces`)
   has its probabilities softened by the model's photo temperature, which rises with the head's turn
   (:mod:`msfer.engine.calibration`; a bundled model fits it on photo sets), after the decision: it changes
   ``probs`` and ``confidence``, never ``label``.
6. **Map back** the emotion regions the network used (none for a plain classifier) from crop
   pixels to image pixels, and measure each face's quality (:func:`msfer.faces.quality.face_quality`).

Images are RGB everywhere in msfer. A numpy array is taken as RGB unless
``color_order="bgr"`` (what OpenCV's ``imread`` and ``VideoCapture`` give).
"""
from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..data.images import (
    IMAGE_EXTENSIONS,
    PixelScaleError,
    UnreadableImageError,
    load_rgb,
    not_a_file_reason,
    pixels_as_bytes,
    to_upright_rgb,
)
from ..data.transforms import resize_square
from ..engine.calibration import check_photo_temperature, with_photo_temperature
from ..engine.decision import check_rule, decide, has_balanced_rule, model_decision
from ..errors import MsferError
from ..faces.crop import DEFAULT_CROP_RULE, CropRule, clip_boxes, map_boxes_back
from ..faces.crop import crop_face as crop_by_rule
from ..faces.detection import DEFAULT_DETECT_SIZE, DEFAULT_MIN_FACE, detect_faces
from ..faces.quality import QualityThresholds, face_quality, yaw_degrees
from ..faces.retinaface import Face
from ..labels import EMOTIONS
from ..outputs import printable
from .backends import ModelSpec, load_backend
from .results import DEFAULT_DECISION, IMAGE_VIS_SUFFIX, FaceResult

if TYPE_CHECKING:
    from .video import VideoFrame

log = logging.getLogger(__name__)

ImageInput = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


def to_rgb_array(image: ImageInput, color_order: str = "rgb") -> np.ndarray:
    """``image`` as H x W x 3 uint8 RGB, whatever form it came in.

    - **A path** (``str`` or ``os.PathLike``) is decoded with :func:`msfer.data.images.load_rgb`;
      a missing or undecodable file raises :class:`MsferError` naming it, a folder one that says
      to use :meth:`EmotionRecognizer.predict_folder`.
    - **Encoded bytes** (``bytes``, ``bytearray``, ``memoryview``: the contents of a JPEG, PNG,
      ... file, e.g. an upload), or a binary file object (``open(path, "rb")``, ``io.BytesIO``,
      read from where it stands), are decoded by the same rules as a file.
    - **A PIL image** follows the same rules (:func:`msfer.data.images.to_upright_rgb`): turned
      upright by its EXIF orientation, alpha composited on white, so an image gives one answer
      whether it is passed as a path, as bytes or as an object.
    - **A numpy array** is H x W (grey), H x W x 1, H x W x 3 (colour) or H x W x 4 (colour
      with alpha, composited on white like a file's), with channels in ``color_order``:
      ``"rgb"`` (PIL, matplotlib, imageio) or ``"bgr"`` (what OpenCV's ``imread`` and
      ``VideoCapture`` give; BGRA for 4 channels). Values: ``uint8`` as they are; other integer
      types in 0..255 as they are, ``uint16`` scaled by 255/65535 (16-bit files); floating
      point in 0..1 scaled by 255 (the convention of scikit-image and matplotlib), in 0..255
      as they are. Anything else (NaN, negative values, other shapes) raises :class:`MsferError`.

    A list or tuple of images is refused with a pointer to :meth:`EmotionRecognizer.predict_batch`.
    """
    if color_order not in ("rgb", "bgr"):
        raise MsferError(f"color_order must be 'rgb' or 'bgr', got {color_order!r}")
    if isinstance(image, (str, os.PathLike)):
        if os.path.isdir(image):
            raise MsferError(f"{printable(image)}: a folder, not an image; use recognizer.predict_folder(folder) "
                             "for the images in it")
        try:
            return np.asarray(load_rgb(image))
        except UnreadableImageError as error:
            from .video import is_video  # video builds on this module

            if is_video(Path(image)):
                raise UnreadableImageError(f"{error}; a video is read with recognizer.predict_video(path)") from None
            raise
    if image is None:
        raise MsferError("got None where an image is expected (cv2.imread gives None for a file it cannot read: "
                         "check the path)")
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(image))
    if callable(getattr(image, "read", None)):  # an open file or io.BytesIO
        try:
            data = image.read()
        except UnicodeDecodeError:
            data = ""
        if isinstance(data, str):
            raise MsferError("an image file opened in text mode: open it in binary mode, open(path, 'rb')")
        return _decode_bytes(data)
    if isinstance(image, Image.Image):
        try:  # a lazily opened image is decoded only here
            return np.asarray(to_upright_rgb(image))
        except (OSError, ValueError, SyntaxError, EOFError) as error:
            name = getattr(image, "filename", "") or "a PIL image"
            raise MsferError(f"{name}: cannot decode image ({error})") from None
    if isinstance(image, (list, tuple)) and image and all(
            isinstance(item, (str, os.PathLike, bytes, Image.Image, np.ndarray)) for item in image):
        raise MsferError(f"got a {type(image).__name__} of {len(image)} images where one image is expected; "
                         "use recognizer.predict_batch(images) for many")
    return _array_to_rgb(image, color_order)


def _decode_bytes(data: bytes) -> np.ndarray:
    if not data:
        raise MsferError("image bytes: empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return np.asarray(to_upright_rgb(image))
    except Image.DecompressionBombError as error:
        raise MsferError(f"image bytes: refused as a possible decompression bomb ({error})") from None
    except UnidentifiedImageError:
        raise MsferError(f"image bytes ({len(data)} bytes): not an image (no format Pillow decodes, e.g. JPEG, PNG, "
                         "WebP, BMP, TIFF)") from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        raise MsferError(f"image bytes ({len(data)} bytes): cannot decode image ({error})") from None


def _array_to_rgb(image, color_order: str) -> np.ndarray:
    try:
        array = np.asarray(image)
    except (TypeError, ValueError) as error:
        raise MsferError(f"cannot read {type(image).__name__} as an image ({error})") from None
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or 0 in array.shape[:2]:
        raise MsferError("an image array must be H x W, H x W x 1, H x W x 3 or H x W x 4, not empty; got "
                         f"{array.dtype} array of shape {array.shape}")
    try:
        array = pixels_as_bytes(array, float_tops=(1.0, 255.0))
    except PixelScaleError as error:
        raise MsferError(f"an image array: {error}") from None
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    if color_order == "bgr":
        array = array[:, :, [2, 1, 0, 3][: array.shape[2]]]
    if array.shape[2] == 4:  # alpha on white, as a file's (msfer.data.images)
        alpha = array[:, :, 3:].astype(np.float32) / 255
        array = np.rint(array[:, :, :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    return np.ascontiguousarray(array)


def _rounded(values: np.ndarray, digits: int) -> list:
    return np.round(np.asarray(values, dtype=np.float64), digits).tolist()


class EmotionRecognizer:
    """Find faces and recognise their emotions.

    ``weights``: a checkpoint of ``msfer train`` (``.pt``) or an ``msfer export`` file
    (``.onnx``); default the bundled model. ``backend``: "torch" or "onnx" (a ``.pt``
    is then exported in memory); default None: by the file, "onnx" for an ``.onnx`` file. ``detector``: a
    :class:`msfer.faces.retinaface.RetinaFaceDetector` (default: its bundled weights).
    ``tta``: average with the mirrored crop. ``detect_size``: longest side of the coarse
    copy the detector sees. ``min_face``: the smallest face (pixels) to find in large
    photos, by a finer second copy (None or 0: the coarse copy alone, faster on large
    photos). ``decision``: the default decision rule, "argmax" or "balanced" (each
    ``predict*`` call can override it; None: the model's own, :attr:`model_decision`);
    "balanced" needs a model that carries its offsets, else :class:`MsferError`. ``quality``:
    the thresholds of the ``quality`` flag (default :class:`msfer.faces.quality.QualityThresholds`).

    Cropping follows the model's crop rule (:class:`msfer.faces.crop.CropRule`, recorded in the
    checkpoint or ONNX file; box at scale 1.0 for models without one). ``crop_rule`` (a
    :class:`~msfer.faces.crop.CropRule`, its dict, or a method name at the model's scale) replaces
    it; ``align`` (True: "roll", False: "box") and ``crop_scale`` then replace its method and scale.
    See the module docstring for the pipeline.
    """

    def __init__(
        self,
        weights: str | os.PathLike | None = None,
        device: str = "cpu",
        backend: str | None = None,
        detector=None,
        tta: bool = False,
        batch_size: int = 32,
        detect_size: int = DEFAULT_DETECT_SIZE,
        crop_scale: float | None = None,
        align: bool | None = None,
        min_face: float | None = DEFAULT_MIN_FACE,
        decision: str | None = None,
        quality: QualityThresholds | None = None,
        crop_rule: CropRule | dict | str | None = None,
    ) -> None:
        if detect_size < 1 or (min_face is not None and min_face < 0):
            raise MsferError(f"detect_size must be at least 1 and min_face 0 or more, got {detect_size} and {min_face}")
        self.classifier = load_backend(weights, device, backend)
        self.spec: ModelSpec = self.classifier.spec
        self.weights_name = str(weights) if weights is not None else "the bundled model"
        check_photo_temperature(self.photo_temperature, self.weights_name)
        self.decision = DEFAULT_DECISION
        self.decision = self.check_decision(decision or self.model_decision)
        self.quality = quality or QualityThresholds()
        if detector is None:
            from ..faces.retinaface import RetinaFaceDetector

            detector = RetinaFaceDetector()
        self.detector = detector
        self.tta, self.batch_size, self.detect_size = tta, max(int(batch_size), 1), detect_size
        self.min_face = min_face
        self.crop_rule = self._resolve_crop_rule(crop_rule, crop_scale, align)

    def _resolve_crop_rule(self, crop_rule, crop_scale: float | None, align: bool | None) -> CropRule:
        rule: CropRule = getattr(self.classifier, "crop_rule", DEFAULT_CROP_RULE)
        if isinstance(crop_rule, str):
            rule = CropRule(crop_rule, rule.scale)
        elif crop_rule is not None:
            rule = CropRule.from_dict(crop_rule)
        if align is not None:
            rule = CropRule("roll" if align else "box", rule.scale)
        if crop_scale is not None:
            rule = CropRule(rule.method, crop_scale)
        return rule

    @property
    def crop_scale(self) -> float:
        """The crop rule's scale (see :class:`msfer.faces.crop.CropRule`)."""
        return self.crop_rule.scale

    @property
    def align(self) -> bool:
        """Whether crops are rotated upright (crop method "roll" or "similarity")."""
        return self.crop_rule.method != "box"

    # -- public API --------------------------------------------------------------------

    @property
    def model_name(self) -> str:
        """The model's name: the one ``msfer bundle`` gave it (e.g. "v3" for the bundled model), else its file's
        stem."""
        return self.classifier.name

    @property
    def calibration(self) -> dict | None:
        """The model's :func:`calibration_summary` (None: its probabilities are not calibrated)."""
        return self.classifier.calibration

    @property
    def photo_temperature(self) -> dict | None:
        """The model's photo temperature (``calibration["photos"]``: ``temperature``, ``per_degree``, ``yaw_limit``;
        :func:`msfer.engine.calibration.photo_temperatures`), applied to the probabilities of faces found in
        photos, not to :meth:`classify_faces`' crops; None: the model has none."""
        return (self.classifier.calibration or {}).get("photos")

    @property
    def model_decision(self) -> str:
        """The model's own default decision rule: the one its bundling chose (the checkpoint's or ONNX file's
        calibration record), else "argmax" (:func:`msfer.engine.decision.model_decision`)."""
        return model_decision(self.classifier.calibration)

    @property
    def has_balanced_rule(self) -> bool:
        """Whether decision "balanced" is available (see :func:`has_balanced_rule`)."""
        return has_balanced_rule(self.classifier.balanced_offsets, self.classifier.calibration)

    def predict(self, image: ImageInput, color_order: str = "rgb", decision: str | None = None) -> list[FaceResult]:
        """Every face in one image, largest first (an image without a detectable face: ``[]``).

        ``image``: a path, encoded bytes, a PIL image or a numpy array (see :func:`to_rgb_array`
        for every accepted form and ``color_order``). For many images use :meth:`predict_batch`,
        for a folder :meth:`predict_folder`, for a video :meth:`predict_video`. ``decision``:
        this call's decision rule (default: the recognizer's). Raises :class:`MsferError` (naming
        the file) for an input that cannot be read.
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
            box = clip_boxes(face.box, width, height)  # a face cut by the image edge extends past it
            quality = face_quality(arrays[index], box, face.score, face.landmarks, self.quality)
            results[index].append(self._result(box, face.score, face.landmarks, regions, face_probs, decision, quality))
        return results

    def predict_folder(
        self, folder: str | os.PathLike, recursive: bool = True, decision: str | None = None, chunk: int = 8,
    ) -> Iterator[tuple[Path, list[FaceResult] | MsferError]]:
        """``(path, faces)`` for every image file in ``folder``, in sorted order, ``chunk`` images at a time.

        Image files are those with an extension Pillow (with HEIC support) opens
        (:data:`msfer.data.images.IMAGE_EXTENSIONS`), but not the annotated copies ``msfer predict --save-vis``
        writes (``*.msfer.jpg``), as ``msfer predict`` skips them; ``recursive``: sub-folders too. An image
        that cannot be read gives its :class:`MsferError` (naming the file) in place of its
        faces, and the others go on. Raises :class:`MsferError` if ``folder`` is not a folder.
        Only ``chunk`` decoded images are held at a time, so a folder of any size fits in memory::

            for path, faces in recognizer.predict_folder("photos"):
                print(path, [face.label for face in faces] if isinstance(faces, list) else faces)
        """
        folder = Path(folder)
        if not folder.is_dir():
            what = "not a folder" if folder.exists() and not folder.is_symlink() else not_a_file_reason(folder)
            raise MsferError(f"{printable(folder)}: {what}")
        paths = sorted(path for path in (folder.rglob("*") if recursive else folder.iterdir())
                       if path.suffix.lower() in IMAGE_EXTENSIONS and not path.is_dir()
                       and not path.name.lower().endswith(IMAGE_VIS_SUFFIX))  # msfer predict's annotated copies
        for start in range(0, len(paths), max(int(chunk), 1)):
            batch = paths[start:start + max(int(chunk), 1)]
            yield from zip(batch, self.predict_batch(batch, errors="return", decision=decision))

    def predict_video(
        self, source: str | os.PathLike | int, every: int = 1, smoothing: float = 0.0,
    ) -> Iterator["VideoFrame"]:
        """Every frame of a video file, an animated image (GIF, APNG, WebP) or webcam number ``source``, with its
        tracked faces.

        Yields :class:`msfer.inference.video.VideoFrame` objects in order: ``source``, ``index`` (from 0),
        ``time`` (seconds from the start, from the container's timestamps), ``image`` (H x W x 3
        uint8 RGB), ``faces`` (:class:`FaceResult` with ``track_id`` set, largest first) and
        ``processed``. ``every``: classify every n-th frame only; the frames between repeat the
        last classified faces (``processed`` False). ``smoothing`` in [0, 1): exponential
        smoothing of each track's probabilities (0: none). Raises :class:`MsferError` naming
        the file if it cannot be opened or gives no frame; a file whose decoding stops early (truncated
        or damaged) yields the frames read and logs a warning saying how many it declares::

            for frame in recognizer.predict_video("clip.mp4", every=5):
                print(f"{frame.time:.2f} s", [face.label for face in frame.faces])
        """
        from .video import open_video
        from .video import predict_video as frames_with_faces

        with open_video(source) as video:
            for frame in frames_with_faces(self, video, every=every, smoothing=smoothing):
                frame.source = source
                yield frame
            shortfall = video.shortfall()
        if shortfall is not None:
            log.warning("%s: %s", printable(source), shortfall)

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
        (default: the recognizer's rule); see :func:`msfer.engine.decision.decide`."""
        decision = self.check_decision(decision)
        offsets = self.classifier.balanced_offsets if decision == "balanced" else None  # argmax reads none
        return decide(np.asarray(probs, dtype=np.float64), offsets, decision)

    # -- steps -------------------------------------------------------------------------

    def detect(self, arrays: Sequence[np.ndarray]) -> list[list[Face]]:
        """RetinaFace faces per image (original pixels, boxes not clipped), largest first
        (:func:`msfer.faces.detection.detect_faces`)."""
        return detect_faces(self.detector, arrays, self.detect_size, self.min_face)

    def classify_crops(self, crops: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N x 7) and region boxes (N x R x 4, crop pixels; R = 0 for a plain classifier) of
        S x S x 3 uint8 RGB crops."""
        size = self.spec.input_size
        if not len(crops):
            return np.zeros((0, len(EMOTIONS)), np.float32), np.zeros((0, len(self.spec.region_names), 4), np.float32)
        probs, boxes = [], []
        for start in range(0, len(crops), self.batch_size):
            # msfer.data.transforms: the same inputs and probabilities as msfer evaluate's
            batch_probs, batch_boxes = self.classifier.probabilities(np.stack(crops[start : start + self.batch_size]),
                                                                    self.tta)
            probs.append(batch_probs)
            boxes.append(np.clip(batch_boxes, 0, size))
        return np.concatenate(probs), np.concatenate(boxes)

    def crop_face(self, array: np.ndarray, face) -> tuple[np.ndarray, np.ndarray]:
        """The network-sized crop of one detected face by the crop rule, and the 2 x 3 map from image to crop
        pixels (:func:`msfer.faces.crop.crop_face`)."""
        return crop_by_rule(array, face.box, face.landmarks, self.crop_rule, self.spec.input_size)

    def check_decision(self, decision: str | None) -> str:
        """``decision`` (None: the recognizer's), checked: a known rule, and for "balanced" a model that has the
        rule (:func:`has_balanced_rule`); else :class:`MsferError`."""
        if decision is None:
            return self.decision
        if check_rule(decision) != "argmax":
            if not self.has_balanced_rule:
                raise MsferError(f"{self.weights_name} has no balanced decision rule (msfer bundle fits "
                                 "it, and an ONNX file carries it when 'msfer export' wrote it from such a model; "
                                 "export again a file that an older msfer wrote from a model bundled with tau 0); "
                                 "use decision 'argmax'")
        return decision

    def _result(self, box, score, landmarks, regions: np.ndarray, probs: np.ndarray, decision: str,
                quality: dict) -> FaceResult:
        best = int(self.decide(probs[None], decision)[0])
        decision_probs = {name: round(float(p), 5) for name, p in zip(EMOTIONS, probs)}
        if landmarks is not None:  # a face found in a photo: its photo temperature, after the decision
            probs = with_photo_temperature(probs[None], [yaw_degrees(landmarks)], self.photo_temperature)[0]
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
            decision_probs=decision_probs,
        )

