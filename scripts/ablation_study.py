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
``OUT/ablation.md`` (the table of docs/ablation.md) from whatever runs are finished, so it can be
run again at any time to refresh them (``--summarize-only`` trains nothing).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from msfer.studies import NEEDS_NO_REGIONS, ROWS, run_dir, score, summarize, train_to

ROOT = Path(__file__).resolve().parents[1]


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
                         args.epochs, cwd=ROOT)
                score(run, args.data, args.annotations, args.tcce, pseudo=name == "full")
                summarize(args.out, budget)
    summarize(args.out, budget)
    return 0


if __name__ == "__main__":
    sys.exit(main())
