"""A study: rows of training runs at one equal budget, each a few overrides on one config, tabulated.

    python scripts/study.py configs/studies/v2_reduced.yaml --out runs/v2_reduced \
        --set data.root=/path/to/fer2013 [--rows base similarity ...] [--summarize-only]

The study file (YAML) names the shared ``config`` (relative to the study file), the ``overrides``
every row gets, the ``epochs`` of the budget, a ``description`` of it, and ``rows``: a list of
``{name, description, overrides, seeds}`` (``config`` too, if a row needs another file). A row's
run is ``OUT/<name>_seed<seed>`` with its log beside it.

Every row is scored as it ends, with the weights of its last epoch (no selection: all rows stop
at the same budget): ``val_*`` (the config's validation split, FER2013 public_test) and
``photo_val_*`` (the whole pipeline on ``data.photo_val``, TCCE val) from the run's
``metrics.csv``. Writes ``OUT/study.json`` and ``OUT/study.md`` from whatever runs are finished.

Resumable across sessions: a run whose ``metrics.csv`` reaches the budget is skipped, one with
a ``last.pt`` short of it continues with ``msfer train --resume``, anything else starts afresh.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"val_overall_accuracy": "validation overall", "val_mean_class_accuracy": "validation mean class",
          "photo_val_overall_accuracy": "photo validation overall",
          "photo_val_mean_class_accuracy": "photo validation mean class"}


def trained_epochs(run: Path) -> int:
    """Epochs in ``run/last.pt`` (0 if there is none)."""
    from msfer.engine.checkpoint import load_checkpoint

    return int(load_checkpoint(run / "last.pt")["epoch"]) if (run / "last.pt").exists() else 0


def train_to(run: Path, config: Path, overrides: list[str], epochs: int) -> None:
    """Train ``run`` to ``epochs`` epochs from ``config`` + ``overrides``, continuing an interrupted run.

    Raises SystemExit naming the log when ``msfer train`` fails."""
    done = trained_epochs(run)
    if done >= epochs:
        return
    if done:
        args = ["train", "--resume", str(run), f"train.epochs={epochs}"]  # the budget may have grown
    else:
        args = ["train", "--config", str(config), "--output-dir", str(run), "--overwrite", *overrides,
                f"train.epochs={epochs}"]
    print(f"{'resuming' if done else 'training'} {run.name} ({done}/{epochs} epochs done)", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1"}
    log = run.parent / f"{run.name}.log"
    with open(log, "a") as out:
        code = subprocess.call([sys.executable, "-m", "msfer.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                               cwd=ROOT, env=env)
    if code != 0 or trained_epochs(run) < epochs:
        raise SystemExit(f"{run.name} failed (exit {code}): see {log}")


def last_epoch(run: Path) -> dict | None:
    """The last row of ``run/metrics.csv`` as numbers (None if the run has no epoch yet)."""
    path = run / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else None


def summarize(study: dict, out: Path) -> dict:
    """study.json and study.md from the runs that reached the budget."""
    rows = {}
    for row in study["rows"]:
        runs = []
        for seed in row.get("seeds", [0]):
            scores = last_epoch(out / f"{row['name']}_seed{seed}")
            if scores and scores["epoch"] >= study["epochs"]:
                runs.append({"seed": seed, **{k: scores[k] for k in SCORES if k in scores},
                             "photo_val_faces_missed": scores.get("photo_val_faces_missed")})
        rows[row["name"]] = {"description": row["description"], "overrides": row.get("overrides", []), "runs": runs}
    result = {"budget": {"epochs": study["epochs"], "description": study["description"]}, "rows": rows}
    (out / "study.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "study.md").write_text(table(result))
    return result


def table(result: dict) -> str:
    def cell(runs: list[dict], key: str) -> str:
        values = [100 * r[key] for r in runs if r.get(key) is not None]
        if not values:
            return "-"
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    lines = [f"Budget per row: {result['budget']['description']}.", "",
             "| row | seeds | " + " | ".join(f"{label} (%)" for label in SCORES.values()) + " |",
             "|---|---|" + "---|" * len(SCORES)]
    for name, row in result["rows"].items():
        lines.append(f"| {name}: {row['description']} | {len(row['runs'])} | "
                     + " | ".join(cell(row["runs"], key) for key in SCORES) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study file (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one run folder per row and seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every row, e.g. data.root=... (repeatable)")
    parser.add_argument("--rows", nargs="+", help="train only these rows (default: all, in file order)")
    parser.add_argument("--summarize-only", action="store_true", help="train nothing; rewrite the tables")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))

    study = yaml.safe_load(args.study.read_text())
    names = [row["name"] for row in study["rows"]]
    unknown = sorted(set(args.rows or []) - set(names))
    if unknown:
        parser.error(f"unknown rows {unknown}; the study has {names}")
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        for row in study["rows"]:
            if args.rows and row["name"] not in args.rows:
                continue
            config = (args.study.parent / row.get("config", study["config"])).resolve()
            overrides = [*study.get("overrides", []), *args.overrides, *row.get("overrides", [])]
            for seed in row.get("seeds", [0]):
                train_to(args.out / f"{row['name']}_seed{seed}", config, [*overrides, f"train.seed={seed}"],
                         study["epochs"])
                summarize(study, args.out)
    print(table(summarize(study, args.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
