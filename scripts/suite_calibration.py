"""Does a model's calibration hold on every set of a suite? Fit on halves of several sets, report the other halves.

    python scripts/suite_calibration.py bench/predictions.npz --model v1 \
        --fit-sets fer2013_public_test tcce_val sfew_val
    python scripts/suite_calibration.py bench/predictions.npz --model v3 --fit-sets tcce_val sfew_val \
        --photo-seeds 10

With ``--photo-seeds N`` it compares, on the photo sets named, four ways of calibrating faces found in
photos over N random pairs of stratified halves (seeds 0..N-1), each face scored by a fit on its set's
other half (:func:`msfer.engine.calibration.photo_temperature_study`): the model's probabilities before
any photo temperature, one temperature for every photo, the photo temperature (rising with the yaw;
what ``msfer bundle`` fits), and a temperature per set (which inference could not know: a bound). It
prints the mean cross-fitted NLL of the sets and each set's mean ECE.

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

from msfer.engine.calibration import apply, calibration_metrics, fit, photo_temperature_study
from msfer.engine.prior import stratified_halves
from msfer.files import write_text


def load(path: Path, model: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{set: (log-probabilities N x 7, labels N)}`` of ``model``'s faces found, as a user is given them (with its
    photo temperature on photos, where the file has them)."""
    stored = np.load(path)
    sets = {}
    for key in stored.files:
        name, _, rest = key.partition("/")
        if rest == f"probs/{model}":
            reported = f"{name}/reported/{model}"
            probs = stored[reported] if reported in stored.files else stored[key]
            labels = stored[f"{name}/labels"]
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
    parser.add_argument("--photo-seeds", type=int, default=None, metavar="N",
                        help="compare calibrations of faces found in photos on the --fit-sets, over N pairs of halves")
    args = parser.parse_args(argv)
    if args.photo_seeds is not None:
        if args.photo_seeds < 1:
            parser.error(f"--photo-seeds must be at least 1, got {args.photo_seeds}")
        return photo_seeds(args.predictions, args.model, list(dict.fromkeys(args.fit_sets)), args.photo_seeds,
                           args.out, parser)

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


def photo_seeds(path: Path, model: str, names: list[str], seeds: int, out: Path | None, parser) -> int:
    """The ``--photo-seeds`` comparison (module docstring): from each photo set's probabilities before any photo
    temperature (``<set>/probs/<model>``) and yaws (``<set>/yaw``)."""
    stored = np.load(path)
    sets = {}
    for name in names:
        keys = (f"{name}/probs/{model}", f"{name}/reported/{model}", f"{name}/yaw")
        if not all(key in stored.files for key in keys):
            parser.error(f"{path} holds no probabilities of {model!r} with yaws for set {name} (a photo set of a "
                         "benchmark run by this msfer)")
        probs, yaw, labels = stored[keys[0]], stored[keys[2]], stored[f"{name}/labels"]
        found = ~np.isnan(probs).any(axis=1) & np.isfinite(yaw)
        if found.sum() < 4:
            parser.error(f"set {name} has {int(found.sum())} faces with a yaw in {path}: --photo-seeds compares "
                         "calibrations of faces found in photos (name photo sets)")
        sets[name] = (probs[found], yaw[found], labels[found])
    frontal = {name: (probs, np.zeros_like(yaw), labels) for name, (probs, yaw, labels) in sets.items()}
    ways = {"before any photo temperature": [], "one temperature": [], "photo temperature (yaw)": [],
            "a temperature per set": []}
    for seed in range(seeds):
        by_yaw = photo_temperature_study(sets, seed)["held_out"]
        one = photo_temperature_study(frontal, seed)["held_out"]
        per_set = {name: photo_temperature_study({name: faces}, seed)["held_out"][name]
                   for name, faces in frontal.items()}
        for way, held_out, when in (("before any photo temperature", by_yaw, "without"),
                                    ("one temperature", one, "with"), ("photo temperature (yaw)", by_yaw, "with"),
                                    ("a temperature per set", per_set, "with")):
            ways[way].append({name: {k: held_out[name][when][k] for k in ("nll", "ece")} for name in names})
    lines = [f"Faces found in photos, {model}: cross-fitted on stratified halves, mean over seeds 0-{seeds - 1}", "",
             "| calibration | mean NLL | " + " | ".join(f"{name} ECE" for name in names) + " |",
             "|---|---|" + "---|" * len(names)]
    result = {"model": model, "sets": names, "seeds": seeds, "ways": {}}
    for way, runs in ways.items():
        nll = float(np.mean([np.mean([run[name]["nll"] for name in names]) for run in runs]))
        ece = {name: float(np.mean([run[name]["ece"] for run in runs])) for name in names}
        result["ways"][way] = {"mean_nll": nll, "ece": ece}
        lines.append(f"| {way} | {nll:.3f} | " + " | ".join(f"{ece[name]:.3f}" for name in names) + " |")
    print("\n".join(lines))
    if out is not None:
        write_text(out, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
