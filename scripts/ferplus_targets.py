"""Do FER+ labels help as training targets? Measured at the ablation study's budget.

    python scripts/ferplus_targets.py --fer2013 /path/to/fer2013 --ferplus /path/to/ferplus/data \
        --fer2013-annotations data/annotations/fer2013.jsonl --ferplus-annotations data/annotations/ferplus.jsonl \
        --limit 5000 --epochs 1 --out runs/ferplus_targets

FER+ relabels FER2013's images (FER+ Train holds FER2013's training faces, FER+ Valid its
PublicTest faces) with 10 votes each. Three targets for the full model
(``configs/ablations/full.yaml``), everything else equal, two seeds each:

* ``fer2013``: FER2013 train images with FER2013's labels (the ablation table's full row);
* ``ferplus_hard``: FER+ Train images with the FER+ majority label (24,925 kept);
* ``ferplus_soft``: the same images with the FER+ vote distribution as a soft target.

Every run is scored with ``msfer evaluate`` on FER2013 public_test with FER2013's labels (the
issue's target), without TTA. Finished trainings and scores in ``OUT`` are kept, so an
interrupted study continues, and the ``fer2013`` runs of the ablation study (its ``full_seed*``
folders, the same config and budget) can be reused by copying them in as ``fer2013_seed*``.
Writes ``OUT/ferplus_targets.json`` and ``OUT/ferplus_targets.md``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from ablation_study import ROOT, msfer, run_all

SEEDS = (0, 1)
CONDITIONS = {
    "fer2013": "FER2013 images, FER2013 labels",
    "ferplus_hard": "FER+ Train images, FER+ majority labels",
    "ferplus_soft": "FER+ Train images, FER+ vote distributions (soft)",
}
# (name, dataset key, format, split): what every run is scored on
SCORES = (("fer2013_public_test", "fer2013", "fer2013", "public_test"),)


def train_overrides(condition: str, args: argparse.Namespace) -> list[str]:
    common = [f"train.epochs={args.epochs}", "eval.tta=false", f"data.limit={args.limit}"]
    if condition == "fer2013":
        return [*common, f"data.root={args.fer2013}", f"data.annotations={args.fer2013_annotations}"]
    soft = str(condition == "ferplus_soft").lower()
    return [*common, f"data.root={args.ferplus}", f"data.annotations={args.ferplus_annotations}", "data.format=ferplus",
            "data.val_split=valid", f"data.soft_labels={soft}", f"data.reader_options={{soft_labels: {soft}}}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fer2013", required=True, help="FER2013 folder tree (train/, public_test/)")
    parser.add_argument("--ferplus", required=True, help="FER+ folder holding FER2013Train/ and FER2013Valid/")
    parser.add_argument("--fer2013-annotations", required=True, help="msfer annotate output over FER2013")
    parser.add_argument("--ferplus-annotations", required=True, help="msfer annotate output over FER+")
    parser.add_argument("--limit", type=int, default=5000,
                        help="fixed random subset of the train images (default 5000)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run (default 1)")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ferplus_targets", help="output folder")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    roots = {"fer2013": args.fer2013, "ferplus": args.ferplus}
    config = str(ROOT / "configs" / "ablations" / "full.yaml")

    runs = {(c, s): args.out / f"{c}_seed{s}" for c in CONDITIONS for s in SEEDS}
    run_all([(f"{c} seed {s}", lambda c=c, s=s: msfer(
        "train", "--config", config, "--output-dir", str(runs[c, s]), "--overwrite", f"train.seed={s}",
        *train_overrides(c, args), log=runs[c, s].with_suffix(".log")))
        for c, s in runs if not trained(runs[c, s], args.epochs)], args.jobs)
    run_all([(f"{c} seed {s} on {score}", lambda c=c, s=s, score=score, key=key, fmt=fmt, split=split: msfer(
        "evaluate", "--weights", str(runs[c, s] / "best.pt"), "--data", roots[key], "--format", fmt,
        "--split", split, "--out", str(runs[c, s] / score), log=runs[c, s] / f"{score}.log"))
        for c, s in runs for score, key, fmt, split in SCORES if not (runs[c, s] / score / "metrics.json").is_file()],
        args.jobs)

    results = {c: {score: [json.loads((runs[c, s] / score / "metrics.json").read_text()) for s in SEEDS]
                   for score, *_ in SCORES} for c in CONDITIONS}
    summarize(results, args)
    return 0


def trained(run: Path, epochs: int) -> bool:
    """Whether ``run`` holds a finished training of ``epochs`` epochs."""
    from msfer.engine.checkpoint import load_checkpoint

    last = run / "last.pt"
    return last.is_file() and load_checkpoint(last).get("epoch") == epochs


def summarize(results: dict, args: argparse.Namespace) -> None:
    def cell(metrics: list[dict], key: str) -> str:
        values = [100 * m[key] for m in metrics]
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    lines = [f"Budget per run: a fixed random {args.limit:,} train images, {args.epochs} epoch(s), the full model "
             f"(configs/ablations/full.yaml), {len(SEEDS)} seeds; scored without TTA. "
             "Accuracy %, overall / mean class.", "",
             "| training targets | FER2013 public_test, FER2013 labels |",
             "|---|---|"]
    for condition, what in CONDITIONS.items():
        scores = results[condition]
        cells = (f"{cell(scores[s], 'overall_accuracy')} / {cell(scores[s], 'mean_class_accuracy')}"
                 for s, *_ in SCORES)
        lines.append(f"| {what} | " + " | ".join(cells) + " |")
    table = {c: {s: [{k: m[k] for k in ("n", "overall_accuracy", "mean_class_accuracy")} for m in runs]
                 for s, runs in scores.items()} for c, scores in results.items()}
    (args.out / "ferplus_targets.md").write_text("\n".join(lines) + "\n")
    record = {"limit": args.limit, "epochs": args.epochs, "seeds": SEEDS, "conditions": CONDITIONS, "results": table}
    (args.out / "ferplus_targets.json").write_text(json.dumps(record, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
