"""The whole pipeline on whole photos: detect, keep the largest face, crop it by the crop rule, classify.

This is the one copy of that loop. Training's photo validation (``data.photo_val``,
:class:`PhotoValidation`) runs it on the model being trained; ``msfer evaluate --detect-faces``
and ``msfer bundle`` run it through the inference API
(:func:`msfer.inference.detect_eval.evaluate_with_detection` passes the recognizer's detection and
classification to :func:`photo_probabilities`). Both score with :func:`photo_metrics`.

A photo without a detected face has a row of NaN probabilities and counts as wrong for its true
class: the metrics are over all photos, with a ``detection`` block
``{"faces_found", "faces_missed", "miss_rate", "missed_per_class", "missed_ids"}``.
``confusion_matrix`` stays 7 x 7 and counts the photos whose face was found; the misses are the
``missed_per_class`` counts that complete each row.
"""
from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..data.samples import Sample
from ..data.transforms import model_input
from ..faces.crop import CropRule, crop_face
from ..faces.quality import yaw_degrees
from ..faces.retinaface import Face
from ..labels import EMOTIONS
from .augment import predict_probs
from .calibration import calibration_metrics
from .decision import DECISION_RULES, NO_FACE, decisions
from .distributed import DistInfo, all_gather_objects, shard_indices
from .metrics import compute_metrics

log = logging.getLogger(__name__)

# detect(images) -> faces per image, largest first; classify(N x S x S x 3 uint8 crops) -> N x 7 probabilities.
Detect = Callable[[list[np.ndarray]], list[list[Face]]]
Classify = Callable[[np.ndarray], np.ndarray]


def largest_faces(arrays: Sequence[np.ndarray], detect: Detect) -> list[Face | None]:
    """Each image's largest face (None: no face found), ``len(arrays)``."""
    return [faces[0] if faces else None for faces in detect(list(arrays))]


def face_crops(arrays: Sequence[np.ndarray], faces: Sequence[Face | None], rule: CropRule,
               size: int) -> list[np.ndarray | None]:
    """The ``size`` x ``size`` x 3 crop of each image's face by ``rule`` (None where it has none)."""
    return [None if face is None else crop_face(array, face.box, face.landmarks, rule, size)[0]
            for array, face in zip(arrays, faces)]


def largest_face_crops(arrays: Sequence[np.ndarray], detect: Detect, rule: CropRule,
                       size: int) -> list[np.ndarray | None]:
    """The ``size`` x ``size`` x 3 crop of each image's largest face by ``rule`` (None: no face found)."""
    return face_crops(arrays, largest_faces(arrays, detect), rule, size)


def face_yaws(faces: Sequence[Face | None]) -> np.ndarray:
    """Each face's yaw in degrees (:func:`msfer.faces.quality.yaw_degrees`; NaN where there is no face or no
    landmarks), ``len(faces)``."""
    return np.array([np.nan if face is None or face.landmarks is None else yaw_degrees(face.landmarks)
                     for face in faces], dtype=np.float64)


def classify_found(crops: Sequence[np.ndarray | None], classify: Classify) -> np.ndarray:
    """``len(crops) x 7`` probabilities of the crops, a row of NaN where there is none."""
    probs = np.full((len(crops), len(EMOTIONS)), np.nan)
    found = [k for k, crop in enumerate(crops) if crop is not None]
    if found:
        probs[found] = classify(np.stack([crops[k] for k in found]))
    return probs


def photo_probabilities(load: Callable[[int], np.ndarray], count: int, detect: Detect, classify: Classify,
                        rule: CropRule, size: int, batch_size: int = 32,
                        progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities of the largest face of each of ``count`` photos (``load(i)``: H x W x 3 uint8 RGB),
    ``count x 7``, a row of NaN where no face was found, and that face's yaw (``count`` degrees, :func:`face_yaws`).
    Photos are loaded, detected and classified ``batch_size`` at a time."""
    rows, yaws = [], []
    with tqdm(total=count, desc="detect + classify", unit="img", disable=not progress) as bar:
        for start in range(0, count, batch_size):
            arrays = [load(i) for i in range(start, min(start + batch_size, count))]
            faces = largest_faces(arrays, detect)
            rows.append(classify_found(face_crops(arrays, faces, rule, size), classify))
            yaws.append(face_yaws(faces))
            bar.update(len(arrays))
    if not rows:
        return np.zeros((0, len(EMOTIONS))), np.zeros(0)
    return np.concatenate(rows), np.concatenate(yaws)


def model_classifier(model: torch.nn.Module, device: torch.device, tta: bool = False,
                     batch_size: int = 32) -> Classify:
    """``classify`` for :func:`photo_probabilities` with a PyTorch msfer network (eval mode is set):
    :func:`msfer.data.transforms.model_input`, then :func:`msfer.engine.augment.predict_probs`."""

    @torch.no_grad()
    def classify(crops: np.ndarray) -> np.ndarray:
        model.eval()
        parts = []
        for start in range(0, len(crops), batch_size):
            images = model_input(crops[start : start + batch_size], model.mean, model.std).to(device)
            parts.append(predict_probs(model, images, tta=tta)[0].float().cpu().numpy())
        return np.concatenate(parts)

    return classify


def photo_metrics(samples: Sequence[Sample], probs: np.ndarray, balanced_offsets: Sequence[float] | None = None,
                  decision: str = "argmax", reported: np.ndarray | None = None) -> dict:
    """Metrics of the whole pipeline from each photo's probabilities (NaN rows: no face), as the module
    docstring says; with ``balanced_offsets`` (7 logit offsets, as :func:`msfer.engine.evaluate.split_metrics`
    takes them), ``decision_rules`` gives overall and mean class accuracy under every rule, and
    ``calibration`` describes the probabilities of the faces found: ``reported`` where given (the probabilities a
    user is given, with a photo temperature, :func:`msfer.engine.calibration.with_photo_temperature`; the
    decisions read ``probs``)."""
    y_true = [sample.label for sample in samples]
    y_pred = decisions(probs, balanced_offsets, decision).tolist()
    metrics = compute_metrics(y_true, y_pred, (*EMOTIONS, "no_face"))
    metrics["decision"] = decision
    if balanced_offsets is not None:
        metrics["decision_rules"] = {}
        for rule in DECISION_RULES:
            # "no_face" has no support (no photo's truth), so the mean class accuracy is over the emotions.
            scores = compute_metrics(y_true, decisions(probs, balanced_offsets, rule).tolist(), (*EMOTIONS, "no_face"))
            metrics["decision_rules"][rule] = {key: scores[key] for key in ("overall_accuracy", "mean_class_accuracy")}
    found = ~np.isnan(probs).any(axis=1)
    shown = probs if reported is None else np.asarray(reported)
    metrics["calibration"] = calibration_metrics(shown[found], np.asarray(y_true)[found]) if found.any() else {}
    del metrics["per_class"]["no_face"]  # not a class: no photo has it as its truth
    matrix = np.asarray(metrics["confusion_matrix"])
    metrics["confusion_matrix"] = matrix[: len(EMOTIONS), : len(EMOTIONS)].tolist()
    missed = [sample.id for sample, predicted in zip(samples, y_pred) if predicted == NO_FACE]
    metrics["detection"] = {
        "faces_found": len(samples) - len(missed),
        "faces_missed": len(missed),
        "miss_rate": len(missed) / max(len(samples), 1),
        "missed_per_class": dict(zip(EMOTIONS, matrix[: len(EMOTIONS), NO_FACE].tolist())),
        "missed_ids": missed,
    }
    return metrics


def photo_samples(entry: dict) -> list[Sample]:
    """The samples of a ``data.photo_val`` mapping ``{format, root, split, reader_options}``."""
    from ..data.readers import read_dataset
    from ..errors import MsferError

    index = read_dataset(entry["root"], entry["format"], **entry.get("reader_options", {}))
    samples = [sample for sample in index.samples if sample.split == entry["split"]]
    if not samples:
        raise MsferError(f"data.photo_val: split {entry['split']!r} has no samples in {entry['root']}; "
                         f"splits present: {', '.join(index.splits())}")
    return samples


class PhotoValidation:
    """Training's second validation: the whole pipeline on a set of whole photos.

    Detection and cropping do not depend on the network, so they run once, at the first
    :meth:`score` (nothing is computed while it is never scored), and each score classifies the
    kept crops. ``detector`` defaults to the bundled RetinaFace, found as inference finds faces
    (:func:`msfer.faces.detection.detect_faces`, default sizes).

    Under DDP (``info`` of a process group with several ranks) it is sharded as the FER2013 validation
    is (:func:`msfer.engine.evaluate.predict_split`): each rank detects, crops and classifies every
    ``world_size``-th photo, and :meth:`probabilities` gathers them, so every rank must call it (at the
    same point) and every rank gets the whole set's probabilities and metrics.
    """

    def __init__(self, samples: Sequence[Sample], rule: CropRule, size: int, detector=None,
                 batch_size: int = 32, info: DistInfo = DistInfo()) -> None:
        self.samples, self.rule, self.size, self.batch_size = list(samples), rule, size, batch_size
        self.detector, self.info = detector, info
        self.indices = shard_indices(len(self.samples), info)  # this rank's photos
        self._crops: list[np.ndarray | None] | None = None

    def crops(self) -> list[np.ndarray | None]:
        """The largest-face crop of each of this rank's photos (:attr:`indices`; None: no face), computed once."""
        if self._crops is None:
            from ..faces.detection import detect_faces

            if self.detector is None:
                from ..faces.retinaface import RetinaFaceDetector

                # torch's threads, not all cores: under DDP on one host each rank detects at once
                self.detector = RetinaFaceDetector(threads=torch.get_num_threads())
            crops: list[np.ndarray | None] = []
            for start in range(0, len(self.indices), self.batch_size):
                arrays = [np.asarray(self.samples[k].load()) for k in self.indices[start : start + self.batch_size]]
                crops += largest_face_crops(arrays, lambda images: detect_faces(self.detector, images), self.rule,
                                            self.size)
            self._crops = crops
        return self._crops

    def probabilities(self, model: torch.nn.Module, device: torch.device, tta: bool = False) -> np.ndarray:
        """``N x 7`` probabilities of ``model`` for the photos' largest faces (NaN rows: no face), gathered
        from every rank (a collective under DDP: all ranks call it)."""
        local = classify_found(self.crops(), model_classifier(model, device, tta, self.batch_size))
        probs = np.full((len(self.samples), len(EMOTIONS)), np.nan)
        for indices, rows in all_gather_objects((self.indices, local), self.info):
            probs[indices] = rows
        return probs

    def score(self, model: torch.nn.Module, device: torch.device, tta: bool = False) -> dict:
        """:func:`photo_metrics` of ``model`` (decision rule argmax), the same on every rank."""
        return photo_metrics(self.samples, self.probabilities(model, device, tta))
