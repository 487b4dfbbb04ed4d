"""RetinaFace face detection with onnxruntime: batched, numpy pre/post-processing.

The default weights are the MobileNet-0.25 RetinaFace bundled with msfer
(``msfer/weights/retinaface_mnet025.onnx``, MIT; source and licence in the NOTICE file
beside it), so nothing is downloaded. Any other RetinaFace ONNX export with the same
three outputs (box offsets N x A x 4, class scores N x A x 2, landmark offsets
N x A x 10, e.g. a ResNet-50 one) can be used through ``model_path``; the outputs are
told apart by their last dimension, not their names, because exports name them differently.

Only images of the same size share a forward pass: an image is never padded to the
size of another one, because the padding changes what the network sees near its edges
and so made a photo's faces depend on the rest of its batch. A batch of same-size
images gives each image exactly the faces it gets alone. A model exported with a fixed
input size gets each image letterboxed (scaled to fit, padded with the mean colour)
into that size instead. Images of any shape, down to 1 x 1, are accepted.
"""
from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from ..errors import MsferError
from ..weights import RETINAFACE_MODEL

# Anchor layout and box coding of RetinaFace (Deng et al. 2020; the biubug6 PyTorch
# code that both the bundled weights and the common ResNet-50 exports come from).
ANCHOR_STRIDES = (8, 16, 32)
ANCHOR_SIZES = ((16, 32), (64, 128), (256, 512))
CENTER_VARIANCE, SIZE_VARIANCE = 0.1, 0.2
# The network's training normalisation: BGR input minus this mean, no scaling.
BGR_MEAN = np.array([104.0, 117.0, 123.0], dtype=np.float32)
# Pixels per forward pass: a group of same-size images is run in chunks of at most this
# many pixels, so that a batch of large photos does not need gigabytes at once.
MAX_BATCH_PIXELS = 8_000_000


@dataclass
class Face:
    """One detection in original-image pixels.

    ``box`` is ``[x1, y1, x2, y2]``; ``landmarks`` is 5 x 2 in RetinaFace order:
    image-left eye, image-right eye, nose tip, left mouth corner, right mouth corner.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray


def resize_by(image: np.ndarray, scale: float, interpolation: int | None = None) -> np.ndarray:
    """``image`` scaled by ``scale``, each side rounded but at least 1 pixel (1 x 5000 by 0.1 is 1 x 500).

    ``cv2.resize(fx=, fy=)`` rounds a side to 0 for very long, thin images and then fails.
    Default interpolation: area averaging when shrinking, bilinear when enlarging.
    """
    if scale == 1.0:
        return image
    height, width = image.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if interpolation is None:
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=interpolation)


@lru_cache(maxsize=16)
def anchors_for(height: int, width: int) -> np.ndarray:
    """RetinaFace anchors ``(cx, cy, size)`` in pixels for an input of this size, A x 3.

    Each stride-2 convolution maps n to ceil(n / 2), hence ceil(n / stride) cells; per
    cell the sizes come consecutively, in the order the heads emit them.
    """
    per_level = []
    for stride, sizes in zip(ANCHOR_STRIDES, ANCHOR_SIZES):
        ys, xs = np.meshgrid(np.arange(-(-height // stride)), np.arange(-(-width // stride)), indexing="ij")
        centers = (np.stack([xs.ravel(), ys.ravel()], axis=1) + 0.5) * stride
        cells = np.repeat(centers, len(sizes), axis=0)
        sizes_column = np.tile(np.asarray(sizes, dtype=np.float64), len(centers))[:, None]
        per_level.append(np.hstack([cells, sizes_column]))
    return np.vstack(per_level).astype(np.float32)


def non_maximum_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices (int64) of the boxes (N x 4, ``x1, y1, x2, y2``) kept by greedy NMS, highest score first.

    OpenCV's :func:`cv2.dnn.NMSBoxes` (for boxes of positive area and positive scores, as RetinaFace's candidates
    are, the boxes :func:`torchvision.ops.nms` keeps: ``tests/test_faces_retinaface.py``; no PyTorch, so detection
    runs without it): a box is dropped when its IoU with a kept, higher-scoring box exceeds ``iou_threshold``.
    OpenCV drops a box of score 0 and, of two empty boxes at one place, keeps one (torchvision keeps both).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not len(boxes):
        return np.zeros(0, np.int64)
    corners_and_sizes = np.hstack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]])
    keep = cv2.dnn.NMSBoxes(corners_and_sizes.tolist(), np.asarray(scores, dtype=np.float64).tolist(), 0.0,
                            float(iou_threshold))
    return np.asarray(keep, dtype=np.int64).reshape(-1)


class RetinaFaceDetector:
    """Batched RetinaFace: ``detect(images) -> list[list[Face]]``, highest score first.

    ``threads`` sets onnxruntime's intra-op threads (default: all cores; with a decoding
    thread beside it that is still the fastest on 2 cores). ``providers`` are
    onnxruntime execution providers (default CPU). ``memory_arena``: onnxruntime's CPU
    memory arena, which keeps the buffers of the largest pass seen for the next ones (False:
    each pass allocates its own and frees them, as a long-running service wants: a 6 MP pass
    then leaves about 90 MB resident instead of 420 MB, at the same speed).
    """

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        score_threshold: float = 0.5,
        nms_threshold: float = 0.4,
        threads: int | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        memory_arena: bool = True,
    ) -> None:
        import onnxruntime as ort

        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.enable_cpu_mem_arena = memory_arena
        path = Path(model_path) if model_path is not None else RETINAFACE_MODEL
        if not path.is_file():
            raise MsferError(f"RetinaFace model {path} does not exist")
        model, source = str(path), str(path)
        try:
            self.session = ort.InferenceSession(model, options, providers=list(providers))
        except Exception as error:  # onnxruntime raises its own exception types
            raise MsferError(f"cannot load RetinaFace ONNX model {source}: {error}") from error
        self.input_name, self.fixed_size, self.output_order = self._inspect(source)

    def _inspect(self, source: str) -> tuple[str, tuple[int, int] | None, list[int]]:
        """The input name, its fixed (height, width) if any, and the positions of loc, conf, landmarks."""
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        last_dims = [output.shape[-1] for output in outputs]
        if len(inputs) != 1 or sorted(last_dims, key=str) != sorted([4, 2, 10], key=str):
            raise MsferError(
                f"{source} is not a RetinaFace export of the expected form: one N x 3 x H x W input and three "
                f"outputs ending in 4 (boxes), 2 (scores), 10 (landmarks); it has outputs of last sizes {last_dims}"
            )
        height, width = inputs[0].shape[2:]
        fixed = (height, width) if isinstance(height, int) and isinstance(width, int) else None
        return inputs[0].name, fixed, [last_dims.index(n) for n in (4, 2, 10)]

    def detect(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces in each image (H x W x 3 uint8 RGB, or H x W gray), batched by image size.

        Each image gets the same faces whatever else is in ``images``. An empty image
        (a side of 0 pixels) has no faces.
        """
        results: list[list[Face]] = [[] for _ in images]
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, image in enumerate(images):
            if image.shape[0] and image.shape[1]:
                groups[self.fixed_size or image.shape[:2]].append(index)
        for (height, width), members in groups.items():
            per_pass = max(1, MAX_BATCH_PIXELS // (height * width))
            for start in range(0, len(members), per_pass):
                chunk = members[start : start + per_pass]
                for index, faces in zip(chunk, self._detect_same_size([images[i] for i in chunk], height, width)):
                    results[index] = faces
        return results

    def _detect_same_size(self, images: Sequence[np.ndarray], height: int, width: int) -> list[list[Face]]:
        """One forward pass over images that are all ``height`` x ``width`` (or get letterboxed into it)."""
        batch = np.zeros((len(images), height, width, 3), dtype=np.float32)
        scales = np.ones(len(images), dtype=np.float32)
        for i, image in enumerate(images):
            if self.fixed_size is not None:
                scales[i] = min(height / image.shape[0], width / image.shape[1])
                image = resize_by(image, float(scales[i]), cv2.INTER_LINEAR)[:height, :width]
            bgr = image[..., ::-1] if image.ndim == 3 else image[..., None]
            batch[i, : image.shape[0], : image.shape[1]] = bgr
            batch[i, : image.shape[0], : image.shape[1]] -= BGR_MEAN
        outputs = self.session.run(None, {self.input_name: batch.transpose(0, 3, 1, 2)})
        loc, conf, landmarks = (outputs[k] for k in self.output_order)
        return self._decode(loc, conf[..., 1], landmarks, anchors_for(height, width), scales)

    def _decode(
        self, loc: np.ndarray, scores: np.ndarray, landmarks: np.ndarray, anchors: np.ndarray, scales: np.ndarray
    ) -> list[list[Face]]:
        """Threshold, decode only the surviving anchors, NMS per image, map back to each image's pixels."""
        if loc.shape[1] != len(anchors):
            raise MsferError(
                f"the RetinaFace model gives {loc.shape[1]} anchors for a {anchors.shape} layout; "
                "it does not use RetinaFace's strides 8/16/32 with two anchor sizes each"
            )
        results: list[list[Face]] = [[] for _ in range(len(loc))]
        image_index, anchor_index = np.nonzero(scores > self.score_threshold)
        if not len(image_index):
            return results
        centers, sizes = anchors[anchor_index, None, :2], anchors[anchor_index, None, 2:]
        box_centers = centers[:, 0] + loc[image_index, anchor_index, :2] * CENTER_VARIANCE * sizes[:, 0]
        box_sizes = sizes[:, 0] * np.exp(loc[image_index, anchor_index, 2:] * SIZE_VARIANCE)
        boxes = np.hstack([box_centers - box_sizes / 2, box_centers + box_sizes / 2])
        points = centers + landmarks[image_index, anchor_index].reshape(-1, 5, 2) * CENTER_VARIANCE * sizes
        candidate_scores = scores[image_index, anchor_index]
        scale = scales[image_index]
        boxes, points = boxes / scale[:, None], points / scale[:, None, None]
        for image in np.unique(image_index):
            mine = np.flatnonzero(image_index == image)
            for k in mine[non_maximum_suppression(boxes[mine], candidate_scores[mine], self.nms_threshold)]:
                results[image].append(Face(boxes[k], float(candidate_scores[k]), points[k]))
        return results
