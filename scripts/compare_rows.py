"""Paired, seed-averaged differences between two study rows on a benchmark suite.

A study row trained with several seeds is one recipe: its accuracy on an image is the share of its seeds'
models that classify the image right (argmax; a photo without a face counts as wrong). The difference of two
rows is then paired over the same images, per set and for the suite's score (the mean over its domains of
each domain's mean set accuracy), with a 95% interval from a bootstrap stratified by class over the images
(the seeds' own spread is in the averaging, not in the interval: read it from the benchmark's rows).
A model written ``a+b`` is the ensemble of models ``a`` and ``b``: the mean of their probabilities.
Several predictions.npz of the same suite (runs scored apart, e.g. with and without ``--tta``) are read as one:
their images must agree, and a model named in two of them must have the same predictions in both.

    msfer benchmark configs/benchmarks/dev.yaml --data-root DATA --out runs/bench \\
        --weights base0=runs/study/base_seed0/last.pt base1=... sfew0=... sfew1=...
    python scripts/compare_rows.py runs/bench/predictions.npz configs/benchmarks/dev.yaml \\
        --row sfew=sfew0,sfew1 --against base=base0,base1
    python scripts/compare_rows.py runs/bench/predictions.npz configs/benchmarks/dev.yaml \\
        --row ensemble=sfew0+sfew1 --against sfew=sfew0,sfew1       # does an ensemble of the seeds pay?
    msfer benchmark ... --tta --out runs/bench_tta --weights base0_tta=runs/study/base_seed0/last.pt ...
    python scripts/compare_rows.py runs/bench/predictions.npz runs/bench_tta/predictions.npz \\
        configs/benchmarks/dev.yaml --row tta=base0_tta,base1_tta --against plain=base0,base1
"""
from __future__ import annotations

import argparse
import zipfile

import numpy as np

from msfer.data.suites import load_suite
from msfer.engine.decision import decisions
from msfer.errors import MsferError
from msfer.inference.benchmark import BOOTSTRAP, bootstrap_indices, suite_score


def row_correct(predictions, set_name: str, models: list[str]) -> np.ndarray:
    """Per image of ``set_name``, the share of ``models`` that classify it right (N,)."""
    if f"{set_name}/labels" not in predictions:
        held = sorted({key.split("/")[0] for key in predictions})
        raise MsferError(f"the predictions have no set {set_name!r} (they hold {', '.join(held)}): give the suite "
                         "file the benchmark ran")
    labels = predictions[f"{set_name}/labels"]
    rights = []
    for model in models:
        rights.append(decisions(model_probs(predictions, set_name, model), None) == labels)  # no face: wrong
    return np.mean(rights, axis=0)


def model_probs(predictions, set_name: str, model: str) -> np.ndarray:
    """``N x 7`` probabilities of ``model`` on ``set_name``; ``a+b``: the mean of ``a``'s and ``b``'s (unless the
    predictions hold a model named ``a+b`` itself)."""
    members = []
    for member in [model] if f"{set_name}/probs/{model}" in predictions else model.split("+"):
        key = f"{set_name}/probs/{member}"
        if key not in predictions:
            held = sorted(name.split("/probs/")[1] for name in predictions if name.startswith(f"{set_name}/probs/"))
            raise MsferError(f"the predictions have no model {member!r} on {set_name} (they hold {', '.join(held)})")
        members.append(predictions[key])
    return np.mean(members, axis=0)  # a photo without a face is NaN in every member's, and stays NaN


def compare(predictions, suite, row: list[str], against: list[str], resamples: int = BOOTSTRAP,
            seed: int = 0) -> dict[str, dict[str, float]]:
    """{set name or "suite": {"row", "against", "difference", "low", "high"}} in percent."""
    result, point, replicates = {}, {}, {}
    for entry in (s for s in suite.sets if s.domain is not None):
        a, b = row_correct(predictions, entry.name, row), row_correct(predictions, entry.name, against)
        indices = bootstrap_indices(predictions[f"{entry.name}/labels"], resamples, seed)
        point[entry.name] = a.mean() - b.mean()
        replicates[entry.name] = (a[indices] - b[indices]).mean(1)
        low, high = np.percentile(replicates[entry.name], [2.5, 97.5])
        result[entry.name] = {"row": 100 * a.mean(), "against": 100 * b.mean(), "difference": 100 * point[entry.name],
                              "low": 100 * low, "high": 100 * high}
    low, high = np.percentile(suite_score(suite, replicates), [2.5, 97.5])
    result["suite"] = {"difference": 100 * suite_score(suite, point), "low": 100 * low, "high": 100 * high}
    return result


def join_predictions(files: dict[str, dict]) -> dict[str, np.ndarray]:
    """One mapping of several benchmark predictions (``{file name: its arrays}``) of the same suite.

    A set's ``ids`` and ``labels`` must be the same in every file that holds the set (its ``yaw`` is taken from
    the first); a model in several files (a reference scored again) must have the same ``probs`` and
    ``reported`` in each. :class:`MsferError` naming the two files otherwise."""
    joined, source = {}, {}
    for name, arrays in files.items():
        for key, value in arrays.items():
            set_name, _, field = key.partition("/")
            if key not in joined:
                joined[key], source[key] = value, name
            elif field.startswith(("probs/", "reported/")) and not np.array_equal(joined[key], value, equal_nan=True):
                raise MsferError(f"model {field.split('/', 1)[1]!r} on {set_name} has other predictions in "
                                 f"{name} than in {source[key]}: name the models apart in msfer benchmark --weights")
            elif field in ("ids", "labels") and not np.array_equal(joined[key], value):
                raise MsferError(f"{source[key]} and {name} hold different images of {set_name}: not runs of "
                                 "the same suite")
    return joined


def parse_row(text: str) -> tuple[str, list[str]]:
    name, _, models = text.partition("=")
    if not models:
        raise argparse.ArgumentTypeError(f"expected NAME=MODEL,MODEL,... got {text!r}")
    return name.strip(), ["+".join(part.strip() for part in model.split("+")) for model in models.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("predictions", nargs="+", help="predictions.npz of msfer benchmark; several: read as one")
    parser.add_argument("suite", help="the suite file the benchmark ran")
    models = "MODEL: a name given to msfer benchmark --weights; a+b: the ensemble of models a and b"
    parser.add_argument("--row", type=parse_row, required=True, help=f"NAME=MODEL,MODEL,... (one per seed; {models})")
    parser.add_argument("--against", type=parse_row, required=True, help="NAME=MODEL,MODEL,... (as --row)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    args = parser.parse_args()
    files = {}
    for path in args.predictions:
        try:
            loaded = np.load(path)
        except FileNotFoundError:
            parser.error(f"{path}: no such file")
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:  # empty or cut short: EOF, BadZipFile
            parser.error(f"{path}: not a predictions.npz of msfer benchmark ({error})")
        if not isinstance(loaded, np.lib.npyio.NpzFile):  # one array (.npy)
            parser.error(f"{path}: not a predictions.npz of msfer benchmark (one array, not an archive of them)")
        with loaded:
            files[path] = dict(loaded)
    try:
        suite = load_suite(args.suite)
    except MsferError as error:
        parser.error(str(error))
    (row, row_models), (against, against_models) = args.row, args.against
    try:
        predictions = join_predictions(files)
    except MsferError as error:  # it names the files
        parser.error(str(error))
    try:
        result = compare(predictions, suite, row_models, against_models, seed=args.seed)
    except MsferError as error:
        parser.error(f"{', '.join(args.predictions)}: {error}")
    print(f"| set | {row} (%) | {against} (%) | {row} - {against} [95% CI] |\n|---|---|---|---|")
    for name, entry in result.items():
        scores = ("-", "-") if name == "suite" else (f"{entry['row']:.1f}", f"{entry['against']:.1f}")
        print(f"| {name} | {scores[0]} | {scores[1]} | {entry['difference']:+.1f} "
              f"[{entry['low']:+.1f}, {entry['high']:+.1f}] |")


if __name__ == "__main__":
    main()
