"""Measure a model on one split of a dataset (``msfer evaluate``).

    msfer evaluate --data /data/fer2013 --format fer2013 --split public_test --out eval/ [--weights W] [--tta]

Writes ``OUT/metrics.json`` and ``OUT/confusion_matrix.png`` and prints the per-class
table (see :mod:`msfer.engine.metrics`). Face crops (FER2013 style) go through the
engine's split evaluation (:func:`msfer.engine.evaluate.predict_split`, which is also the
validation step of ``msfer train``). With ``--annotations`` (the ``msfer annotate`` file
of that dataset) it also scores the learned region detector against the pseudo-labels,
and ``--region-source pseudo`` runs the head on those pseudo-label regions instead of the
model's own (the ablation "pseudo-label regions at test time"; the same as the training
config's ``eval.region_source: pseudo``). ``--detect-faces``
measures the whole pipeline on uncropped photos instead
(:func:`msfer.inference.detect_eval.evaluate_with_detection`).

It sits in the inference layer because it composes both: the engine never imports the
inference layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import MsferError
from ..files import writing
from ..labels import EMOTIONS


def evaluate_crops(read_samples: Callable[[], list], weights: Path, device: str, annotations: Path | None = None,
                   region_source: str | None = None, tta: bool = False, decision: str = "argmax",
                   batch_size: int = 128, num_workers: int = 2, about: dict | None = None) -> tuple[dict, dict]:
    """Face crops through the engine's split evaluation (the same code as ``msfer train``'s validation).

    ``read_samples`` is called once the model is loaded and its decision rule checked, so that a model
    that cannot be evaluated so is refused before the data is read. Returns the metrics and the
    predictions (``probs`` and ``y_true`` for the reliability diagram); the metrics hold ``about`` (what was
    evaluated, as the caller names it) before the model's region source and calibration.
    """
    import torch

    from ..engine.datasets import FaceDataset
    from ..engine.evaluate import predict_split, split_metrics
    from ..model.checkpoint import load_model
    from ..regions.annotations import load_annotations

    device = torch.device(device)
    overrides = None
    if region_source == "pseudo":
        _check_has_regions(weights)
        overrides = {"region_source": "pseudo"}
    model, meta = load_model(weights, device, model_overrides=overrides)
    offsets = balanced_offsets(model, meta, weights, decision)  # refuse a missing rule before scoring
    samples = read_samples()
    records = load_annotations(annotations) if annotations else None
    dataset = FaceDataset(samples, model.input_size, model.region_names, records)
    predictions = predict_split(model, dataset, device, batch_size, tta=tta,
                                pseudo_regions=region_source == "pseudo", num_workers=num_workers)
    has_detector = getattr(model, "detector", None) is not None
    metrics = split_metrics(predictions, model.region_names, score_regions=has_detector and records is not None,
                            balanced_offsets=offsets, decision=decision)
    metrics.update(about or {})
    metrics.update({"region_source": getattr(model, "region_source", None),  # None: no regions
                    "model_calibration": (meta.get("calibration") or {}).get("method"),
                    "balanced_tau": (meta.get("calibration") or {}).get("balanced_tau")})
    return metrics, predictions


def _check_has_regions(weights: Path) -> None:
    """Refuse ``--region-source pseudo`` for a model that uses no regions (a plain classifier), naming its file."""
    from ..model.checkpoint import load_checkpoint
    from ..model.registry import resolve_config

    config = resolve_config(load_checkpoint(weights, prefer="best.pt")["config"]["model"])
    if config.get("type", "emotionnet") != "emotionnet":  # only the region network has a region source
        raise MsferError(f"{weights} is a {config['type']} model that uses no face regions: "
                         "--region-source pseudo applies only to a region network (msfer_*)")


def balanced_offsets(model, meta: dict, weights: Path, decision: str) -> list[float] | None:
    """The model's balanced-decision offsets, or None when it has no balanced rule (see
    :func:`msfer.engine.decision.has_balanced_rule`); decision "balanced" without one is an error."""
    from ..engine.decision import has_balanced_rule

    offsets = model.balanced_offsets.float().cpu()
    if not has_balanced_rule(offsets.numpy(), meta.get("calibration")):
        if decision == "balanced":
            raise MsferError(f"{weights} has no balanced decision rule (scripts/bundle_model.py fits it): "
                             "use --decision argmax")
        return None
    return offsets.tolist()


def evaluate_photos(recognizer, samples: list) -> tuple[dict, dict]:
    """The whole pipeline (detection, then classification of the largest face) on uncropped photos.

    Returns the metrics and the predictions of the faces found (``probs``, ``y_true``): the reliability
    diagram is of those, as the metrics' calibration is.
    """
    import numpy as np

    from .detect_eval import evaluate_with_detection, probs_with_detection

    probs = probs_with_detection(recognizer, samples)
    metrics = evaluate_with_detection(recognizer, samples, probs)
    found = ~np.isnan(probs).any(axis=1)
    return metrics, {"probs": probs[found], "y_true": np.array([s.label for s in samples])[found]}


def split_samples(data: Path, format: str, split: str | None) -> list:
    """The samples of ``split`` (None: every sample) of the dataset at ``data``; none is an error naming the splits."""
    from ..data.readers import read_dataset

    index = read_dataset(data, format)
    samples = [s for s in index.samples if split is None or s.split == split]
    if not samples:
        raise MsferError(f"no samples in split {split!r} of {data}; "
                         f"splits present: {', '.join(index.splits())}")
    return samples


def write_evaluation(metrics: dict, out: Path, predictions: dict | None = None) -> list[Path]:
    """``metrics.json``, ``confusion_matrix.png`` and (with predictions) ``reliability.png`` in ``out``; prints the
    table and returns the paths written."""
    from ..engine.metrics import write_report

    with writing(out):
        path = write_report(metrics, out, EMOTIONS)
        written = [path, out / "confusion_matrix.png"]
        if predictions is not None and len(predictions["y_true"]):
            from ..engine.calibration import plot_reliability

            plot_reliability(predictions["probs"], predictions["y_true"], out / "reliability.png")
            written.append(out / "reliability.png")
    return written
