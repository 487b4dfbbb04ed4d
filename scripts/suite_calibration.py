"""Does a model's calibration hold on every set of a suite? Fit on halves of several sets, report the other halves.

    python scripts/suite_calibration.py bench/predictions.npz --model v1 \
        --fit-sets fer2013_public_test tcce_val sfew_val

Reads the ``predictions.npz`` of ``msfer benchmark --out`` (each set's labels and each model's probabilities;
rows of photos without a face are left out). Each set is split into stratified halves
(:func:`msfer.engine.prior.stratified_halves`, seed 0). Temperature and vector scaling
(:func:`msfer.engine.calibration.fit`) are fitted on the log-probabilities of the fitting halves of
``--fit-sets`` (sets of different images: FER+ Valid holds FER2013 public_test's), each set weighted
equally (a larger set's half is subsampled to the smallest's size, so FER2013's 1,800 crops do not decide
alone), and every set's other half is scored:
ECE, NLL and accuracy, as shipped and after each fit, and what a perfectly calibrated model with the
shipped confidences would show on each half (:func:`msfer.engine.calibration.calibrated_ece`: its mean, about
0.11 on a 90-face half, and its 95th percentile, above which an ECE is evidence of miscalibration).
Prints a Markdown table; ``--out`` writes it as JSON.
The log-probabilities are the model's calibrated logits up to a per-row constant, which no softmax sees,
so a fit here composes with the calibration the model already carries.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from msfer.engine.calibration import apply, calibration_metrics, fit
from msfer.engine.prior import stratified_halves
from msfer.files import write_text


def load(path: Path, model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{set: (log-probabilities N x 7, labels N)}`` of ``model``'s faces found."""
    stored = np.load(path)
    sets = {}
    for key in stored.files:
        name, _, rest = key.partition("/")
        if rest == f"probs/{model}":
            probs, labels = stored[key], stored[f"{name}/labels"]
            found = ~np.isnan(probs).any(axis=1)
            sets[name] = (np.log(np.clip(probs[found], 1e-12, None)), labels[found])
    if not sets:
        raise SystemExit(f"{path} holds no probabilities of a model named {model!r}")
    return sets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("predictions", type=Path, help="predictions.npz of msfer benchmark --out")
    parser.add_argument("--model", required=True,
                        help="the model's name in the benchmark's predictions (e.g. 'v1', or 'v1 own' for a run "
                             "with several crop rules)")
    parser.add_argument("--fit-sets", nargs="+", required=True,
                        help="sets whose halves the fit sees; no two may hold the same images")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)

    sets = load(args.predictions, args.model)
    fit_sets = list(dict.fromkeys(args.fit_sets))
    unknown = sorted(set(fit_sets) - set(sets))
    if unknown:
        parser.error(f"no set {', '.join(unknown)} in {args.predictions}; its sets: {', '.join(sorted(sets))}")
    halves = {name: stratified_halves(labels) for name, (_, labels) in sets.items()}
    size = min(len(halves[name][0]) for name in fit_sets)
    rng = np.random.default_rng(0)
    chosen = {name: rng.choice(halves[name][0], size, replace=False) for name in fit_sets}
    logits = np.concatenate([sets[name][0][chosen[name]] for name in fit_sets])
    labels = np.concatenate([sets[name][1][chosen[name]] for name in fit_sets])
    fits = {method: fit(logits, labels, method) for method in ("temperature", "vector")}

    result = {"model": args.model, "fit_sets": fit_sets, "per_set_fit_size": int(size), "sets": {}}
    lines = [f"Calibration of {args.model}, fitted on {size} faces of each of {', '.join(fit_sets)}; "
             "scored on the other halves (ECE / NLL):", "",
             "| set | n | ECE if calibrated, mean / 95% (as shipped) | as shipped | temperature | vector |",
             "|---|---|---|---|---|---|"]
    for name, (set_logits, set_labels) in sets.items():
        held_out = halves[name][1]
        z, y = set_logits[held_out], set_labels[held_out]
        figures = {"as_shipped": calibration_metrics(apply(z, np.ones(7), np.zeros(7)), y)}
        for method, (scale, bias) in fits.items():
            figures[method] = calibration_metrics(apply(z, scale, bias), y)
        result["sets"][name] = {"n": int(len(y)), **figures}
        shipped = figures["as_shipped"]
        cells = [f"{figures[k]['ece']:.3f} / {figures[k]['nll']:.3f}" for k in ("as_shipped", "temperature", "vector")]
        lines.append(f"| {name} | {len(y)} | {shipped['ece_floor']:.3f} / {shipped['ece_floor_95']:.3f} | "
                     + " | ".join(cells) + " |")
    print("\n".join(lines))
    if args.out is not None:
        write_text(args.out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
