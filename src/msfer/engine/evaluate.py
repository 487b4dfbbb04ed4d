"""``msfer evaluate``: measure a model on one split of a dataset.

    msfer evaluate --data /data/fer2013 --format fer2013 --split public_test --out eval/ [--weights W] [--tta]

Writes ``OUT/metrics.json`` and ``OUT/confusion_matrix.png`` and prints the per-class
table (see :mod:`msfer.engine.metrics`). With ``--annotations`` (the ``msfer annotate``
file of that dataset) it also scores the learned region detector against the
pseudo-labels, and ``--regions pseudo`` runs the head on those pseudo-label regions
instead of the detector's (the ablation "pseudo-label regions at test time").

:func:`predict_split` is also the validation step of ``msfer train``.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ..errors import MsferError
from ..labels import EMOTIONS
from .augment import predict_probs, prepare_eval
from .calibration import DECISION_RULES, calibration_metrics, decide
from .datasets import FaceDataset
from .distributed import DistInfo, all_gather_objects, shard_indices
from .metrics import compute_metrics, region_detection, write_report



def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MsferError(f"device {name!r} asked for, but CUDA is not available here (use --device cpu)")
    return torch.device(name)


def autocast(device: torch.device, amp: str | bool):
    """bf16/fp16 autocast on CUDA when ``amp`` names one; a no-op context otherwise."""
    enabled = bool(amp) and device.type == "cuda"
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


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
    indices = shard_indices(len(dataset), info)
    loader = DataLoader(Subset(dataset, indices), batch_size=batch_size, num_workers=num_workers,
                        pin_memory=device.type == "cuda", generator=torch.Generator())
    size = model.input_size
    keys = ("y_true", "probs", "logits", "boxes", "box_scores", "fallback", "true_boxes", "true_valid", "detected", "proposed")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    for batch in tqdm(loader, desc="evaluating", unit="batch", leave=False, disable=not (progress and info.is_main)):
        images, true_boxes = prepare_eval(batch["image"].to(device), batch["boxes"].to(device), size, model.mean, model.std)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint or exported model file, or a run directory (its best.pt); default: the bundled model")
    parser.add_argument("--data", type=Path, required=True, help="dataset root (or file, for CSV formats)")
    parser.add_argument("--format", required=True, help="dataset format, e.g. fer2013, rafdb, ferplus, folder")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (e.g. public_test, test); default: every sample of the dataset")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and confusion_matrix.png")
    parser.add_argument("--tta", action="store_true", help="horizontal-flip test-time augmentation (mean of both softmaxes)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="region pseudo-labels (JSONL of 'msfer annotate') to score the region detector against")
    parser.add_argument("--regions", choices=("model", "pseudo"), default="model",
                        help="regions for the head: the model's own (default) or the --annotations pseudo-labels")
    parser.add_argument("--decision", choices=DECISION_RULES, default="argmax",
                        help="decision rule: the most probable emotion (default), or 'balanced' (the class-prior "
                             "adjustment of a bundled model: higher mean class accuracy; probabilities unchanged)")
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading worker processes (default 2)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: cuda if available)")
    parser.add_argument("--detect-faces", action="store_true",
                        help="uncropped photos (JAFFE style): find faces with RetinaFace and classify the largest; "
                             "a photo without a detected face counts as wrong (see 'detection' in metrics.json)")


def run(args: argparse.Namespace) -> int:
    from ..regions.annotations import load_annotations
    from ..weights import default_weights_path
    from .checkpoint import load_model

    if args.regions == "pseudo" and args.annotations is None:
        raise MsferError("--regions pseudo needs --annotations FILE (the pseudo-labels of this dataset)")
    device = resolve_device(args.device)
    weights = args.weights or default_weights_path()
    if args.detect_faces:
        return _evaluate_photos(args, weights, device)
    overrides = {"region_source": "pseudo"} if args.regions == "pseudo" else None
    model, meta = load_model(weights, device, model_overrides=overrides)
    samples = _split_samples(args)
    annotations = load_annotations(args.annotations) if args.annotations else None
    dataset = FaceDataset(samples, model.input_size, model.region_names, annotations)
    predictions = predict_split(model, dataset, device, args.batch_size, tta=args.tta,
                                pseudo_regions=args.regions == "pseudo", num_workers=args.num_workers)
    has_detector = getattr(model, "detector", None) is not None
    offsets = balanced_offsets(model, weights, args.decision)
    metrics = split_metrics(predictions, model.region_names, score_regions=has_detector and annotations is not None,
                            balanced_offsets=offsets, decision=args.decision)
    metrics.update({"weights": str(weights), "data": str(args.data), "format": args.format, "split": args.split,
                    "tta": args.tta, "regions": args.regions, "model_calibration": meta.get("calibration", {}).get("method"),
                    "balanced_tau": (meta.get("decision") or {}).get("tau")})
    return _write(metrics, args.out, predictions)


def balanced_offsets(model: torch.nn.Module, weights: Path, decision: str) -> list[float] | None:
    """The model's balanced-decision offsets, or None when it has none (they are fitted when a model is bundled)."""
    offsets = model.balanced_offsets.float().cpu()
    if not offsets.abs().sum():
        if decision == "balanced":
            raise MsferError(f"{weights} has no balanced decision rule (it is fitted by scripts/bundle_model.py): "
                             "use --decision argmax")
        return None
    return offsets.tolist()


def _evaluate_photos(args: argparse.Namespace, weights: Path, device: torch.device) -> int:
    """The whole pipeline (detection, then classification of the largest face) on uncropped photos."""
    from ..inference.detect_eval import evaluate_with_detection
    from ..inference.recognizer import EmotionRecognizer

    samples = _split_samples(args)
    recognizer = EmotionRecognizer(weights, device=str(device), tta=args.tta, batch_size=args.batch_size)
    metrics = evaluate_with_detection(recognizer, samples)
    metrics.update({"weights": str(weights), "data": str(args.data), "format": args.format, "split": args.split,
                    "tta": args.tta, "detect_faces": True})
    return _write(metrics, args.out)


def _split_samples(args: argparse.Namespace) -> list:
    from ..data.readers import read_dataset

    index = read_dataset(args.data, args.format)
    samples = [s for s in index.samples if args.split is None or s.split == args.split]
    if not samples:
        raise MsferError(f"no samples in split {args.split!r} of {args.data}; splits present: {', '.join(index.splits())}")
    return samples


def _write(metrics: dict, out: Path, predictions: dict | None = None) -> int:
    path = write_report(metrics, out, EMOTIONS)
    written = [path, out / "confusion_matrix.png"]
    if predictions is not None and len(predictions["y_true"]):
        from .calibration import plot_reliability

        plot_reliability(predictions["probs"], predictions["y_true"], out / "reliability.png")
        written.append(out / "reliability.png")
    print("wrote " + ", ".join(map(str, written)))
    return 0
