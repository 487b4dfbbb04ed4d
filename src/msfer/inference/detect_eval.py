"""Whole-pipeline evaluation on uncropped photos (``msfer evaluate --detect-faces``).

For datasets of full photos (JAFFE style) the number that matters to a user is what
the product does end to end: find the face, crop it, classify it. Each photo's
largest face is classified; a photo where no face is found counts as wrong for its
true class (so recall and accuracy include detection misses), and the misses are
reported. The metrics are the engine's (:func:`msfer.engine.metrics.compute_metrics`)
computed over all photos, plus a ``detection`` block:
``{"faces_found", "faces_missed", "miss_rate", "missed_per_class", "missed_ids"}``.
``confusion_matrix`` stays 7 x 7 and counts the photos whose face was found; the
misses are the ``missed_per_class`` counts that complete each row.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..data.samples import Sample
from ..engine.metrics import compute_metrics
from ..labels import EMOTIONS
from .recognizer import EmotionRecognizer

NO_FACE = len(EMOTIONS)  # the extra "prediction" of a photo without a detected face


def predict_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> np.ndarray:
    """The class index (into ``EMOTIONS``) of each sample photo's largest face, or ``NO_FACE``: shape ``N``."""
    y_pred = []
    with tqdm(total=len(samples), desc="detect + classify", unit="img") as progress:
        for start in range(0, len(samples), recognizer.batch_size):
            batch = samples[start : start + recognizer.batch_size]
            results = recognizer.predict_batch([sample.load() for sample in batch])
            y_pred.extend(EMOTIONS.index(faces[0].label) if faces else NO_FACE for faces in results)
            progress.update(len(batch))
    return np.asarray(y_pred, dtype=np.int64)


def evaluate_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> dict:
    """Detect, then classify the largest face of each sample's photo; metrics as described in the module docstring."""
    y_true = [sample.label for sample in samples]
    y_pred = predict_with_detection(recognizer, samples).tolist()
    metrics = compute_metrics(y_true, y_pred, (*EMOTIONS, "no_face"))
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
