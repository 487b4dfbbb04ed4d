"""Evaluation of a model on a dataset split of face crops: predictions and their metrics.

:func:`predict_split` is the validation step of ``msfer train`` and the crop evaluation of
``msfer evaluate`` (:mod:`msfer.inference.evaluate`, which also
evaluates whole photos through the inference pipeline, which this layer does not import).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..data.transforms import model_input
from ..labels import EMOTIONS
from .augment import predict_probs
from .calibration import calibration_metrics
from .datasets import FaceDataset
from .decision import DECISION_RULES, decide
from .distributed import DistInfo, all_gather_objects, shard_indices
from .metrics import compute_metrics, region_detection
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
