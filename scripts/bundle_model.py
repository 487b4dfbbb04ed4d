"""Bundle a trained run as msfer's default model, and record what it measures.

    python scripts/bundle_model.py runs/cpu_2h --data /path/to/fer2013 --annotations data/annotations/fer2013.jsonl \
        [--logit-adjust]

Exports the run's ``best.pt`` as ``src/msfer/weights/msfer_fer2013.pt`` (half precision,
inference only), then evaluates the run's own file and the export on FER2013 public_test
(validation), with and without flip TTA, and on the fixed sample that the tests re-check.
The half-precision file is kept only if it loses nothing measurable (every accuracy within
0.1 point of float32); otherwise float32 is bundled. Writes ``msfer_fer2013.json`` beside it.

``--logit-adjust`` folds a class-prior logit adjustment (``msfer.engine.prior``) into the
bundled weights, its strength chosen on one stratified half of public_test; the record keeps
the run's own numbers (``as_trained``) beside the adjusted ones, and the other half's.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from msfer.data.readers import read_dataset  # noqa: E402
from msfer.engine.checkpoint import export_weights, load_checkpoint, load_model  # noqa: E402
from msfer.engine.datasets import FaceDataset  # noqa: E402
from msfer.engine.evaluate import predict_split, split_metrics  # noqa: E402
from msfer.engine.prior import choose_tau, fold_adjustment  # noqa: E402
from msfer.regions.annotations import load_annotations  # noqa: E402
from msfer.weights import BUNDLED_MODEL, BUNDLED_RECORD, fixed_sample  # noqa: E402

KEYS = ("n", "overall_accuracy", "mean_class_accuracy")


def predict(weights: Path, samples: list, annotations: dict | None, tta: bool) -> tuple[dict, tuple[str, ...]]:
    model, _ = load_model(weights)
    dataset = FaceDataset(samples, model.input_size, model.region_names, annotations)
    return predict_split(model, dataset, torch.device("cpu"), 256, tta=tta, num_workers=2), model.region_names


def measure(weights: Path, samples: list, annotations: dict | None, tta: bool) -> dict:
    return summarize(*predict(weights, samples, annotations, tta), scored_regions=annotations is not None)


def summarize(predictions: dict, region_names: tuple[str, ...], scored_regions: bool) -> dict:
    metrics = split_metrics(predictions, region_names, score_regions=scored_regions)
    recall = {name: scores["recall"] for name, scores in metrics["per_class"].items()}
    return {**{k: metrics[k] for k in (*KEYS, "region_detection", "fallback_rate") if k in metrics}, "recall": recall}


def public_test(weights: Path, samples: list, annotations: dict | None, without_tta: dict | None = None) -> dict:
    """Scores with and without TTA; ``without_tta`` is the latter when already measured."""
    return {"fer2013_public_test": without_tta or measure(weights, samples, annotations, tta=False),
            "fer2013_public_test_tta": measure(weights, samples, annotations, tta=True)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (its best.pt is bundled)")
    parser.add_argument("--data", type=Path, required=True, help="FER2013 folder tree")
    parser.add_argument("--annotations", type=Path, help="pseudo-labels, to score the region detector too")
    parser.add_argument("--logit-adjust", action="store_true",
                        help="fold a class-prior logit adjustment into the weights, chosen on half of public_test")
    args = parser.parse_args()

    best = source = args.run / "best.pt"
    index = read_dataset(args.data, "fer2013")
    samples = [s for s in index.samples if s.split == "public_test"]
    annotations = load_annotations(args.annotations) if args.annotations else None
    record = {"source": str(best), "validation": {}}
    if args.logit_adjust:
        predictions, region_names = predict(best, samples, annotations, tta=False)
        counts = list(index.counts()["train"].values())
        record["logit_adjustment"] = choose_tau(predictions["probs"], predictions["y_true"], counts)
        source = fold_adjustment(best, BUNDLED_MODEL.with_suffix(".adjusted.tmp"), record["logit_adjustment"]["offsets"],
                                 {k: v for k, v in record["logit_adjustment"].items() if k != "curve"})
        record["validation"]["as_trained"] = public_test(
            best, samples, annotations, summarize(predictions, region_names, scored_regions=annotations is not None))
    half = export_weights(source, BUNDLED_MODEL.with_suffix(".fp16.tmp"), half=True)
    for name, weights in (("float32", source), ("float16", half)):
        record["validation"][name] = public_test(weights, samples, annotations)
    fp32, fp16 = record["validation"]["float32"], record["validation"]["float16"]
    lossless = all(abs(fp32[k][m] - fp16[k][m]) <= 0.001 for k in fp32 for m in ("overall_accuracy", "mean_class_accuracy"))
    if lossless:
        half.replace(BUNDLED_MODEL)
    else:
        half.unlink()
        export_weights(source, BUNDLED_MODEL, half=False)
    record["precision"] = "float16" if lossless else "float32"
    if source != best:
        source.unlink()
    sample = fixed_sample(samples)
    record["fixed_sample"] = {"split": "public_test", "size": len(sample),
                              **measure(BUNDLED_MODEL, sample, None, tta=False)}
    checkpoint = load_checkpoint(best)
    record["best_epoch"] = checkpoint.get("best", {}).get("epoch")
    record["config"] = checkpoint["config"]
    BUNDLED_RECORD.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k != "config"}, indent=1))
    print(f"bundled {BUNDLED_MODEL} ({BUNDLED_MODEL.stat().st_size / 2**20:.1f} MB, {record['precision']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
