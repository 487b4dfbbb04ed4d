"""``msfer evaluate``: measure a model on one split of a dataset.

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

This command sits in the inference layer because it composes both: the engine never
imports the inference layer.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import MsferError
from ..files import refuse_file_as_folder, writing
from ..labels import EMOTIONS
from .options import add_decision_argument, add_model_arguments, check_at_least_one, model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="dataset root (or file, for CSV formats)")
    parser.add_argument("--format", required=True, help="dataset format, e.g. fer2013, rafdb, ferplus, folder")
    parser.add_argument("--split", default=None,
                        help="split to evaluate (e.g. public_test, test); default: every sample of the dataset")
    parser.add_argument("--out", type=Path, required=True, help="folder for metrics.json and confusion_matrix.png")
    parser.add_argument("--tta", action="store_true",
                        help="horizontal-flip test-time augmentation (mean of both softmaxes)")
    parser.add_argument("--annotations", type=Path, default=None,
                        help="region pseudo-labels (JSONL of 'msfer annotate') to score the region detector against")
    parser.add_argument("--region-source", choices=("pseudo",), default=None,
                        help="where the head's regions come from: the model's own (its region_source: learned, "
                             "pseudo or none; default), or 'pseudo': the --annotations pseudo-labels")
    add_decision_argument(parser)
    parser.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    parser.add_argument("--num-workers", type=int, default=2, help="data-loading worker processes (default 2)")
    parser.add_argument("--detect-faces", action="store_true",
                        help="uncropped photos (JAFFE style): find faces with RetinaFace and classify the largest; "
                             "a photo without a detected face counts as wrong (see 'detection' in metrics.json)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..weights import default_weights_path

    if args.region_source == "pseudo" and args.annotations is None:
        raise MsferError("--region-source pseudo needs --annotations FILE (the pseudo-labels of this dataset)")
    check_at_least_one(args, "batch_size")
    refuse_file_as_folder(args.out, "--out")  # before the evaluation, not after it
    options = model_options(args)
    options["weights"] = options["weights"] or default_weights_path()
    if args.detect_faces:
        return _evaluate_photos(args, options)
    if options["backend"] != "torch":
        raise MsferError("--backend onnx is for the whole pipeline (--detect-faces): the evaluation of face crops "
                         "reads the PyTorch model's region outputs")
    return _evaluate_crops(args, options)


def _evaluate_crops(args: argparse.Namespace, options: dict) -> int:
    """Face crops through the engine's split evaluation (the same code as ``msfer train``'s validation)."""
    import torch

    from ..engine.checkpoint import load_model
    from ..engine.datasets import FaceDataset
    from ..engine.evaluate import predict_split, split_metrics
    from ..regions.annotations import load_annotations

    device, weights = torch.device(options["device"]), options["weights"]
    overrides = None
    if args.region_source == "pseudo":
        _check_has_regions(weights)
        overrides = {"region_source": "pseudo"}
    model, meta = load_model(weights, device, model_overrides=overrides)
    offsets = balanced_offsets(model, meta, weights, args.decision)  # refuse a missing rule before scoring
    samples = _split_samples(args)
    annotations = load_annotations(args.annotations) if args.annotations else None
    dataset = FaceDataset(samples, model.input_size, model.region_names, annotations)
    predictions = predict_split(model, dataset, device, args.batch_size, tta=args.tta,
                                pseudo_regions=args.region_source == "pseudo", num_workers=args.num_workers)
    has_detector = getattr(model, "detector", None) is not None
    metrics = split_metrics(predictions, model.region_names, score_regions=has_detector and annotations is not None,
                            balanced_offsets=offsets, decision=args.decision)
    metrics.update({"weights": str(weights), "data": str(args.data), "format": args.format, "split": args.split,
                    "tta": args.tta, "region_source": getattr(model, "region_source", None),  # None: no regions
                    "model_calibration": (meta.get("calibration") or {}).get("method"),
                    "balanced_tau": (meta.get("calibration") or {}).get("balanced_tau")})
    return _write(metrics, args.out, predictions)


def _check_has_regions(weights: Path) -> None:
    """Refuse ``--region-source pseudo`` for a model that uses no regions (a plain classifier), naming its file."""
    from ..engine.checkpoint import load_checkpoint
    from ..model.registry import resolve_config

    config = resolve_config(load_checkpoint(weights, prefer="best.pt")["config"]["model"])
    if config.get("type", "emotionnet") != "emotionnet":  # only the region network has a region source
        raise MsferError(f"{weights} is a {config['type']} model that uses no face regions: "
                         "--region-source pseudo applies only to a region network (msfer_*)")


def balanced_offsets(model, meta: dict, weights: Path, decision: str) -> list[float] | None:
    """The model's balanced-decision offsets, or None when it has no balanced rule (see
    :func:`msfer.inference.recognizer.has_balanced_rule`); decision "balanced" without one is an error."""
    from .recognizer import has_balanced_rule

    offsets = model.balanced_offsets.float().cpu()
    if not has_balanced_rule(offsets.numpy(), meta.get("calibration")):
        if decision == "balanced":
            raise MsferError(f"{weights} has no balanced decision rule (scripts/bundle_model.py fits it): "
                             "use --decision argmax")
        return None
    return offsets.tolist()


def _evaluate_photos(args: argparse.Namespace, options: dict) -> int:
    """The whole pipeline (detection, then classification of the largest face) on uncropped photos."""
    import numpy as np

    from .detect_eval import evaluate_with_detection, probs_with_detection
    from .recognizer import EmotionRecognizer

    # the recognizer first: it refuses a decision rule the model lacks before the data is read
    recognizer = EmotionRecognizer(**options, tta=args.tta, batch_size=args.batch_size, decision=args.decision)
    samples = _split_samples(args)
    probs = probs_with_detection(recognizer, samples)
    metrics = evaluate_with_detection(recognizer, samples, probs)
    metrics.update({"weights": str(options["weights"]), "data": str(args.data), "format": args.format,
                    "split": args.split, "tta": args.tta, "backend": options["backend"], "detect_faces": True})
    detection = metrics["detection"]
    print(f"faces found in {detection['faces_found']} of {len(samples)} photos ({detection['faces_missed']} missed, "
          "counted as wrong)")
    found = ~np.isnan(probs).any(axis=1)  # the reliability diagram is of the faces found, as metrics' calibration
    return _write(metrics, args.out, {"probs": probs[found], "y_true": np.array([s.label for s in samples])[found]})


def _split_samples(args: argparse.Namespace) -> list:
    from ..data.readers import read_dataset

    index = read_dataset(args.data, args.format)
    samples = [s for s in index.samples if args.split is None or s.split == args.split]
    if not samples:
        raise MsferError(f"no samples in split {args.split!r} of {args.data}; "
                         f"splits present: {', '.join(index.splits())}")
    return samples


def _write(metrics: dict, out: Path, predictions: dict | None = None) -> int:
    from ..engine.metrics import write_report

    with writing(out):
        path = write_report(metrics, out, EMOTIONS)
        written = [path, out / "confusion_matrix.png"]
        if predictions is not None and len(predictions["y_true"]):
            from ..engine.calibration import plot_reliability

            plot_reliability(predictions["probs"], predictions["y_true"], out / "reliability.png")
            written.append(out / "reliability.png")
    print("wrote " + ", ".join(map(str, written)))
    return 0
