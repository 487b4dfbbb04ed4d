r"""Score emotion models on a suite of labelled sets: the library behind ``msfer benchmark``.

A **suite** is a small YAML file of labelled sets (:func:`msfer.data.suites.load_suite`).

Each set is scored for each model (a :class:`ModelVariant`: a weights file with a crop rule)
under each decision rule asked for. Per row (set, model, rule): ``n``, overall and mean class
accuracy with 95% percentile bootstrap intervals (:data:`BOOTSTRAP` resamples of the set's
images, the same resamples for every model, so differences are paired), the photos whose face
was not found (``missed``, counted as wrong, as ``msfer evaluate --detect-faces`` counts them),
and the expected calibration error (with what a perfectly calibrated model with the same
confidences would show on these faces: ``ece_floor``, its mean, and ``ece_floor_95``, its 95th
percentile) and negative log-likelihood of the faces found
(:func:`msfer.engine.calibration.calibration_metrics`).

The suite's **score** is the mean over its domains of each domain's mean overall accuracy, so
a domain counts once however many sets it has; a model's score and its paired difference from
the first model get bootstrap intervals from the same resamples.

Detection does not depend on the model: each photo is detected once and every model crops its
faces by its own rule.
"""
from __future__ import annotations

import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from ..data.suites import Suite, SuiteSet, set_samples
from ..data.transforms import resize_square
from ..engine.calibration import ECE_BINS, with_photo_temperature
from ..engine.decision import decisions as decide_rows
from ..engine.photos import classify_found, face_crops, face_yaws, largest_faces
from ..errors import MsferError
from ..files import atomic_output
from ..labels import EMOTIONS
from ..outputs import printable
from .recognizer import EmotionRecognizer

log = logging.getLogger(__name__)

PLOT_COLUMNS = 5  # panels in a row of the forest plot, more wrap onto the next
FIGURE_SAVE_OPTIONS = {"dpi": 110, "format": "png"}  # benchmark.png, from the library and the command alike
BOOTSTRAP = 1000


@dataclass
class ModelVariant:
    """A model as the benchmark runs it: ``name`` in the tables, a recognizer (weights, crop rule, TTA), and
    ``decisions``, the rules this model is scored under where they differ from the run's (empty: the run's)."""

    name: str
    recognizer: EmotionRecognizer
    weights: str = ""
    decisions: tuple[str | None, ...] = ()


def set_probabilities(entry: SuiteSet, samples: Sequence, models: Sequence[ModelVariant], batch_size: int = 32,
                      progress: bool = True) -> tuple[list[np.ndarray], np.ndarray, dict[int, str]]:
    """``N x 7`` probabilities of each model for the set's images (photos: the largest face; NaN rows where
    no face was found) under the model's crop calibration (before any photo temperature), the yaw of each
    photo's largest face (N degrees, :func:`msfer.faces.quality.yaw_degrees`; NaN for a crop or no face), and
    the images that could not be read (index -> the error naming the file), whose rows stay NaN: the caller
    leaves them out. Photos are detected once, by the first model's detector and settings."""
    probs = [np.full((len(samples), len(EMOTIONS)), np.nan) for _ in models]
    yaw = np.full(len(samples), np.nan)
    unreadable: dict[int, str] = {}
    detector = models[0].recognizer
    with tqdm(total=len(samples), desc=entry.name, unit="img", disable=not progress) as bar:
        for start in range(0, len(samples), batch_size):
            rows, arrays = [], []
            for index in range(start, min(start + batch_size, len(samples))):
                try:  # one bad file is left out with its reason; the run goes on
                    arrays.append(np.asarray(samples[index].load()))
                    rows.append(index)
                except MsferError as error:
                    unreadable[index] = str(error)
            bar.update(min(batch_size, len(samples) - start))
            if not rows:
                continue
            faces = largest_faces(arrays, detector.detect) if entry.mode == "photos" else None
            if faces is not None:
                yaw[np.asarray(rows)] = face_yaws(faces)
            for k, model in enumerate(models):
                recognizer, size = model.recognizer, model.recognizer.spec.input_size
                batch = np.asarray(rows)
                if faces is None:
                    same = shared_classifier(models, k)  # a crop is classified whole: the crop rule plays no part
                    if same is not None:
                        probs[k][batch] = probs[same][batch]
                        continue
                    crops = [resize_square(a, size) for a in arrays]
                else:  # the loop of msfer evaluate --detect-faces, on the faces found once
                    crops = face_crops(arrays, faces, recognizer.crop_rule, size)
                probs[k][batch] = classify_found(crops, lambda c, r=recognizer: r.classify_crops(list(c))[0])
    return probs, yaw, unreadable


def shared_classifier(models: Sequence[ModelVariant], k: int) -> int | None:
    """The first model before ``k`` that runs the same classifier with the same TTA (None: there is none)."""
    for j in range(k):
        if (models[j].recognizer.classifier is models[k].recognizer.classifier
                and models[j].recognizer.tta == models[k].recognizer.tta):
            return j
    return None


def bootstrap_indices(labels: np.ndarray, resamples: int = BOOTSTRAP, seed: int | Sequence[int] = 0) -> np.ndarray:
    """``resamples x N`` indices into ``labels`` (N class indices), drawn with replacement **within each class**
    (stratified), so every resample has the set's classes and counts and the mean class accuracy of every
    resample is over the same classes. Seeded: every model of a run gets the same resamples."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    indices = np.empty((resamples, len(labels)), dtype=np.int64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        indices[:, members] = members[rng.integers(0, len(members), size=(resamples, len(members)))]
    return indices


def accuracy_replicates(correct: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Overall and mean class accuracy of each bootstrap resample (``indices``: B x N), each of shape B.

    Mean class accuracy is over the classes present in the resample, as
    :func:`msfer.engine.metrics.compute_metrics` computes it on the whole set.
    """
    hit, truth = correct[indices], labels[indices]
    overall = hit.mean(axis=1)
    recalls = np.full((len(indices), len(EMOTIONS)), np.nan)
    for k in range(len(EMOTIONS)):
        members = truth == k
        count = members.sum(axis=1)
        recalls[:, k] = np.where(count > 0, (hit & members).sum(axis=1) / np.maximum(count, 1), np.nan)
    return overall, np.nanmean(recalls, axis=1)


def interval(replicates: np.ndarray) -> list[float]:
    """The 95% percentile interval of bootstrap replicates."""
    return [float(np.percentile(replicates, 2.5)), float(np.percentile(replicates, 97.5))]


def row_metrics(labels: np.ndarray, probs: np.ndarray, predicted: np.ndarray, indices: np.ndarray) -> dict:
    """One row's figures: ``predicted`` are class indices (``len(EMOTIONS)`` where no face was found)."""
    from ..engine.calibration import calibration_metrics
    from ..engine.metrics import compute_metrics

    correct = predicted == labels
    found = ~np.isnan(probs).any(axis=1)
    overall, mean_class = accuracy_replicates(correct, labels, indices)
    scores = compute_metrics(labels, predicted, (*EMOTIONS, "no_face"))
    matrix = np.asarray(scores["confusion_matrix"])
    calibration = calibration_metrics(probs[found], labels[found]) if found.any() else {}
    return {
        "n": int(len(labels)),
        "overall_accuracy": scores["overall_accuracy"],
        "overall_accuracy_ci": interval(overall),
        "mean_class_accuracy": scores["mean_class_accuracy"],
        "mean_class_accuracy_ci": interval(mean_class),
        "missed": int((~found).sum()),
        "ece": calibration.get("ece"),
        "ece_floor": calibration.get("ece_floor"),
        "ece_floor_95": calibration.get("ece_floor_95"),
        "nll": calibration.get("nll"),
        "recall": {name: scores["per_class"][name]["recall"] if scores["per_class"][name]["support"] else None
                   for name in EMOTIONS},  # None: no image of that class in the set
        "confusion_matrix": matrix[: len(EMOTIONS)].tolist(),  # 7 rows (truth) x 8 columns (the 8th: no face)
        "_replicates": (overall, mean_class),
    }


def group_accuracy(ids: Sequence[str], correct: np.ndarray, pattern: str) -> dict[str, dict]:
    """``{group: {"n", "overall_accuracy"}}``, the group of an image being the first group of ``pattern`` searched in
    its file name (``"(other)"`` where it does not match), in sorted order."""
    expression = re.compile(pattern)
    names = []
    for sample_id in ids:
        match = expression.search(str(sample_id).rsplit("/", 1)[-1])
        names.append(match.group(1) if match else "(other)")
    names = np.asarray(names)
    return {group: {"n": int((names == group).sum()), "overall_accuracy": float(correct[names == group].mean())}
            for group in sorted(set(names.tolist()))}


def suite_score(suite: Suite, values: dict[str, np.ndarray | float]) -> np.ndarray | float:
    """The mean over the suite's domains of each domain's mean of ``values[set name]`` (scalars or replicates)."""
    per_domain = []
    for domain in suite.domains:
        members = [values[s.name] for s in suite.sets if s.domain == domain]
        per_domain.append(sum(members) / len(members))
    return sum(per_domain) / len(per_domain)


def run_benchmark(suite: Suite, models: Sequence[ModelVariant], decisions: Sequence[str | None] = (None,),
                  batch_size: int = 32, seed: int = 0, progress: bool = True) -> dict:
    """Score every model on every set of ``suite`` under each of ``decisions`` (None: each model's own rule; a
    model's own ``decisions`` replace them for that model). A model scored under its own rule alone is named
    by its name in the rows, else ``"NAME RULE"``.

    Returns ``{"suite", "models", "bootstrap", "rows", "confusion_axes", "scores"}`` (see
    :func:`format_markdown` for what they hold)
    and, under ``"predictions"``, per set: ``ids``, ``labels``, ``yaw``, each model's ``probs`` and ``reported``
    probabilities (see :func:`save_predictions`) and each row's per-image ``correct`` (booleans, by the row's model
    label).
    """
    if not models:
        raise MsferError("no model to benchmark")
    variants, labels = [], []
    for k, model in enumerate(models):
        rules = list(model.decisions or decisions)
        for rule in dict.fromkeys(model.recognizer.check_decision(rule) for rule in rules):  # own = a named one
            variants.append((k, model, rule))
            labels.append(model.name if rules == [None] else f"{model.name} {rule}")  # own rule alone: the name
    names = [model.name for model in models]  # probabilities are kept by model name, rows by label
    repeated = sorted({name for group in (labels, names) for name in group if group.count(name) > 1})
    if repeated:
        raise MsferError(f"two models are named {', '.join(map(repr, repeated))}: "
                         "name each one (--weights NAME=PATH)")
    rows, predictions, replicates = [], {}, {label: {"overall": {}, "mean_class": {}} for label in labels}
    # every set's files first: a bad set is an error before any scoring
    samples_of = {entry.name: set_samples(entry, printable(suite.source)) for entry in suite.sets}
    unreadable_of: dict[str, list[str]] = {}
    for entry in suite.sets:
        probs, yaw, unreadable = set_probabilities(entry, samples_of[entry.name], models, batch_size, progress)
        for message in unreadable.values():
            log.warning("%s, set %s: left out: %s", printable(suite.source), entry.name, message)
        kept = [i for i in range(len(samples_of[entry.name])) if i not in unreadable]
        samples = samples_of[entry.name] = [samples_of[entry.name][i] for i in kept]
        unreadable_of[entry.name] = list(unreadable.values())
        probs, yaw = [p[kept] for p in probs], yaw[kept]
        if not samples:
            raise MsferError(f"{printable(suite.source)}, set {entry.name}: no image could be read")
        truth = np.array([s.label for s in samples], dtype=np.int64)
        # what a user is given: a face found in a photo with the model's photo temperature (no decision changes)
        reported = [with_photo_temperature(p, yaw, m.recognizer.photo_temperature) if entry.mode == "photos" else p
                    for m, p in zip(models, probs)]
        predictions[entry.name] = {"ids": [s.id for s in samples], "labels": truth, "yaw": yaw,
                                   "probs": {m.name: p for m, p in zip(models, probs)},
                                   "reported": {m.name: p for m, p in zip(models, reported)}}
        # seeded by the set's name: adding or moving another set changes no interval of this one
        indices = bootstrap_indices(truth, seed=[seed, zlib.crc32(entry.name.encode())])
        for (k, model, rule), label in zip(variants, labels):
            offsets = model.recognizer.classifier.balanced_offsets if rule == "balanced" else None
            predicted = decide_rows(probs[k], offsets, rule)  # NO_FACE where no face was found
            predictions[entry.name].setdefault("correct", {})[label] = predicted == truth
            row = row_metrics(truth, reported[k], predicted, indices)
            overall, mean_class = row.pop("_replicates")
            if entry.groups:
                row["groups"] = group_accuracy(predictions[entry.name]["ids"], predicted == truth, entry.groups)
                if list(row["groups"]) == ["(other)"] and k == 0 and rule == variants[0][2]:
                    log.warning("set %s: groups %r matches no file name (e.g. %s): every image is in '(other)'",
                                entry.name, entry.groups, str(predictions[entry.name]["ids"][0]).rsplit("/", 1)[-1])
            replicates[label]["overall"][entry.name] = overall
            replicates[label]["mean_class"][entry.name] = mean_class
            rows.append({"set": entry.name, "domain": entry.domain, "mode": entry.mode, "model": label,
                         "decision": rule, **row})
    scores = _scores(suite, rows, labels, replicates)
    return {
        "suite": {"name": suite.name, "file": suite.source, "description": suite.description,
                  "domains": suite.domains,
                  "sets": [{"name": s.name, "domain": s.domain, "format": s.format, "root": str(s.root),
                            "split": s.split, "mode": s.mode, "n": len(samples_of[s.name]),
                            "unreadable": unreadable_of[s.name]} for s in suite.sets]},
        "models": [{"name": label, "weights": model.weights, "crop_rule": model.recognizer.crop_rule.to_dict(),
                    "decision": rule, "tta": model.recognizer.tta}
                   for (_, model, rule), label in zip(variants, labels)],
        "bootstrap": {"resamples": BOOTSTRAP, "seed": seed, "interval": "95% percentile",
                      "resampling": "with replacement within each class, seeded by [seed, crc32(set name)]"},
        "rows": rows,
        # a row's confusion_matrix: one row per true class, one column per decided class and one for no face
        "confusion_axes": {"rows": list(EMOTIONS), "columns": [*EMOTIONS, "no face"]},
        "scores": scores,
        "predictions": predictions,
    }


def _scores(suite: Suite, rows: list[dict], labels: list[str], replicates: dict) -> list[dict]:
    """Each model's suite score (overall and mean class) with intervals and the paired difference from the first."""
    if not suite.domains:
        return []
    point = {label: {kind: {} for kind in ("overall", "mean_class")} for label in labels}
    for row in rows:
        point[row["model"]]["overall"][row["set"]] = row["overall_accuracy"]
        point[row["model"]]["mean_class"][row["set"]] = row["mean_class_accuracy"]
    reference = labels[0]
    scores = []
    for label in labels:
        entry = {"model": label}
        for kind in ("overall", "mean_class"):
            value = suite_score(suite, point[label][kind])
            spread = suite_score(suite, replicates[label][kind])
            entry[f"score_{kind}"] = float(value)
            entry[f"score_{kind}_ci"] = interval(spread)
            if label != reference:
                difference = spread - suite_score(suite, replicates[reference][kind])
                entry[f"difference_{kind}"] = float(value - suite_score(suite, point[reference][kind]))
                entry[f"difference_{kind}_ci"] = interval(difference)
        scores.append(entry)
    return scores


def _percent(value: float | None, ci: Iterable[float] | None = None) -> str:
    if value is None:
        return "-"
    text = f"{100 * value:.1f}"
    return text + (" [{:.1f}, {:.1f}]".format(*(100 * v for v in ci)) if ci is not None else "")


def format_markdown(result: dict) -> str:
    """The result as Markdown: one table of every (set, model) row, one of the suite's scores."""
    suite = result["suite"]
    lines = [f"## Suite `{suite['name']}`", ""]
    if suite["description"]:
        lines += [suite["description"], ""]
    lines += ["| model | weights | crop rule | decision | TTA |", "|---|---|---|---|---|"]
    for model in result["models"]:
        rule = model["crop_rule"]
        lines.append(f"| {model['name']} | {model['weights'] or '-'} | {rule['method']} x{rule['scale']:g} | "
                     f"{model['decision']} | {'yes' if model['tta'] else 'no'} |")
    lines.append("")
    left_out = [(s["name"], len(s["unreadable"])) for s in suite["sets"] if s.get("unreadable")]
    if left_out:
        lines += ["Left out as unreadable (named in the JSON): " + ", ".join(f"{n} in {name}" for name, n in left_out)
                  + ".", ""]
    lines += ["| set | domain | model | n | overall % [95% CI] | mean class % [95% CI] | missed | "
              "ECE (if calibrated: mean, 95%) | NLL |", "|---|---|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        calibrated = ", ".join("-" if row.get(key) is None else f"{row[key]:.3f}"
                               for key in ("ece_floor", "ece_floor_95"))  # records before these keys lack them
        ece = "-" if row["ece"] is None else f"{row['ece']:.3f} ({calibrated})"
        nll = "-" if row["nll"] is None else f"{row['nll']:.3f}"
        lines.append(f"| {row['set']} | {row['domain'] or '(outside the score)'} | {row['model']} | {row['n']} | "
                     f"{_percent(row['overall_accuracy'], row['overall_accuracy_ci'])} | "
                     f"{_percent(row['mean_class_accuracy'], row['mean_class_accuracy_ci'])} | {row['missed']} | "
                     f"{ece} | {nll} |")
    lines += ["", "Intervals: bootstrap over each set's images, resampled within each class (a class a model reads "
                  "all right or all wrong adds no width). Missed: photos without a detected face, counted wrong. "
                  f"ECE ({ECE_BINS} bins) and NLL: over the faces found; in brackets, the ECE a perfectly calibrated "
                  "model with the same confidences shows on as many faces, its mean and 95th percentile: an ECE above "
                  "the latter is evidence of miscalibration, one below it is not."]
    grouped = [row for row in result["rows"] if row.get("groups")]
    if grouped:
        models = list(dict.fromkeys(row["model"] for row in grouped))
        lines += ["", "Overall accuracy % per group (a set's `groups`: a performer, a film):", "",
                  "| set | group | n | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
        for set_name in dict.fromkeys(row["set"] for row in grouped):
            of_set = {row["model"]: row["groups"] for row in grouped if row["set"] == set_name}
            for group, figures in next(iter(of_set.values())).items():
                cells = [_percent(of_set[m][group]["overall_accuracy"]) if m in of_set else "-" for m in models]
                lines.append(f"| {set_name} | {group} | {figures['n']} | " + " | ".join(cells) + " |")
    if not result["scores"]:
        lines += ["", "No suite score: no set of this suite has a domain (every one is `domain: null`)."]
    else:
        first = result["scores"][0]["model"]
        lines += ["", f"Suite score: the mean over the domains ({', '.join(suite['domains'])}) of each domain's "
                      f"mean accuracy; differences are paired, against {first}.", "",
                  "| model | score, overall % | difference | score, mean class % | difference |",
                  "|---|---|---|---|---|"]
        for score in result["scores"]:
            cells = [score["model"]]
            for kind in ("overall", "mean_class"):
                cells.append(_percent(score[f"score_{kind}"], score[f"score_{kind}_ci"]))
                difference = score.get(f"difference_{kind}")
                cells.append("-" if difference is None else
                             "{:+.1f} [{:+.1f}, {:+.1f}]".format(100 * difference,
                                                                 *(100 * v for v in score[f"difference_{kind}_ci"])))
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def benchmark_figure(result: dict):
    """A forest plot of a benchmark as a :class:`matplotlib.figure.Figure`: a panel per set and, where the suite has
    a score, one for it; each model's overall accuracy (%) as a dot with its 95% bootstrap interval as a bar, the
    first model's figure as a dashed line to read the others against. Takes :func:`run_benchmark`'s result or a
    ``benchmark.json`` read back; a figure without a value (``None``) is left out. Built without pyplot, so a
    caller's matplotlib backend and open figures are left as they are.

    Raises :class:`MsferError` when the result has no row."""
    import matplotlib
    from matplotlib.figure import Figure

    rows = result["rows"]
    if not rows:
        raise MsferError("the benchmark has no row to draw")
    models = list(dict.fromkeys(row["model"] for row in rows))
    panels = []
    for name in dict.fromkeys(row["set"] for row in rows):
        of_set = [row for row in rows if row["set"] == name]
        panels.append((f"{name}\n({of_set[0]['domain'] or 'outside the score'}, n={of_set[0]['n']})",
                       {row["model"]: (row["overall_accuracy"], row["overall_accuracy_ci"]) for row in of_set}))
    if result.get("scores"):
        panels.append(("suite score\n(mean over domains)",
                       {s["model"]: (s["score_overall"], s["score_overall_ci"]) for s in result["scores"]}))
    columns = min(len(panels), PLOT_COLUMNS)
    lines = -(-len(panels) // columns)
    figure = Figure(figsize=(2.6 * columns + 1.6, lines * (0.45 * len(models) + 1.3) + 0.5))
    grid = figure.subplots(lines, columns, sharey=True, squeeze=False)
    for unused in grid.flat[len(panels):]:
        unused.set_visible(False)
    axes = list(grid.flat[:len(panels)])
    palette = "tab10" if len(models) <= 10 else "tab20"  # a colour of its own for up to 20 models
    colours = matplotlib.colormaps[palette].colors
    for panel, (title, figures) in zip(axes, panels):
        for k, model in enumerate(models):
            value, ci = figures.get(model, (None, None))
            if value is None or ci is None or None in ci:
                continue
            low, high = ci
            panel.errorbar(100 * value, k, xerr=[[100 * max(value - low, 0)], [100 * max(high - value, 0)]],
                           fmt="o", color=colours[k % len(colours)], capsize=3)
        if figures.get(models[0], (None,))[0] is not None:
            panel.axvline(100 * figures[models[0]][0], color="grey", linestyle="--", linewidth=0.8)
        low, high = panel.get_xlim()
        panel.set_xlim(max(low, 0), min(high, 100))
        panel.set_title(title, fontsize=9)
        panel.set_xlabel("overall accuracy (%)", fontsize=8)
        panel.grid(axis="x", alpha=0.3)
    grid[0][0].set_yticks(range(len(models)), models)
    grid[0][0].set_ylim(len(models) - 0.5, -0.5)  # the first model on top
    figure.suptitle(f"suite {result['suite']['name']}: overall accuracy with 95% bootstrap intervals", fontsize=10)
    figure.text(0.5, 0.005, f"Dashed: {models[0]}, the reference of the paired differences. Each panel has a scale of "
                "its own; an interval of no width is a set too small or too easy to vary.", ha="center",
                va="bottom", fontsize=7, color="dimgrey")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    return figure


def plot_benchmark(result: dict, path: str | Path) -> None:
    """Write :func:`benchmark_figure` of ``result`` to ``path`` as a PNG, whole or not at all.

    Raises :class:`MsferError` when the result has no row or ``path`` cannot be written."""
    figure = benchmark_figure(result)
    with atomic_output(Path(path)) as temporary:
        figure.savefig(temporary, **FIGURE_SAVE_OPTIONS)


def save_predictions(result: dict, path: Path) -> None:
    """Every set's ids, labels, yaws and each model's probabilities in one ``.npz``: ``<set>/ids``, ``<set>/labels``,
    ``<set>/yaw`` (degrees; NaN for a crop or no face), ``<set>/probs/<model>`` (what the decision rules read:
    before any photo temperature) and ``<set>/reported/<model>`` (what a user is given: with the model's photo
    temperature on photos; the same where it has none); NaN rows: no face. For analyses that reuse them
    (calibration, decision rules, ensembles)."""
    arrays = {}
    for name, entry in result["predictions"].items():
        arrays[f"{name}/ids"] = np.asarray(entry["ids"])
        arrays[f"{name}/labels"] = entry["labels"]
        arrays[f"{name}/yaw"] = entry["yaw"]
        for model, probs in entry["probs"].items():
            arrays[f"{name}/probs/{model}"] = probs
            arrays[f"{name}/reported/{model}"] = entry["reported"][model]
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
