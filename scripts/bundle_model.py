"""Bundle a trained run as msfer's default model.

It calibrates the model, chooses its balanced decision rule and records what it measures.

    python scripts/bundle_model.py runs/cpu_2h --data /path/to/fer2013 --annotations data/annotations/fer2013.jsonl

Takes the run's ``best.pt`` (or any checkpoint file; one from msfer <= 0.1 with a class-prior
adjustment folded into its bias has it taken out first) and, on FER2013 public_test
(validation), without TTA:

1. fits the calibration (``msfer.engine.calibration.choose_calibration``: temperature or
   vector scaling, chosen and fitted on one stratified half, reported on the other);
2. chooses the balanced decision rule's strength ``tau`` on the calibrated probabilities of the
   same half (``msfer.engine.prior.choose_tau``);
3. writes both into the model's buffers and exports it as ``src/msfer/weights/msfer_fer2013.pt``
   (half precision if that loses nothing measurable: every accuracy within 0.1 point);
4. measures the export with and without flip TTA under both decision rules, its calibration on
   the held-out half and on all of public_test, the fixed sample the tests re-check, and (with
   ``--tcce``) TCCE val through the whole pipeline (detect, crop, classify; a photo without a
   face counts as wrong), and writes ``msfer_fer2013.json`` beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import numpy as np
import torch

from msfer.data.readers import read_dataset
from msfer.engine.calibration import (
    DECISION_RULES,
    apply,
    calibrated_checkpoint,
    calibration_metrics,
    choose_calibration,
    decide,
)
from msfer.engine.checkpoint import export_weights, load_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from msfer.engine.datasets import FaceDataset
from msfer.engine.evaluate import predict_split, split_metrics
from msfer.engine.metrics import compute_metrics
from msfer.engine.prior import choose_tau, stratified_halves, unfold_adjustment
from msfer.labels import EMOTIONS
from msfer.regions.annotations import load_annotations
from msfer.weights import BUNDLED_MODEL, BUNDLED_RECORD, fixed_sample

KEYS = ("n", "overall_accuracy", "mean_class_accuracy")


def predict(weights: Path, samples: list, annotations: dict | None, tta: bool) -> tuple[dict, tuple[str, ...]]:
    model, _ = load_model(weights)
    dataset = FaceDataset(samples, model.input_size, model.region_names, annotations)
    predictions = predict_split(model, dataset, torch.device("cpu"), 256, tta=tta, num_workers=2)
    predictions["balanced_offsets"] = model.balanced_offsets.float().numpy()
    return predictions, model.region_names


def measure(weights: Path, samples: list, annotations: dict | None, tta: bool) -> dict:
    return summarize(*predict(weights, samples, annotations, tta), scored_regions=annotations is not None)


def summarize(predictions: dict, region_names: tuple[str, ...], scored_regions: bool) -> dict:
    """Headline figures (decision rule argmax), both rules' accuracies and per-class recall, calibration."""
    metrics = split_metrics(predictions, region_names, score_regions=scored_regions,
                            balanced_offsets=predictions["balanced_offsets"])
    recall = {name: scores["recall"] for name, scores in metrics["per_class"].items()}
    balanced_labels = decide(predictions["probs"], predictions["balanced_offsets"], "balanced")
    balanced = compute_metrics(predictions["y_true"], balanced_labels, EMOTIONS)
    return {**{k: metrics[k] for k in (*KEYS, "decision_rules", "calibration", "region_detection",
                                        "region_detection_stages", "fallback_rate") if k in metrics},
            "recall": recall, "recall_balanced": {name: s["recall"] for name, s in balanced["per_class"].items()}}


def public_test(weights: Path, samples: list, annotations: dict | None, without_tta: dict | None = None) -> dict:
    """Scores with and without TTA; ``without_tta`` is the latter when already measured."""
    return {"fer2013_public_test": without_tta or measure(weights, samples, annotations, tta=False),
            "fer2013_public_test_tta": measure(weights, samples, annotations, tta=True)}


def tcce_val(root: Path) -> dict:
    """The bundled model on TCCE val through the whole pipeline (largest face of each photo), under both rules."""
    from msfer.inference.detect_eval import evaluate_with_detection
    from msfer.inference.recognizer import EmotionRecognizer

    samples = [s for s in read_dataset(root, "folder").samples if s.split == "val"]
    metrics = evaluate_with_detection(EmotionRecognizer(BUNDLED_MODEL, device="cpu", batch_size=32), samples)
    return {**{rule: {"n": metrics["n"], **scores} for rule, scores in metrics["decision_rules"].items()},
            "faces_missed": metrics["detection"]["faces_missed"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (its best.pt is bundled) or a checkpoint file")
    parser.add_argument("--data", type=Path, required=True, help="FER2013 folder tree")
    parser.add_argument("--annotations", type=Path, help="pseudo-labels, to score the region detector too")
    parser.add_argument("--tcce", type=Path, help="TCCE folder tree (train/, val/): its val is the second validation")
    args = parser.parse_args()

    best = resolve_checkpoint(args.run, prefer="best.pt")
    index = read_dataset(args.data, "fer2013")
    samples = [s for s in index.samples if s.split == "public_test"]
    annotations = load_annotations(args.annotations) if args.annotations else None
    # the model as trained: an earlier bundle's folded adjustment taken out, any calibration reset, so
    # that the calibration is fitted to (and later applied to) the raw logits
    checkpoint = calibrated_checkpoint(unfold_adjustment(load_checkpoint(best)), [1.0] * 7, [0.0] * 7, [0.0] * 7, {})
    checkpoint.pop("calibration")
    as_trained = save_checkpoint(checkpoint, BUNDLED_MODEL.with_suffix(".as_trained.tmp"))
    record = {"source": str(best), "best_epoch": checkpoint.get("best", {}).get("epoch"), "validation": {}}

    predictions, region_names = predict(as_trained, samples, annotations, tta=False)
    calibration = choose_calibration(predictions["logits"], predictions["y_true"])
    calibrated = apply(predictions["logits"], np.array(calibration["scale"]), np.array(calibration["bias"]))
    counts = list(index.counts()["train"].values())
    decision = choose_tau(calibrated, predictions["y_true"], counts)
    record["calibration"] = calibration
    record["decision"] = {"default": "argmax", **{k: v for k, v in decision.items() if k != "curve"},
                          "curve": decision["curve"]}
    kept = {"method": calibration["method"], "scale": calibration["scale"], "bias": calibration["bias"],
            "criterion": calibration["criterion"], "balanced_tau": decision["tau"],
            "balanced_criterion": decision["criterion"]}
    source = save_checkpoint(calibrated_checkpoint(checkpoint, calibration["scale"], calibration["bias"],
                                                   decision["offsets"], kept), BUNDLED_MODEL.with_suffix(".fp32.tmp"))
    record["validation"]["as_trained"] = public_test(
        as_trained, samples, annotations, summarize(predictions, region_names, scored_regions=annotations is not None))
    as_trained.unlink()

    half = export_weights(source, BUNDLED_MODEL.with_suffix(".fp16.tmp"), half=True)
    for name, weights in (("float32", source), ("float16", half)):
        record["validation"][name] = public_test(weights, samples, annotations)
    fp32, fp16 = record["validation"]["float32"], record["validation"]["float16"]
    lossless = all(abs(fp32[k]["decision_rules"][rule][m] - fp16[k]["decision_rules"][rule][m]) <= 0.001
                   for k in fp32 for rule in DECISION_RULES for m in ("overall_accuracy", "mean_class_accuracy"))
    if lossless:
        half.replace(BUNDLED_MODEL)
    else:
        half.unlink()
        export_weights(source, BUNDLED_MODEL, half=False)
    source.unlink()
    record["precision"] = "float16" if lossless else "float32"
    bundled, _ = predict(BUNDLED_MODEL, samples, annotations, tta=False)
    _, held_out = stratified_halves(bundled["y_true"])
    record["calibration"]["held_out"]["bundled"] = calibration_metrics(bundled["probs"][held_out],
                                                                       bundled["y_true"][held_out])
    sample = fixed_sample(samples)
    record["fixed_sample"] = {"split": "public_test", "size": len(sample),
                              **measure(BUNDLED_MODEL, sample, None, tta=False)}
    if args.tcce:
        record["validation"]["tcce_val"] = tcce_val(args.tcce)
    record["config"] = checkpoint["config"]
    BUNDLED_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("config", "decision")}, indent=1)[:6000])
    print(f"bundled {BUNDLED_MODEL} ({BUNDLED_MODEL.stat().st_size / 2**20:.1f} MB, {record['precision']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
