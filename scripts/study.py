"""A study: rows of training runs at one equal budget, each a few overrides on one config, tabulated.

    python scripts/study.py configs/studies/v2_reduced.yaml --out runs/v2_reduced \
        --set data.root=/path/to/fer2013 [--path NAME=PATH ...] [--rows base similarity ...] [--seeds 0 ...]
        [--summarize-only]

The study file (YAML) names the shared ``config`` (relative to the study file), the ``overrides``
every row gets, the ``epochs`` of the budget, a ``description`` of it, and ``rows``: a list of
``{name, description, overrides, seeds}`` (``config`` too, if a row needs another file). A row's
run is ``OUT/<name>_seed<seed>`` with its log beside it. A ``${NAME}`` in the study file's overrides
or in an evaluation's ``root`` is replaced by the path of ``--path NAME=PATH`` (for data that differs
between rows, which ``--set`` cannot give); a missing one is an error before anything trains. ``--set``
values are taken as they are.

Every row is scored as it ends, with the weights of its last epoch (no selection: all rows stop
at the same budget): ``val_*`` (the config's validation split) and ``photo_val_*`` (the whole
pipeline on ``data.photo_val``) from the run's ``metrics.csv``. An optional ``evaluate`` list of
``{name, format, root, split}`` scores ``last.pt`` on other data too: ``msfer evaluate`` (no
TTA, as the validation) writes ``RUN/<name>/metrics.json``, read as ``<name>_overall_accuracy``
and ``<name>_mean_class_accuracy``. Writes ``OUT/study.json`` and ``OUT/study.md`` (a column per
score that some finished run has) from whatever runs are finished.

Resumable across sessions: a run whose ``metrics.csv`` reaches the budget is not trained again,
one with a ``last.pt`` short of it continues with ``msfer train --resume`` (given this session's
``--set`` values and filled ``${NAME}`` overrides again, so data that moved between sessions is found),
anything else starts afresh; an evaluation runs again only when its ``metrics.json`` is older than
``last.pt``.
"""
from __future__ import annotations

import argparse
import csv
import json
import re
import statistics
import sys
from pathlib import Path

from msfer.studies import log_of, run_msfer, train_to
from msfer.values import parse_yaml

ROOT = Path(__file__).resolve().parents[1]
SCORES = {"val_overall_accuracy": "validation overall", "val_mean_class_accuracy": "validation mean class",
          "photo_val_overall_accuracy": "photo validation overall",
          "photo_val_mean_class_accuracy": "photo validation mean class"}
EVALUATE_KEYS = ("name", "format", "root", "split")
EVALUATED = {"overall_accuracy": "overall", "mean_class_accuracy": "mean class"}  # read from each evaluation


def evaluate(run: Path, evaluation: dict) -> None:
    """Score ``run/last.pt`` on one split with ``msfer evaluate`` into ``run/<name>/``, unless already done.

    Raises SystemExit naming the log when ``msfer evaluate`` fails."""
    out = run / evaluation["name"]
    done = out / "metrics.json"
    if done.exists() and done.stat().st_mtime >= (run / "last.pt").stat().st_mtime:
        return
    print(f"evaluating {run.name} on {evaluation['name']}", flush=True)
    code = run_msfer(run, "evaluate", "--weights", str(run / "last.pt"), "--data", evaluation["root"],
                     "--format", evaluation["format"], "--split", evaluation["split"], "--out", str(out), cwd=ROOT)
    if code != 0:
        raise SystemExit(f"evaluating {run.name} on {evaluation['name']} failed (exit {code}): see {log_of(run)}")


def last_epoch(run: Path) -> dict | None:
    """The last row of ``run/metrics.csv`` as numbers (None if the run has no epoch yet)."""
    path = run / "metrics.csv"
    if not path.exists():
        return None
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: float(v) for k, v in rows[-1].items() if v not in ("", None)} if rows else None


def evaluated(run: Path, evaluations: list[dict]) -> dict:
    """``<name>_overall_accuracy`` and ``<name>_mean_class_accuracy`` of each evaluation the run has."""
    scores = {}
    for name in (e["name"] for e in evaluations):
        path = run / name / "metrics.json"
        if path.exists():
            metrics = json.loads(path.read_text())
            scores.update({f"{name}_{key}": metrics[key] for key in EVALUATED})
    return scores


def columns(study: dict) -> dict:
    """Score key -> its label in the table: the validations', then each evaluation's."""
    names = [e["name"] for e in study.get("evaluate", [])]
    return {**SCORES, **{f"{name}_{key}": f"{name} {label}" for name in names for key, label in EVALUATED.items()}}


def summarize(study: dict, out: Path) -> dict:
    """study.json and study.md from the runs that reached the budget."""
    rows = {}
    for row in study["rows"]:
        runs = []
        for seed in row.get("seeds", [0]):
            run = out / f"{row['name']}_seed{seed}"
            scores = last_epoch(run)
            if scores and scores["epoch"] == study["epochs"]:
                runs.append({"seed": seed, **{k: scores[k] for k in SCORES if k in scores},
                             "photo_val_faces_missed": scores.get("photo_val_faces_missed"),
                             **evaluated(run, study.get("evaluate", []))})
        rows[row["name"]] = {"description": row["description"], "overrides": row.get("overrides", []), "runs": runs}
    result = {"budget": {"epochs": study["epochs"], "description": study["description"]}, "rows": rows}
    (out / "study.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / "study.md").write_text(table(result, columns(study)))
    return result


def table(result: dict, columns: dict) -> str:
    def cell(runs: list[dict], key: str) -> str:
        values = [100 * r[key] for r in runs if r.get(key) is not None]
        if not values:
            return "-"
        return f"{statistics.mean(values):.1f}" + (f" ± {statistics.stdev(values):.1f}" if len(values) > 1 else "")

    runs = [run for row in result["rows"].values() for run in row["runs"]]
    keys = [key for key in columns if any(run.get(key) is not None for run in runs)]  # no all-empty columns
    lines = [f"Budget per row: {result['budget']['description']}.", "",
             "| row | seeds | " + " | ".join(f"{columns[key]} (%)" for key in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, row in result["rows"].items():
        lines.append(f"| {name}: {row['description']} | {len(row['runs'])} | "
                     + " | ".join(cell(row["runs"], key) for key in keys) + " |")
    return "\n".join(lines) + "\n"


PLACEHOLDER = re.compile(r"\$\{(\w+)\}")  # ${NAME}: unlike {NAME}, never part of a YAML flow mapping


def fill(text: str, paths: dict[str, str]) -> str:
    """``text`` with each ``${NAME}`` replaced by ``paths[NAME]``; ValueError names a missing one."""
    def path(match: re.Match) -> str:
        if match[1] not in paths:
            raise ValueError(f"needs --path {match[1]}=PATH")
        return paths[match[1]]

    return PLACEHOLDER.sub(path, text)


def fill_all(overrides: list[str], paths: dict[str, str], located_only: bool = False) -> list[str]:
    """Each override filled (:func:`fill`); with ``located_only``, only those that hold a ``${NAME}``."""
    return [fill(o, paths) for o in overrides if not located_only or PLACEHOLDER.search(o)]


def named_path(text: str) -> tuple[str, str]:
    """``NAME=PATH`` -> (NAME, the absolute PATH): the trainings run in the checkout, not here."""
    name, sep, path = text.partition("=")
    if not (sep and re.fullmatch(r"\w+", name) and path):
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got {text!r}")
    return name, str(Path(path).expanduser().resolve())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="the study file (YAML)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one run folder per row and seed)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override for every row, e.g. data.root=... (repeatable)")
    parser.add_argument("--path", dest="paths", action="append", default=[], type=named_path, metavar="NAME=PATH",
                        help="what ${NAME} stands for in the study file's overrides and evaluation roots (repeatable)")
    parser.add_argument("--rows", nargs="+", help="train only these rows (default: all, in file order)")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="train only these of each row's seeds (default: all), e.g. --seeds 0 to see every row "
                             "once before any row twice")
    parser.add_argument("--summarize-only", action="store_true", help="train nothing; rewrite the tables")
    args = parser.parse_args(argv)

    study = parse_yaml(args.study.read_text())
    names = [row["name"] for row in study["rows"]]
    unknown = sorted(set(args.rows or []) - set(names))
    if unknown:
        parser.error(f"unknown rows {unknown}; the study has {names}")
    for evaluation in study.get("evaluate", []):
        if set(EVALUATE_KEYS) - set(evaluation):
            parser.error(f"{args.study}: an evaluation needs the keys {', '.join(EVALUATE_KEYS)}; got {evaluation}")
    out = args.out.resolve()  # the children run in the checkout
    out.mkdir(parents=True, exist_ok=True)
    if not args.summarize_only:
        paths = dict(args.paths)
        plan = []  # (row, config, overrides, on resume), every placeholder filled before anything trains
        try:
            evaluations = [{**e, "root": fill(str(e["root"]), paths)} for e in study.get("evaluate", [])]
            for row in study["rows"]:
                if not args.rows or row["name"] in args.rows:
                    # --set between the study's overrides and the row's, so that a row's own wins
                    shared, own = ([str(o) for o in d.get("overrides", [])] for d in (study, row))
                    plan.append((row, (args.study.parent / row.get("config", study["config"])).resolve(),
                                 [*fill_all(shared, paths), *args.overrides, *fill_all(own, paths)],
                                 [*fill_all(shared, paths, located_only=True), *args.overrides,
                                  *fill_all(own, paths, located_only=True)]))
        except ValueError as missing:
            parser.error(f"{args.study} {missing}")
        for row, config, overrides, on_resume in plan:
            for seed in [s for s in row.get("seeds", [0]) if args.seeds is None or s in args.seeds]:
                run = out / f"{row['name']}_seed{seed}"
                train_to(run, config, [*overrides, f"train.seed={seed}"], study["epochs"], on_resume, cwd=ROOT)
                for evaluation in evaluations:
                    evaluate(run, evaluation)
                summarize(study, out)
    print(table(summarize(study, out), columns(study)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
