"""Whole-pipeline evaluation on uncropped photos (``msfer evaluate --detect-faces``).

For datasets of full photos (JAFFE style) the number that matters to a user is what
the product does end to end: find the face, crop it, classify it. Each photo's
largest face is classified; a photo where no face is found counts as wrong for its
true class (so recall and accuracy include detection misses), and the misses are
reported. The loop and the metrics are the engine's (:mod:`msfer.engine.photos`, which
training's photo validation runs too), given the recognizer's detection (its
``detect_size`` and ``min_face``), crop rule and classifier (either backend, its TTA):
``compute_metrics`` over all photos plus a ``detection`` block
``{"faces_found", "faces_missed", "miss_rate", "missed_per_class", "missed_ids"}``.
``confusion_matrix`` stays 7 x 7 and counts the photos whose face was found; the
misses are the ``missed_per_class`` counts that complete each row. Labels follow the
recognizer's decision rule (``decision`` says which); for a model that carries the
balanced rule, ``decision_rules`` gives overall and mean class accuracy under both, and
``calibration`` describes the probabilities of the faces found, as the recognizer reports them (with the
model's photo temperature, which changes no label).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..data.samples import Sample
from ..engine.calibration import with_photo_temperature
from ..engine.decision import decisions
from ..engine.photos import photo_metrics, photo_probabilities
from .recognizer import EmotionRecognizer

__all__ = ["evaluate_photos", "evaluate_with_detection", "photo_predictions", "predict_with_detection",
           "probs_with_detection"]


def photo_predictions(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """The probabilities of each sample photo's largest face (``N x 7``; a row of NaN where no face was found) as
    the decision rule reads them, and as the recognizer reports them: with the model's photo temperature
    (:func:`msfer.engine.calibration.with_photo_temperature`; the same where the model has none)."""
    probs, yaw = photo_probabilities(lambda i: np.asarray(samples[i].load()), len(samples), recognizer.detect,
                                     lambda crops: recognizer.classify_crops(list(crops))[0], recognizer.crop_rule,
                                     recognizer.spec.input_size, recognizer.batch_size)
    return probs, with_photo_temperature(probs, yaw, recognizer.photo_temperature)


def probs_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> np.ndarray:
    """The probabilities the recognizer reports for each sample photo's largest face, ``N x 7``; a row of NaN where
    no face was found (:func:`photo_predictions`)."""
    return photo_predictions(recognizer, samples)[1]


def predict_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample]) -> np.ndarray:
    """The class index (into ``EMOTIONS``) of each sample photo's largest face, or ``NO_FACE``: shape ``N``."""
    decision = recognizer.check_decision(None)
    offsets = recognizer.classifier.balanced_offsets if decision == "balanced" else None
    return decisions(photo_predictions(recognizer, samples)[0], offsets, decision)


def evaluate_with_detection(recognizer: EmotionRecognizer, samples: Sequence[Sample], probs: np.ndarray | None = None,
                            reported: np.ndarray | None = None) -> dict:
    """Detect, then classify the largest face of each sample's photo; metrics as described in the module docstring.
    ``probs`` and ``reported``: the photos' :func:`photo_predictions`, when already computed (N x 7 each; NaN rows:
    no face). ``probs`` are what the decision rule reads, before the photo temperature (not
    :func:`probs_with_detection`'s, which are after it); ``reported`` defaults to ``probs``, and is ignored
    without them."""
    if probs is None:
        probs, reported = photo_predictions(recognizer, samples)
    reported = probs if reported is None else reported
    # A model without the balanced rule reports one rule, as msfer evaluate does on crops.
    offsets = recognizer.classifier.balanced_offsets if recognizer.has_balanced_rule else None
    return photo_metrics(samples, probs, offsets, recognizer.decision, reported)


def evaluate_photos(recognizer, samples: list) -> tuple[dict, dict]:
    """The whole pipeline (detection, then classification of the largest face) on uncropped photos.

    Returns the metrics and the predictions of the faces found (``probs``, ``y_true``): the reliability
    diagram is of those, as the metrics' calibration is.
    """
    probs, reported = photo_predictions(recognizer, samples)
    metrics = evaluate_with_detection(recognizer, samples, probs, reported)
    found = ~np.isnan(reported).any(axis=1)
    return metrics, {"probs": reported[found], "y_true": np.array([s.label for s in samples])[found]}
