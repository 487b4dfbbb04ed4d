"""The ablation study of issue 5: every row trained at one stated, equal budget, on FER2013.

    python scripts/ablation_study.py --data /path/to/fer2013 --annotations data/annotations/fer2013.jsonl \
        --limit 8000 --epochs 1 --out runs/ablations

Each row is a config in ``configs/ablations/`` (they differ only in model keys); a row
with two seeds is trained twice. Every run is validated on FER2013 ``public_test``
(validation; without flip TTA, which would double the cost of every row and change no
ranking); the full models are also evaluated with the pseudo-label regions at test time
instead of the learned detector's. Writes
``OUT/ablation.json`` and ``OUT/ablation.md`` (the README's table). ``--jobs N`` runs N
trainings at once (on a GPU); ``--set key=value`` adds overrides to every row.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkpoint reader of this checkout

# (row name, what it is, config, seeds)
ROWS = [
    ("baseline", "plain classifier (ImageNet MobileNetV2, GAP, linear)", "baseline.yaml", (0, 1)),
    ("scale3", "global P3 only (scale 3)", "scale3.yaml", (0,)),
    ("scales23", "face + global (scales 2-3)", "scales23.yaml", (0,)),
    ("full", "full: organs + face + global (scales 1-3), focal loss", "full.yaml", (0, 1)),
    ("full_ce", "full, cross-entropy instead of focal loss", "full_ce.yaml", (0,)),
]
PSEUDO_ROW = ("full_pseudo", "full, pseudo-label regions at test time instead of learned ones")


def msfer(*args: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "msfer.cli", *args], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, cwd=ROOT, env=env)


def train(name: str, config: str, seed: int, overrides: list[str], out: Path) -> subprocess.Popen:
    run = out / f"{name}_seed{seed}"
    return msfer("train", "--config", str(ROOT / "configs" / "ablations" / config), "--output-dir", str(run),
                 "--overwrite", f"train.seed={seed}", *overrides, log=out / f"{name}_seed{seed}.log")


def evaluate_pseudo(run: Path, data: str, annotations: str) -> subprocess.Popen:
    return msfer("evaluate", "--weights", str(run / "best.pt"), "--data", data, "--format", "fer2013",
                 "--split", "public_test", "--out", str(run / "eval_pseudo"), "--annotations", annotations,
                 "--regions", "pseudo", log=run.with_suffix(".pseudo.log"))


def run_all(jobs: list, parallel: int) -> None:
    """Start the ``jobs`` (callables returning a Popen), at most ``parallel`` at a time; fail on any error."""
    running: list[tuple[str, subprocess.Popen]] = []
    for label, start in jobs:
        if len(running) >= parallel:
            _wait(running.pop(0))
        running.append((label, start()))
        print(f"started {label}", flush=True)
    for item in running:
        _wait(item)


def _wait(item: tuple[str, subprocess.Popen]) -> None:
    label, process = item
    if process.wait() != 0:
        raise SystemExit(f"{label} failed (exit {process.returncode}): see its log")
    print(f"finished {label}", flush=True)


def best_metrics(run: Path) -> dict:
    """The validation metrics of the selected epoch (what best.pt holds)."""
    from msfer.engine.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(run / "best.pt")
    return {key: checkpoint["metrics"][key] for key in ("overall_accuracy", "mean_class_accuracy")}


def summarize(out: Path, budget: str) -> dict:
    rows = []
    for name, what, _, seeds in ROWS:
        rows.append((name, what, [best_metrics(out / f"{name}_seed{seed}") for seed in seeds]))
    pseudo = [json.loads((out / f"full_seed{seed}" / "eval_pseudo" / "metrics.json").read_text()) for seed in ROWS[3][3]]
    rows.append((*PSEUDO_ROW, [{k: m[k] for k in ("overall_accuracy", "mean_class_accuracy")} for m in pseudo]))

    def cell(values: list[float]) -> str:
        mean = 100 * statistics.mean(values)
        return f"{mean:.1f}" + (f" ± {100 * statistics.stdev(values):.1f}" if len(values) > 1 else "")

    lines = [f"Budget per row: {budget}.", "",
             "| row | seeds | overall accuracy (%) | mean class accuracy (%) |", "|---|---|---|---|"]
    table = {}
    for name, what, metrics in rows:
        overall = [m["overall_accuracy"] for m in metrics]
        mean_class = [m["mean_class_accuracy"] for m in metrics]
        lines.append(f"| {what} | {len(metrics)} | {cell(overall)} | {cell(mean_class)} |")
        table[name] = {"description": what, "runs": metrics}
    (out / "ablation.md").write_text("\n".join(lines) + "\n")
    (out / "ablation.json").write_text(json.dumps({"budget": budget, "rows": table}, indent=1))
    print("\n".join(lines))
    return table


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="FER2013 folder tree (train/, public_test/)")
    parser.add_argument("--annotations", required=True, help="msfer annotate output over both FER2013 splits")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablations", help="output folder")
    parser.add_argument("--limit", type=int, default=None, help="train on this fixed random subset of FER2013 train")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per row")
    parser.add_argument("--jobs", type=int, default=1, help="trainings at once")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every row (repeatable)")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    overrides = [f"data.root={args.data}", f"data.annotations={args.annotations}", f"train.epochs={args.epochs}",
                 "eval.tta=false",
                 *([f"data.limit={args.limit}"] if args.limit else []), *args.overrides]
    # The baseline and scale-3 configs set data.annotations to null: they need no regions.
    jobs = []
    for name, _, config, seeds in ROWS:
        row_overrides = overrides if name not in ("baseline", "scale3") else [o for o in overrides if "annotations" not in o]
        for seed in seeds:
            jobs.append((f"{name} seed {seed}",
                         lambda n=name, c=config, s=seed, o=row_overrides: train(n, c, s, o, args.out)))
    run_all(jobs, args.jobs)
    run_all([(f"full seed {seed} with pseudo-label regions",
              lambda s=seed: evaluate_pseudo(args.out / f"full_seed{s}", args.data, args.annotations))
             for seed in ROWS[3][3]], args.jobs)
    images = f"a fixed random {args.limit:,} of the 28,709 FER2013 train images" if args.limit else "all 28,709 FER2013 train images"
    summarize(args.out, f"{images}, {args.epochs} epoch(s), the CPU recipe's optimiser and augmentation, validation without TTA"
                        + (f", overrides {' '.join(args.overrides)}" if args.overrides else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
