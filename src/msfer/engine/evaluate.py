"""Evaluation of a model on a dataset split of face crops: predictions and their metrics.

:func:`predict_split` is the validation step of ``msfer train`` and, through :func:`evaluate_crops`,
the crop evaluation of ``msfer evaluate``: ``OUT/metrics.json``, ``OUT/confusion_matrix.png`` and
``OUT/reliability.png`` (:func:`write_evaluation`) and the per-class table. With the ``msfer annotate``
file of the dataset it also scores the learned region detector against the pseudo-labels, and
``region_source="pseudo"`` runs the head on those pseudo-label regions instead of the model's own
(the ablation "pseudo-label regions at test time"; the training config's ``eval.region_source:
pseudo``). Whole photos go through the inference pipeline instead
(:func:`msfer.inference.detect_eval.evaluate_photos`), which this layer does not import.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.transforms import model_input
from ..errors import MsferError
from ..files import writing
from ..labels import EMOTIONS
from .augment import predict_probs
from .calibration import calibration_metrics, plot_reliability
from .datasets import FaceDataset
from .decision import DECISION_RULES, decide, has_balanced_rule, model_decision
from .distributed import DistInfo, all_gather_objects, shard_indices
from .metrics import compute_metrics, region_detection, write_report
from .runtime import autocast


@torch.no_grad()
def predict_split(
    model: torch.nn.Module,
    dataset: FaceDataset,
    device: torch.device,
    batch_size: int = 256,
    tta: bool = False,
    pseudo_regions: bool = False,
    num_workers: int = 0,
    info: DistInfo = DistInfo(),
    amp: str | bool = False,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Predictions for every sample of ``dataset``, in dataset order, gathered from all ranks.

    Returns arrays ``index``, ``y_true``, ``probs`` (N x 7), ``boxes``/``box_scores`` (the regions the
    head used, input pixels), ``fallback``, and the pseudo-label ``true_boxes``/``true_valid`` (input pixels);
    for a learned detector also ``detected`` (its boxes before any fallback) and ``proposed`` (the
    first-stage proposals they were refined from), N x R x 4; without ``tta`` also the ``logits`` (N x 7)
    whose softmax ``probs`` are.
    """
    model.eval()
    if dataset.image_size != model.input_size:
        raise ValueError(f"the dataset holds {dataset.image_size} px images; evaluating this model needs them at its "
                         f"input size, {model.input_size} px (one resize, msfer.data.transforms.resize_square)")
    indices = shard_indices(len(dataset), info)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator())
    keys = ("y_true", "probs", "logits", "boxes", "box_scores", "fallback", "true_boxes", "true_valid", "detected",
            "proposed")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not (progress and info.is_main)):
        images = model_input(batch["image"].to(device), model.mean, model.std)
        true_boxes = batch["boxes"].to(device)
        true_valid = batch["box_valid"].to(device)
        given = {"boxes": true_boxes, "box_valid": true_valid} if pseudo_regions else {}
        with autocast(device, amp):
            probs, output = predict_probs(model, images, tta=tta, **given)
        for key, value in (("y_true", batch["label"]), ("probs", probs), ("logits", None if tta else output["logits"]),
                           ("boxes", output["boxes"]),
                           ("box_scores", output["box_scores"]), ("fallback", output["fallback"]),
                           ("true_boxes", true_boxes), ("true_valid", true_valid),
                           ("detected", output.get("detected")), ("proposed", output.get("proposed"))):
            if value is None:
                continue
            parts[key].append(value.float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy())
    optional = ("logits", "detected", "proposed")  # logits without TTA only; the others from a learned detector
    local = {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items() if v or k not in optional}
    local["index"] = np.asarray(indices, dtype=np.int64)
    gathered = all_gather_objects(local, info)
    filled = [g for g in gathered if len(g["index"])]
    merged = {k: np.concatenate([g[k] for g in filled]) for k in (filled[0] if filled else local)}
    order = np.argsort(merged["index"], kind="stable")
    return {k: v[order] for k, v in merged.items()}


def split_metrics(predictions: dict[str, np.ndarray], region_names: Sequence[str], score_regions: bool,
                  balanced_offsets: Sequence[float] | None = None, decision: str = "argmax") -> dict:
    """:func:`compute_metrics` of the predictions under the ``decision`` rule, plus ``fallback_rate``,
    ``calibration`` (:func:`~msfer.engine.calibration.calibration_metrics`) and, if ``score_regions``,
    ``region_detection``. With ``balanced_offsets`` (a bundled model's) ``decision_rules`` gives
    overall and mean class accuracy under both rules."""
    offsets = np.zeros(len(EMOTIONS)) if balanced_offsets is None else np.asarray(balanced_offsets, dtype=np.float64)
    y_true, probs = predictions["y_true"], predictions["probs"]
    metrics = compute_metrics(y_true, decide(probs, offsets, decision), EMOTIONS)
    metrics["decision"] = decision
    if balanced_offsets is not None:
        metrics["decision_rules"] = {}
        for rule in DECISION_RULES:
            scores = compute_metrics(y_true, decide(probs, offsets, rule), EMOTIONS)
            metrics["decision_rules"][rule] = {k: scores[k] for k in ("overall_accuracy", "mean_class_accuracy")}
    metrics["calibration"] = calibration_metrics(probs, y_true) if len(y_true) else {}
    metrics["fallback_rate"] = float(predictions["fallback"].mean()) if len(predictions["fallback"]) else 0.0
    if score_regions and region_names and predictions["true_valid"].any():
        truth = (predictions["true_boxes"], predictions["true_valid"], region_names)
        # what the head used (detector boxes, or the default layout where the score was too low)
        metrics["region_detection"] = region_detection(predictions["boxes"], predictions["box_scores"], *truth)
        if "detected" in predictions:  # the second stage against its own input: does refinement help?
            metrics["region_detection_stages"] = {
                "proposals": region_detection(predictions["proposed"], predictions["box_scores"], *truth),
                "refined": region_detection(predictions["detected"], predictions["box_scores"], *truth),
            }
    return metrics


def evaluate_crops(read_samples: Callable[[], list], weights: Path, device: str, annotations: Path | None = None,
                   region_source: str | None = None, tta: bool = False, decision: str | None = None,
                   batch_size: int = 128, num_workers: int = 2, about: dict | None = None) -> tuple[dict, dict]:
    """Face crops through the engine's split evaluation (the same code as ``msfer train``'s validation).

    ``decision`` None: the model's own rule (:func:`msfer.engine.decision.model_decision`).
    ``read_samples`` is called once the model is loaded and its decision rule checked, so that a model
    that cannot be evaluated so is refused before the data is read. Returns the metrics and the
    predictions (``probs`` and ``y_true`` for the reliability diagram); the metrics hold ``about`` (what was
    evaluated, as the caller names it) before the model's region source and calibration.
    """
    import torch

    from ..model.checkpoint import load_model
    from ..regions.annotations import load_annotations

    device = torch.device(device)
    overrides = None
    if region_source == "pseudo":
        check_has_regions(weights)
        overrides = {"region_source": "pseudo"}
    model, meta = load_model(weights, device, model_overrides=overrides)
    decision = decision or model_decision(meta.get("calibration"))
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


def check_has_regions(weights: Path) -> None:
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

    offsets = model.balanced_offsets.float().cpu()
    if not has_balanced_rule(offsets.numpy(), meta.get("calibration")):
        if decision == "balanced":
            raise MsferError(f"{weights} has no balanced decision rule (msfer bundle fits it): "
                             "use --decision argmax")
        return None
    return offsets.tolist()


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
    with writing(out):
        path = write_report(metrics, out, EMOTIONS)
        written = [path, out / "confusion_matrix.png"]
        if predictions is not None and len(predictions["y_true"]):
            plot_reliability(predictions["probs"], predictions["y_true"], out / "reliability.png")
            written.append(out / "reliability.png")
    return written
