"""Whole-pipeline evaluation on uncropped photos (``msfer evaluate --detect-faces``).

For datasets of full photos (JAFFE style) the number that matters to a user is what
the product does end to end: find the face, crop it, classify it. Each photo's
largest face is classified; a photo where no face is found counts as wrong for its
true class (so recall and accuracy include detection misses), and the misses are
reported. The metrics are the engine's (:func:`msfer.engine.metrics.compute_metrics`)
computed over all photos, plus a ``detection`` block:
``{"faces_found", "faces_missed", "miss_rate", "missed_per_class", "missed_ids"}``.
``confusion_matrix`` stays 7 x 7 and counts the photos whose face was found; the
misses are the ``missed_per_class`` counts that complete each row. Labels follow the
recognizer's decision rule (``decision`` says which); for a model that carries the
balanced rule, ``decision_rules`` gives overall and mean class accuracy under both, and
``calibration`` describes the probabilities of the faces found.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..data.samples import Sample
from ..engine.calibration import DECISION_RULES, calibration_metrics
from ..engine.metrics import compute_metrics
from ..labels import EMOTIONS
from .recognizer import EmotionRecognizer

NO_FACE = len(EMOTIONS)  # the extra "prediction" of a photo without a detected face


def probs_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> np.ndarray:
    """The probabilities of each sample photo's largest face, ``N x 7``; a row of NaN where no face was found."""
    probs = np.full((len(samples), len(EMOTIONS)), np.nan)
    with tqdm(total=len(samples), desc="detect + classify", unit="img") as progress:
        for start in range(0, len(samples), recognizer.batch_size):
            batch = samples[start : start + recognizer.batch_size]
            for offset, faces in enumerate(recognizer.predict_batch([sample.load() for sample in batch])):
                if faces:
                    probs[start + offset] = [faces[0].probs[name] for name in EMOTIONS]
            progress.update(len(batch))
    return probs


def decisions(recognizer: EmotionRecognizer, probs: np.ndarray, decision: str | None = None) -> np.ndarray:
    """The class index of each row of ``probs`` under ``decision`` (default: the recognizer's); NaN: ``NO_FACE``."""
    found = ~np.isnan(probs).any(axis=1)
    y_pred = np.full(len(probs), NO_FACE, dtype=np.int64)
    if found.any():
        y_pred[found] = recognizer.decide(probs[found], decision)
    return y_pred


def predict_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> np.ndarray:
    """The class index (into ``EMOTIONS``) of each sample photo's largest face, or ``NO_FACE``: shape ``N``."""
    return decisions(recognizer, probs_with_detection(recognizer, samples))


def evaluate_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> dict:
    """Detect, then classify the largest face of each sample's photo; metrics as described in the module docstring."""
    y_true = [sample.label for sample in samples]
    probs = probs_with_detection(recognizer, samples)
    y_pred = decisions(recognizer, probs).tolist()
    metrics = compute_metrics(y_true, y_pred, (*EMOTIONS, "no_face"))
    metrics["decision"] = recognizer.decision
    if np.any(recognizer.classifier.balanced_offsets):
        metrics["decision_rules"] = {}
        for rule in DECISION_RULES:
            # "no_face" has no support (no photo's truth), so the mean class accuracy is over the emotions.
            scores = compute_metrics(y_true, decisions(recognizer, probs, rule).tolist(), (*EMOTIONS, "no_face"))
            metrics["decision_rules"][rule] = {key: scores[key] for key in ("overall_accuracy", "mean_class_accuracy")}
    found = ~np.isnan(probs).any(axis=1)
    metrics["calibration"] = calibration_metrics(probs[found], np.asarray(y_true)[found]) if found.any() else {}
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
