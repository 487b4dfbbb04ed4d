"""The ablation study: which of the paper's parts help, every row trained at one equal budget on FER2013.

    python scripts/ablation_study.py --data /path/to/fer2013 --annotations data/annotations/fer2013.jsonl \
        --tcce /path/to/tcce --out runs/ablations

Budget: all 28,709 FER2013 train images, ``configs/ablations/base.yaml`` (the CPU recipe's
optimiser, augmentation and one-cycle schedule compressed to its epochs); the rows differ
only in the model keys of their own config. Each run is scored on two validation sets, both
without flip TTA: FER2013 ``public_test`` (face crops; it also selects each run's ``best.pt``)
and TCCE ``val`` through the whole pipeline (RetinaFace, crop, classify; a photo without a
detected face counts as wrong). The full model is also scored with the pseudo-label regions
at test time (FER2013 only: TCCE has no pseudo-labels).

The statistics compare full with the plain classifier image by image: for each validation
image the fraction of seeds that got it right, full minus baseline, averaged; its 95%
interval is the percentile bootstrap over images (10,000 resamples); McNemar's exact test
is given per seed pair.

Resumable across sessions: a run whose ``scores.json`` exists is skipped, a run with a
``last.pt`` short of the budget continues with ``msfer train --resume``, anything else
starts afresh. Writes ``OUT/ablation.json`` (``docs/ablation.json`` is a copy) and
``OUT/ablation.md`` (the README's table) from whatever runs are finished, so it can be
run again at any time to refresh them (``--summarize-only`` trains nothing).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from study import train_to  # scripts/study.py, beside this file: trains or resumes one run to its budget

# (row, what it is, config, seeds); trained in this order, so that the comparison that matters
# most (full against the plain classifier) is complete first
ROWS = [
    ("full", "full: organs + face + global (scales 1-3), learned regions, focal loss", "full.yaml", (0, 1)),
    ("baseline", "plain classifier (ImageNet MobileNetV2, GAP, linear)", "baseline.yaml", (0, 1)),
    ("full_template", "full, fixed template layout instead of a detector", "full_template.yaml", (0,)),
    ("scales23", "face + global (scales 2-3)", "scales23.yaml", (0,)),
    ("scale3", "global P3 only (scale 3)", "scale3.yaml", (0,)),
    ("full_ce", "full, cross-entropy instead of focal loss", "full_ce.yaml", (0,)),
]
PSEUDO_ROW = ("full_pseudo", "full, pseudo-label regions at test time instead of learned ones")
NEEDS_NO_REGIONS = ("baseline", "full_template", "scale3")


def run_dir(out: Path, name: str, seed: int) -> Path:
    return out / f"{name}_seed{seed}"


def score(run: Path, data: Path, annotations: Path, tcce: Path | None, pseudo: bool, device: str = "cpu") -> dict:
    """Per-image predictions of ``run/best.pt`` on both validation sets; written to ``run/scores.json``."""
    import torch

    from msfer.data.readers import read_dataset
    from msfer.engine.datasets import FaceDataset
    from msfer.engine.evaluate import predict_split, split_metrics
    from msfer.inference.detect_eval import predict_with_detection
    from msfer.inference.recognizer import EmotionRecognizer
    from msfer.model.checkpoint import load_model
    from msfer.regions.annotations import load_annotations

    torch.set_num_threads(os.cpu_count() or 1)
    device = torch.device(device)
    samples = [s for s in read_dataset(data, "fer2013").samples if s.split == "public_test"]
    scores = {}
    variants = [("fer2013_public_test", None)]
    if pseudo:
        variants.append(("fer2013_public_test_pseudo", {"region_source": "pseudo"}))
    for key, overrides in variants:
        model, _ = load_model(run / "best.pt", device, model_overrides=overrides)
        regions = annotations if (model.region_names and annotations) else None
        dataset = FaceDataset(samples, model.input_size, model.region_names,
                              load_annotations(regions) if regions else None)
        predictions = predict_split(model, dataset, device, batch_size=256, pseudo_regions=overrides is not None)
        metrics = split_metrics(predictions, model.region_names,
                                score_regions=getattr(model, "detector", None) is not None)
        scores[key] = {"y_true": predictions["y_true"].tolist(), "y_pred": predictions["probs"].argmax(1).tolist(),
                       **{k: metrics[k] for k in ("overall_accuracy", "mean_class_accuracy")},
                       **{k: metrics[k] for k in ("region_detection", "region_detection_stages") if k in metrics}}
    if tcce is not None:
        val = [s for s in read_dataset(tcce, "folder").samples if s.split == "val"]
        y_pred = predict_with_detection(EmotionRecognizer(run / "best.pt", device=str(device), batch_size=32), val)
        y_true = np.asarray([s.label for s in val])
        scores["tcce_val"] = {"y_true": y_true.tolist(), "y_pred": y_pred.tolist(), **accuracies(y_true, y_pred)}
    (run / "scores.json").write_text(json.dumps(scores))
    return scores


def accuracies(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Overall and mean class accuracy (a prediction of 7, no face found, is wrong for every class)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float((y_pred[y_true == c] == c).mean()) for c in np.unique(y_true)]
    return {"overall_accuracy": float((y_true == y_pred).mean()), "mean_class_accuracy": float(np.mean(recalls))}


def paired_difference(full: list[dict], baseline: list[dict], key: str, resamples: int = 10_000) -> dict:
    """Full minus baseline on validation set ``key``: mean over images of (fraction of full's seeds right -
    fraction of baseline's seeds right), with its 95% percentile-bootstrap interval over images, and
    McNemar's exact test (two-sided) for each seed pair."""
    truth = np.asarray(full[0][key]["y_true"])
    right = {name: np.mean([np.asarray(r[key]["y_pred"]) == truth for r in runs], axis=0)
             for name, runs in (("full", full), ("baseline", baseline))}
    per_image = right["full"] - right["baseline"]
    rng = np.random.default_rng(0)
    means = per_image[rng.integers(0, len(per_image), size=(resamples, len(per_image)))].mean(axis=1)
    mcnemar = []
    for f, b in zip(full, baseline):
        f_right, b_right = np.asarray(f[key]["y_pred"]) == truth, np.asarray(b[key]["y_pred"]) == truth
        only_full, only_base = int((f_right & ~b_right).sum()), int((~f_right & b_right).sum())
        mcnemar.append({"only_full_right": only_full, "only_baseline_right": only_base,
                        "p_value": mcnemar_exact(only_full, only_base)})
    return {"overall_accuracy": float(per_image.mean()),
            "ci95": [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))],
            "images": int(len(per_image)), "seed_pairs": len(mcnemar), "mcnemar": mcnemar}


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value for ``b`` and ``c`` discordant pairs: the binomial(b + c, 1/2) tail."""
    n, k = b + c, min(b, c)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0


def summarize(out: Path, budget: dict) -> dict:
    """ablation.json and ablation.md from the finished runs."""
    rows, loaded = {}, {}
    for name, what, _, seeds in ROWS + [(PSEUDO_ROW[0], PSEUDO_ROW[1], None, ROWS[0][3])]:
        source = "full" if name == "full_pseudo" else name
        key = "fer2013_public_test_pseudo" if name == "full_pseudo" else "fer2013_public_test"
        runs = []
        for seed in seeds:
            path = run_dir(out, source, seed) / "scores.json"
            if not path.exists():
                continue
            scores = json.loads(path.read_text())
            if name != "full_pseudo":
                loaded.setdefault(name, []).append(scores)
            run = {"seed": seed, **{k: scores[key][k] for k in ("overall_accuracy", "mean_class_accuracy")}}
            if "tcce_val" in scores and name != "full_pseudo":
                run["tcce_val"] = {k: scores["tcce_val"][k] for k in ("overall_accuracy", "mean_class_accuracy")}
            for extra in ("region_detection", "region_detection_stages"):
                if extra in scores[key]:
                    run[extra] = scores[key][extra]
            runs.append(run)
        rows[name] = {"description": what, "runs": runs}
    result = {"budget": budget, "rows": rows}
    if len(loaded.get("full", [])) and len(loaded.get("baseline", [])):
        pairs = min(len(loaded["full"]), len(loaded["baseline"]))
        full, base = loaded["full"][:pairs], loaded["baseline"][:pairs]
        result["full_minus_baseline"] = paired_difference(full, base, "fer2013_public_test")
        if all("tcce_val" in s for s in full + base):
            result["full_minus_baseline_tcce_val"] = paired_difference(full, base, "tcce_val")
    (out / "ablation.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "ablation.md").write_text(table(result))
    print(table(result))
    return result


def table(result: dict) -> str:
    def cell(runs: list[dict], get) -> str:
        values = [100 * get(r) for r in runs]
        if not values:
            return "-"
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    lines = [f"Budget per row: {result['budget']['description']}.", "",
             "| row | seeds | FER2013 public_test overall (%) | mean class (%) | TCCE val overall (%) "
             "| mean class (%) |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"].values():
        runs = row["runs"]
        tcce = [r for r in runs if "tcce_val" in r]
        lines.append(f"| {row['description']} | {len(runs)} | {cell(runs, lambda r: r['overall_accuracy'])} | "
                     f"{cell(runs, lambda r: r['mean_class_accuracy'])} | "
                     f"{cell(tcce, lambda r: r['tcce_val']['overall_accuracy'])} | "
                     f"{cell(tcce, lambda r: r['tcce_val']['mean_class_accuracy'])} |")
    for key, label in (("full_minus_baseline", "FER2013 public_test"), ("full_minus_baseline_tcce_val", "TCCE val")):
        if key in result:
            d = result[key]
            lines.append(f"\nFull minus plain classifier, {label} ({d['images']} images, "
                         f"{d['seed_pairs']} seed pair(s)): "
                         f"{100 * d['overall_accuracy']:+.1f} points overall accuracy, 95% interval "
                         f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}]; McNemar p = "
                         + ", ".join(f"{m['p_value']:.3g}" for m in d["mcnemar"]) + ".")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="FER2013 folder tree (train/, public_test/)")
    parser.add_argument("--annotations", type=Path, required=True,
                        help="msfer annotate output over both FER2013 splits")
    parser.add_argument("--tcce", type=Path, default=None,
                        help="TCCE folder tree (train/, val/): scored through the whole pipeline")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablations", help="output folder")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per row (all of FER2013 train each)")
    parser.add_argument("--summarize-only", action="store_true",
                        help="train nothing; rewrite the tables from finished runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every row (repeatable; it changes the budget: say so)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.root={args.data}", f"data.annotations={args.annotations.resolve()}", "eval.tta=false",
                 *args.overrides]  # train_to adds train.epochs
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    budget = {"epochs": args.epochs, "train_images": 28709, "code_commit": commit,
              "description": f"all 28,709 FER2013 train images, {args.epochs} epochs, the CPU recipe's optimiser, "
                             "augmentation and one-cycle schedule compressed to that length; validation without TTA"
                             + (f"; overrides {' '.join(args.overrides)}" if args.overrides else "")}
    if not args.summarize_only:
        for name, _, config, seeds in ROWS:
            row_overrides = [o for o in overrides
                             if not (name in NEEDS_NO_REGIONS and o.startswith("data.annotations="))]
            for seed in seeds:
                run = run_dir(args.out, name, seed)
                if (run / "scores.json").exists():
                    continue
                train_to(run, ROOT / "configs" / "ablations" / config, [*row_overrides, f"train.seed={seed}"],
                         args.epochs)
                score(run, args.data, args.annotations, args.tcce, pseudo=name == "full")
                summarize(args.out, budget)
    summarize(args.out, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
