"""Soft labels from teacher models, for distillation (``data.soft_label_file``).

A soft-label file holds, for training images, a 7-vector of class probabilities each (in
:data:`msfer.labels.EMOTIONS`' order): what a teacher, one model or the mean of several (the seeds of
one recipe: an ensemble), predicts for the image. Training with ``data.soft_label_file=FILE`` and
``data.soft_label_weight=w`` fits ``w * soft label + (1 - w) * one-hot label``: knowledge distillation
at temperature 1 on the teachers' probabilities (Hinton, Vinyals and Dean 2015, "Distilling the
Knowledge in a Neural Network", eq. 1 with T = 1; a bundled teacher's are calibrated), the ensemble's
knowledge in one model of one model's cost. Images are keyed by the name of their set's folder as the
config gives it and their id (``fer2013/train/angry/00001.jpg``, :func:`soft_label_key`), so a file made
on one machine fits another that holds the same data in folders of the same names. A teacher must not
have been trained on the student's validation images: nothing here can tell.

:func:`teacher_soft_labels` makes one (``scripts/teacher_targets.py``): each teacher classifies every
training image of a config as the run would hold it (the main set's training split and every
``data.extra_train`` set, each cropped as training crops it, at the teacher's input size, without
augmentation or flip), and the teachers' probabilities are averaged.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MsferError
from ..files import write_atomic
from ..labels import EMOTIONS

log = logging.getLogger(__name__)


def soft_label_key(sample, root: str | Path) -> str:
    """``FOLDER/ID``: the name of ``root``'s folder as given (a link keeps its own name) and the sample's id, which
    is stable across machines (:class:`msfer.data.samples.Sample`)."""
    return f"{os.path.basename(os.path.normpath(os.path.abspath(root)))}/{sample.id}"


def save_soft_labels(path: str | Path, keys: Sequence[str], probs: np.ndarray) -> Path:
    """Write ``keys`` (N, unique) and their ``probs`` (N x 7, rows summing to 1) as an ``.npz`` file, whole or not
    at all. Raises :class:`MsferError` on a repeated key or a shape other than N x 7."""
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape != (len(keys), len(EMOTIONS)):
        raise MsferError(f"soft labels must be {len(keys)} x {len(EMOTIONS)}, got {probs.shape}")
    if len(set(keys)) != len(keys):
        raise MsferError("two training images have the same soft-label key (two sets in folders of one name?)")
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.asarray(keys, dtype=str), probs=probs, classes=np.asarray(EMOTIONS, dtype=str))
    return write_atomic(path, lambda handle: handle.write(buffer.getvalue()))


def load_soft_labels(path: str | Path) -> dict[str, tuple[float, ...]]:
    """``{key: 7 probabilities}`` of a file of :func:`save_soft_labels`. Raises :class:`MsferError` naming the file
    when it is missing or unreadable, its classes are not msfer's seven in their order, or a row is not a
    distribution (negative, or not summing to 1 within 1e-3)."""
    try:
        stored = np.load(path, allow_pickle=False)
        if not isinstance(stored, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz file")
        with stored:
            keys, probs, classes = stored["keys"], stored["probs"], stored["classes"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise MsferError(f"cannot read the soft labels {path}: {error or type(error).__name__} (write them with "
                         "scripts/teacher_targets.py)") from None
    if list(classes) != list(EMOTIONS):
        raise MsferError(f"the soft labels {path} are of the classes {list(classes)}, not {list(EMOTIONS)}")
    if probs.shape != (len(keys), len(EMOTIONS)) or (probs < 0).any() or \
            not np.allclose(probs.sum(axis=1), 1, atol=1e-3):
        raise MsferError(f"the soft labels {path} are not {len(keys)} x {len(EMOTIONS)} probabilities summing to 1")
    return {str(key): tuple(float(p) for p in row) for key, row in zip(keys, probs)}


def with_soft_labels(samples: list, root: str | Path, soft_labels: dict[str, tuple[float, ...]]) -> tuple[list, int]:
    """``samples`` (of the set at ``root``) with the soft label ``soft_labels`` holds for each, replacing any they
    had; and how many found one."""
    found, out = 0, []
    for sample in samples:
        soft = soft_labels.get(soft_label_key(sample, root))
        if soft is not None:
            sample, found = dataclasses.replace(sample, soft_label=soft), found + 1
        out.append(sample)
    return out, found


def teacher_soft_labels(config, weights: Sequence[str | Path], device: str = "cpu", batch_size: int = 256,
                        progress: bool = True) -> tuple[list[str], np.ndarray]:
    """The mean probabilities (N x 7) of the models ``weights`` on every training image of ``config`` (a full
    training config, :func:`msfer.engine.config.load_config`'s), and their keys (N, :func:`soft_label_key`).

    Each image is held as the run holds it (its set's crop), resized once to each teacher's input size (the
    config's ``data.image_size`` is not used: a teacher sees what it was validated on). Teachers are plain
    classifiers: :class:`MsferError` for a region network (its regions would need the config's annotations).
    """
    import copy

    import torch

    from ..model.checkpoint import load_model
    from .datasets import build_datasets
    from .distributed import DistInfo
    from .evaluate import predict_split

    if not weights:
        raise MsferError("distillation needs at least one teacher model")
    config = copy.deepcopy(config)
    data = config["data"]
    data.update(image_size=None, cache_images=False, soft_label_file=None, soft_label_weight=0.0)
    roots = [data["root"], *(entry["root"] for entry in data["extra_train"])]
    keys, total = None, None
    for path in weights:
        model, _ = load_model(path, device)
        if getattr(model, "region_source", "none") != "none":
            raise MsferError(f"the teacher {path} is a region network: teachers are plain classifiers (classifier_*)")
        train = build_datasets(config, model, ("train_split",), DistInfo())["train_split"]
        parts = getattr(train, "datasets", [train])
        these = [soft_label_key(sample, root) for part, root in zip(parts, roots) for sample in part.samples]
        probs = np.concatenate([predict_split(model, part, torch.device(device), batch_size=batch_size,
                                              progress=progress)["probs"] for part in parts])
        keys, total = these, probs if total is None else total + probs
        log.info("teacher %s: %d training images", path, len(these))
    return keys, (total / len(weights)).astype(np.float32)
