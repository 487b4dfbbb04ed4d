"""Bundle a trained run as msfer's model, judged on a suite of validation sets: the library behind ``msfer bundle``.

    msfer bundle runs/v3 configs/benchmarks/dev.yaml --data-root DATA --out runs/v3/bundle

From the run's ``best.pt`` (or any checkpoint file, region network or plain classifier; one whose
class-prior adjustment an earlier msfer folded into its bias has it taken out first):

1. **Calibration** (:func:`msfer.engine.calibration.choose_calibration`: temperature or vector
   scaling, chosen and fitted on one stratified half of a crops set of the suite, ``calibrate_on``,
   FER2013 public_test in the development suite, and reported on the other half).
2. **The balanced rule's strength** tau (:func:`msfer.engine.prior.choose_tau`) on the calibrated
   probabilities of the same half, against the class prior those probabilities carry: their mean
   over the set (after vector scaling, the fitting half's class frequencies, whatever mix the run drew).
3. **Export** as ``msfer_fer2013.pt``, in half precision if that loses nothing measurable on that
   set (every accuracy within 0.1 point, with and without flip TTA, under both decision rules).
4. **The suite** (:func:`msfer.inference.benchmark.run_benchmark`): the candidate under its default
   decision rule (``decision``; ``"suite"``: under both rules) and every compared model under its own,
   on every set, in one run.
5. **The default decision rule**, with ``decision="suite"`` (:func:`choose_decision`): chosen on the
   whole suite, not on the calibration set: the rule with the higher suite score, balanced only where
   it also raises mean class accuracy on the suite's photo sets.
6. **The photo temperature** (:func:`msfer.engine.calibration.photo_temperature_study`): fitted on the faces
   the candidate found in the suite's photo sets, kept when it lowers their cross-fitted negative log-likelihood
   (:func:`photo_temperature_pays`); it changes no decision, so the verdict is the same with or without it.
7. **The verdict** (:func:`suite_verdict`): ``better`` when the candidate's suite score (overall
   accuracy) under its default rule is higher than the first compared model's, and on no set in the
   score is it worse than any compared model by more than one standard error of their paired difference.

The record ``msfer_fer2013.json`` holds every figure: calibration, decision rule, the calibration
set's figures per precision, ``fixed_sample`` (500 images of FER2013 public_test, drawn with a fixed
seed, whose accuracy the tests re-check on the shipped file; when that is the calibration set), the
suite's rows and scores, the verdict, ``replaced`` (None where ``out`` held no model; else the
replaced model's ``source`` and whether the replacement was ``forced``) and the training config.

Everything is written and measured in a temporary folder inside ``out`` and moved into place at the
end; where ``out`` already holds a model, it is replaced only when the verdict is ``better`` (or with
``force``), so a refused or failed bundle leaves ``out`` as it was.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..data.suites import Suite, SuiteSet, set_samples
from ..engine.calibration import (
    PHOTO_TEMPERATURE_KEYS,
    apply,
    calibrated_checkpoint,
    calibration_metrics,
    choose_calibration,
    photo_temperature_study,
)
from ..engine.datasets import FaceDataset
from ..engine.decision import DECISION_RULES, decide
from ..engine.evaluate import predict_split, split_metrics
from ..engine.metrics import compute_metrics
from ..engine.prior import choose_tau, stratified_halves, unfold_adjustment
from ..errors import MsferError
from ..labels import EMOTIONS
from ..model.checkpoint import (
    export_weights,
    file_model_name,
    load_checkpoint,
    load_model,
    resolve_checkpoint,
    save_checkpoint,
)
from ..outputs import printable
from ..weights import BUNDLED_MODEL, BUNDLED_RECORD, fixed_sample
from .benchmark import ModelVariant, run_benchmark
from .recognizer import EmotionRecognizer

__all__ = ["BundleRefused", "bundle", "choose_decision", "decision_line", "default_name", "found_photo_faces",
           "photo_temperature_line", "photo_temperature_pays", "suite_calibration", "suite_verdict", "verdict_table"]

CANDIDATE = "candidate"
HEADLINE = ("n", "overall_accuracy", "mean_class_accuracy")
JUDGEMENT = ("the candidate, under its default decision rule, has a higher suite score (overall accuracy) than the "
             "first compared model, and on no set in the score is it worse than any compared model (each under "
             "its own default rule) by more than one standard error of their paired difference")


class BundleRefused(MsferError):
    """The candidate was measured but not moved into a folder that holds a model: its verdict is not ``better``.
    ``record`` is what would have been written."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = record


@dataclass
class _Inputs:
    best: Path
    checkpoint: dict
    calibration_set: SuiteSet
    samples: list
    annotations: dict | None
    compared: list[ModelVariant]


def _predict(weights: Path, samples: list, annotations: dict | None, tta: bool) -> tuple[dict, tuple[str, ...]]:
    model, _ = load_model(weights)
    dataset = FaceDataset(samples, model.input_size, model.region_names, annotations)
    predictions = predict_split(model, dataset, torch.device("cpu"), 256, tta=tta, num_workers=2)
    predictions["balanced_offsets"] = model.balanced_offsets.float().numpy()
    return predictions, model.region_names


def _summary(predictions: dict, region_names: tuple[str, ...], scored_regions: bool) -> dict:
    """Headline figures (decision rule argmax), both rules' accuracies and per-class recall, calibration."""
    metrics = split_metrics(predictions, region_names, score_regions=scored_regions,
                            balanced_offsets=predictions["balanced_offsets"])
    balanced = compute_metrics(predictions["y_true"],
                               decide(predictions["probs"], predictions["balanced_offsets"], "balanced"), EMOTIONS)
    return {**{k: metrics[k] for k in (*HEADLINE, "decision_rules", "calibration", "region_detection",
                                        "region_detection_stages", "fallback_rate") if k in metrics},
            "recall": {name: scores["recall"] for name, scores in metrics["per_class"].items()},
            "recall_balanced": {name: s["recall"] for name, s in balanced["per_class"].items()}}


def _measure(weights: Path, samples: list, annotations: dict | None, tta: bool) -> dict:
    return _summary(*_predict(weights, samples, annotations, tta), scored_regions=annotations is not None)


def _both_tta(weights: Path, name: str, samples: list, annotations: dict | None, without: dict | None = None) -> dict:
    """The set's figures without and with flip TTA (``without``: the former, when already measured)."""
    return {name: without or _measure(weights, samples, annotations, tta=False),
            f"{name}_tta": _measure(weights, samples, annotations, tta=True)}


def make_candidate(inputs: _Inputs, work: Path, decision: str) -> tuple[Path, dict]:
    """Steps 1-3 of the module docstring: calibrate ``inputs.checkpoint`` on the calibration set, choose its balanced
    rule, export ``work/msfer_fer2013.pt`` with ``decision`` as its default rule (``"suite"``: argmax until
    :func:`choose_decision` has read the suite); returns that file and the record so far. Every other file it writes
    is a temporary one in ``work``."""
    name, samples, annotations = inputs.calibration_set.name, inputs.samples, inputs.annotations
    candidate = work / BUNDLED_MODEL.name
    as_trained = save_checkpoint(inputs.checkpoint, work / "as_trained.pt")
    # epoch: the bundled weights' own (a last.pt's best_epoch is the run's best so far, not its own)
    record = {"source": _shown(inputs.best), "epoch": inputs.checkpoint.get("epoch"),
              "best_epoch": inputs.checkpoint.get("best", {}).get("epoch"),
              "calibrated_on": name, "validation": {}}

    predictions, region_names = _predict(as_trained, samples, annotations, tta=False)
    calibration = choose_calibration(predictions["logits"], predictions["y_true"])
    calibrated = apply(predictions["logits"], np.array(calibration["scale"]), np.array(calibration["bias"]))
    # The prior the calibrated probabilities carry, not the one training drew; their mean over the set estimates it
    # (no label is used).
    rule = choose_tau(calibrated, predictions["y_true"], calibrated.mean(axis=0))
    record["calibration"] = calibration
    record["decision"] = {"default": decision, **rule}
    kept = {"method": calibration["method"], "scale": calibration["scale"], "bias": calibration["bias"],
            "criterion": calibration["criterion"], "balanced_tau": rule["tau"],
            "balanced_criterion": rule["criterion"], "decision": "argmax" if decision == "suite" else decision}
    source = save_checkpoint(calibrated_checkpoint(inputs.checkpoint, calibration["scale"], calibration["bias"],
                                                   rule["offsets"], kept), work / "float32.pt")
    record["validation"]["as_trained"] = _both_tta(
        as_trained, name, samples, annotations, _summary(predictions, region_names, annotations is not None))
    as_trained.unlink()

    half = export_weights(source, work / "float16.pt", half=True)
    for precision, weights in (("float32", source), ("float16", half)):
        record["validation"][precision] = _both_tta(weights, name, samples, annotations)
    fp32, fp16 = record["validation"]["float32"], record["validation"]["float16"]
    lossless = all(abs(fp32[k]["decision_rules"][r][m] - fp16[k]["decision_rules"][r][m]) <= 0.001
                   for k in fp32 for r in DECISION_RULES for m in ("overall_accuracy", "mean_class_accuracy"))
    if lossless:
        half.replace(candidate)
    else:
        half.unlink()
        export_weights(source, candidate, half=False)
    source.unlink()
    record["precision"] = "float16" if lossless else "float32"
    bundled, _ = _predict(candidate, samples, annotations, tta=False)
    _, held_out = stratified_halves(bundled["y_true"])
    record["calibration"]["held_out"]["bundled"] = calibration_metrics(bundled["probs"][held_out],
                                                                       bundled["y_true"][held_out])
    sample = fixed_sample(samples) if inputs.calibration_set.format == "fer2013" else []
    if sample:  # FER2013 public_test's, when that is the calibration set
        record["fixed_sample"] = {"split": "public_test", "size": len(sample),
                                  **_measure(candidate, sample, None, tta=False)}
    return candidate, record


def choose_decision(result: dict, name: str) -> tuple[str, dict]:
    """The default decision rule of the model ``name``, read on a :func:`~msfer.inference.benchmark.run_benchmark`
    result that scored it under both rules (rows ``"NAME argmax"`` and ``"NAME balanced"``): the rule with the higher
    suite score (overall accuracy, the score the verdict judges; mean class accuracy breaks a tie), balanced only where
    it also raises the mean class accuracy of the suite's photo sets in the score (where the suite has none, its mean
    class score). Returns the rule and, per rule, ``score_overall``, ``score_mean_class`` and ``photos_mean_class``
    (fractions; None without photo sets)."""
    scores = {entry["model"]: entry for entry in result["scores"]}
    figures = {}
    for rule in DECISION_RULES:
        label = f"{name} {rule}"
        if label not in scores:
            raise MsferError(f"the suite scored no model {label!r}: choosing a decision rule needs both rules' rows")
        photos = [row["mean_class_accuracy"] for row in result["rows"]
                  if row["model"] == label and row["mode"] == "photos" and row["domain"] is not None]
        figures[rule] = {"score_overall": scores[label]["score_overall"],
                         "score_mean_class": scores[label]["score_mean_class"],
                         "photos_mean_class": float(np.mean(photos)) if photos else None}
    argmax, balanced = figures["argmax"], figures["balanced"]
    class_gain = ((balanced["photos_mean_class"] > argmax["photos_mean_class"]) if argmax["photos_mean_class"]
                  is not None else balanced["score_mean_class"] > argmax["score_mean_class"])
    higher = ((balanced["score_overall"], balanced["score_mean_class"])
              > (argmax["score_overall"], argmax["score_mean_class"]))
    return ("balanced" if class_gain and higher else "argmax"), figures


def suite_calibration(result: dict, model: str, calibrated_on: str, photos: dict | None = None) -> dict:
    """``{set: {"domain", "n", "missed", "ece", "ece_floor_95", "overall_accuracy"}}``: how well the probabilities of
    ``model`` (a model's name in the :func:`~msfer.inference.benchmark.run_benchmark` ``result``, under one rule)
    hold on each set of the suite's score but ``calibrated_on`` (half of it fitted the calibration; its other half's
    figures are the record's ``calibration.held_out``) and one without a face found (no ECE). Fractions; the ECE
    and ``ece_floor_95`` (:func:`msfer.engine.calibration.calibrated_ece`'s 95th percentile) are on the faces
    found. With ``photos`` (:func:`msfer.engine.calibration.photo_temperature_study`'s), a photo set it was fitted
    on has the cross-fitted figures with the photo temperature (``"photo_temperature": "cross-fitted"``)."""
    keys = ("domain", "n", "missed", "ece", "ece_floor_95", "overall_accuracy")
    figures = {row["set"]: {key: row[key] for key in keys} for row in result["rows"]
               if row["model"] == model and row["domain"] is not None and row["set"] != calibrated_on
               and row["ece"] is not None}
    for name, held_out in (photos or {}).get("held_out", {}).items():
        if name in figures:
            figures[name].update(ece=held_out["with"]["ece"], ece_floor_95=held_out["with"]["ece_floor_95"],
                                 photo_temperature="cross-fitted")
    return figures


def found_photo_faces(result: dict, model: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{set: (probs F x 7, yaw F degrees, labels F)}`` of the faces ``model`` (a model's name, not a row's label)
    found in each photo set of the suite's score, from a :func:`~msfer.inference.benchmark.run_benchmark` result;
    sets where no face was found are left out."""
    sets = {}
    for entry in result["suite"]["sets"]:
        if entry["mode"] != "photos" or entry["domain"] is None:
            continue
        predictions = result["predictions"][entry["name"]]
        probs, yaw = predictions["probs"][model], predictions["yaw"]
        found = ~np.isnan(probs).any(axis=1) & ~np.isnan(yaw)
        if found.any():
            sets[entry["name"]] = (probs[found], yaw[found], predictions["labels"][found])
    return sets


def photo_temperature_pays(study: dict) -> bool:
    """Whether a photo temperature (:func:`msfer.engine.calibration.photo_temperature_study`) lowers the mean over its
    sets of the cross-fitted negative log-likelihood: a bundle keeps it only then."""
    nll = {when: float(np.mean([figures[when]["nll"] for figures in study["held_out"].values()]))
           for when in ("without", "with")}
    return nll["with"] < nll["without"]


def _finish_model(weights: Path, name: str, record: dict) -> None:
    """Write into the model file ``weights`` what only the whole bundle measured, so that the file says it wherever
    it is copied: its ``name``, and in its calibration record the default decision rule, the calibration set's
    name (``calibrated_on``) and figures on its held-out half, and those on each other suite set (``record``'s)."""
    checkpoint = load_checkpoint(weights)
    calibration = record["calibration"]
    checkpoint["name"] = name
    checkpoint["calibration"] = {**checkpoint["calibration"], "decision": record["decision"]["default"],
                                 "calibrated_on": record["calibrated_on"],
                                 "held_out": {"bundled": calibration["held_out"]["bundled"]},
                                 "suite": calibration["suite"]}
    if calibration.get("photos"):  # its parameters and cross-fitted ECE per set; the full figures are the record's
        photos = calibration["photos"]
        checkpoint["calibration"]["photos"] = {
            **{key: photos[key] for key in PHOTO_TEMPERATURE_KEYS},
            "held_out": {name: {when: {key: figures[when][key] for key in ("n", "ece", "ece_floor_95", "nll")}
                                for when in ("without", "with")} for name, figures in photos["held_out"].items()}}
    save_checkpoint(checkpoint, weights)


def default_name(run: str | os.PathLike, checkpoint: dict) -> str:
    """The name a bundle of ``run`` (its ``checkpoint``) gets unless given one: the checkpoint's own (a bundled
    model bundled again), else :func:`msfer.model.checkpoint.file_model_name`'s (``runs/v3`` and
    ``runs/v3/last.pt`` -> ``v3``)."""
    return str(checkpoint.get("name") or file_model_name(run))


def paired_standard_error(a: np.ndarray, b: np.ndarray) -> float:
    """The standard error of ``mean(a) - mean(b)`` for two models' per-image correctness (``N`` booleans each) on
    the same images: ``std(a - b, ddof=1) / sqrt(N)``; 0 for fewer than two images."""
    difference = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(difference.std(ddof=1) / np.sqrt(len(difference))) if len(difference) > 1 else 0.0


def suite_verdict(result: dict, candidate: str, compared: Sequence[str]) -> dict:
    """The bundling verdict on a :func:`~msfer.inference.benchmark.run_benchmark` result that scored ``candidate``
    and each of ``compared`` (names of its models, each under one decision rule): ``{"verdict": "better" | "not
    better", "why", "judged_by", "scores": {model: suite score}, "sets": [per set and compared model: "candidate",
    "compared", "difference", "standard_error", "within"]}``, accuracies as fractions (see :data:`JUDGEMENT`)."""
    if not compared:
        raise MsferError("a verdict needs a model to compare the candidate with")
    scores = {entry["model"]: entry["score_overall"] for entry in result["scores"]}
    if not scores:
        raise MsferError(f"the suite {result['suite']['name']!r} has no set with a domain: it gives no score to judge")
    checks = []
    for entry in result["suite"]["sets"]:
        if entry["domain"] is None:
            continue
        correct = result["predictions"][entry["name"]]["correct"]
        for other in compared:
            mine, theirs = correct[candidate], correct[other]
            difference = float(mine.mean() - theirs.mean())
            error = paired_standard_error(mine, theirs)
            checks.append({"set": entry["name"], "against": other, "candidate": float(mine.mean()),
                           "compared": float(theirs.mean()), "difference": difference, "standard_error": error,
                           "within": bool(difference >= -error)})
    first = compared[0]
    reasons = []
    if not scores[candidate] > scores[first]:
        reasons.append(f"suite score {100 * scores[candidate]:.1f}% is not above {first}'s "
                       f"{100 * scores[first]:.1f}%")
    reasons += [f"{c['set']}: {100 * c['difference']:+.1f} points against {c['against']}, beyond one standard error "
                f"({100 * c['standard_error']:.1f})" for c in checks if not c["within"]]
    why = "; ".join(reasons) or (f"suite score {100 * scores[candidate]:.1f}% against {first}'s "
                                 f"{100 * scores[first]:.1f}%, and within one standard error or better on every set")
    return {"verdict": "not better" if reasons else "better", "why": why, "judged_by": JUDGEMENT,
            "scores": {name: scores[name] for name in (candidate, *compared)}, "sets": checks}


def decision_line(record: dict) -> str:
    """How the record's default decision rule was chosen, on one line (percent)."""
    decision = record["decision"]
    if decision.get("chosen_on") != "suite":
        return f"default decision rule {decision['default']} (given)"
    figures = []
    for rule, f in decision["suite"].items():
        photos = f["photos_mean_class"]
        photos = "" if photos is None else f", photo sets' mean class {100 * photos:.1f}"
        figures.append(f"{rule}: suite score {100 * f['score_overall']:.1f} (mean class "
                       f"{100 * f['score_mean_class']:.1f}{photos})")
    return f"default decision rule chosen on the suite: {'; '.join(figures)} -> {decision['default']}"


def photo_temperature_line(record: dict) -> str | None:
    """The record's photo temperature on one line: its law, and per set the ECE and NLL of the faces found without
    and with it (cross-fitted); kept or declined. None where the suite had no photo set."""
    calibration = record["calibration"]
    study = calibration.get("photos") or calibration.get("photos_declined")
    if study is None:
        return None
    verdict = "kept" if calibration.get("photos") else "declined"
    if "held_out" not in study:
        return f"photo temperature: {verdict} ({study['why']})"
    figures = "; ".join(f"{name} ECE {sets['without']['ece']:.3f} -> {sets['with']['ece']:.3f}, NLL "
                        f"{sets['without']['nll']:.3f} -> {sets['with']['nll']:.3f}"
                        for name, sets in study["held_out"].items())
    return (f"photo temperature T = {study['temperature']:.3f} x exp({study['per_degree']:.4f} x min(|yaw|, "
            f"{study['yaw_limit']:g} degrees)); on faces it was not fitted on: {figures} -> {verdict}")


def verdict_table(record: dict) -> str:
    """The record's suite comparison as a Markdown table (overall accuracy %, difference and its standard error)
    and the verdict line."""
    verdict = record["verdict"]
    lines = ["| set | compared with | candidate % | compared % | difference [1 SE] |", "|---|---|---|---|---|"]
    for check in verdict["sets"]:
        lines.append(f"| {check['set']} | {check['against']} | {100 * check['candidate']:.1f} | "
                     f"{100 * check['compared']:.1f} | {100 * check['difference']:+.1f} "
                     f"[{100 * check['standard_error']:.1f}] |")
    (_, mine), (first, theirs) = list(verdict["scores"].items())[:2]
    lines.append(f"| suite score | {first} | {100 * mine:.1f} | {100 * theirs:.1f} | {100 * (mine - theirs):+.1f} |")
    lines.append(f"verdict: {verdict['verdict']} ({verdict['why']})")
    return "\n".join(lines)


def _shown(path: Path | str) -> str:
    """``path`` as a shipped record shows it, with no bundling machine's folders: relative to the working folder when
    inside it, else its last two parts (``/home/me/runs/v3/last.pt`` -> ``v3/last.pt``)."""
    try:
        return Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        path = Path(path)
        return Path(*path.relative_to(path.anchor).parts[-2:], ".").as_posix()


def _portable(value):
    """``value`` (a config: dicts, lists, scalars) with every absolute path in it shown by :func:`_shown`."""
    if isinstance(value, dict):
        return {key: _portable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_portable(item) for item in value]
    if isinstance(value, str) and (value.startswith("~") or Path(value).is_absolute()):
        return _shown(Path(value).expanduser())
    return value


def _read_inputs(run: Path, suite: Suite, calibrate_on: str | None, compare: Sequence[tuple[str, Path]],
                 annotations: Path | None, detector) -> _Inputs:
    """Every input, read and checked before the minutes of work start; :class:`MsferError` naming the file, folder
    or set of any that is missing, unreadable or unusable."""
    from ..regions.annotations import load_annotations

    if not suite.domains:
        raise MsferError(f"the suite {printable(suite.source)} has no set with a domain: it gives no score to judge by")
    crops = [entry for entry in suite.sets if entry.mode == "crops"]
    if calibrate_on is None:
        if not crops:
            raise MsferError(f"the suite {printable(suite.source)} has no crops set to calibrate on")
        calibration_set = crops[0]
    else:
        calibration_set = next((entry for entry in suite.sets if entry.name == calibrate_on), None)
        if calibration_set is None or calibration_set.mode != "crops":
            raise MsferError(f"calibrate on {calibrate_on!r}: name a crops set of {printable(suite.source)} "
                             f"({', '.join(entry.name for entry in crops) or 'it has none'})")
    # read here to refuse a bad set before the work starts; the benchmark reads them again and warns
    samples = {entry.name: set_samples(entry, printable(suite.source), warn=False) for entry in suite.sets}
    best = resolve_checkpoint(run, prefer="best.pt")
    # the model as trained: an earlier bundle's folded adjustment taken out, any calibration reset, so that the
    # calibration is fitted to (and later applied to) the raw logits
    checkpoint = calibrated_checkpoint(unfold_adjustment(load_checkpoint(best)), [1.0] * 7, [0.0] * 7, [0.0] * 7, {})
    checkpoint.pop("calibration")
    checkpoint["config"] = _portable(checkpoint["config"])  # it ships in the model file and its record
    if annotations and not checkpoint.get("region_names"):
        raise MsferError(f"annotations (--annotations) score a region detector, and {printable(best)} is a plain "
                         f"classifier ({checkpoint['config']['model'].get('name')}, no regions): leave them out")
    models = []
    for name, path in compare:
        if name in (CANDIDATE, *(f"{CANDIDATE} {rule}" for rule in DECISION_RULES)):
            raise MsferError(f"the compared model {printable(path)} is named {name!r}, a name of the candidate's "
                             "rows: name it otherwise (NAME=PATH)")
        if any(model.name == name for model in models):
            raise MsferError(f"two compared models are named {name!r}: name each one (NAME=PATH)")
        models.append(ModelVariant(name, EmotionRecognizer(path, device="cpu", detector=detector), _shown(path)))
    return _Inputs(best, checkpoint, calibration_set, samples[calibration_set.name],
                   load_annotations(annotations) if annotations else None, models)


def bundle(run: str | os.PathLike, suite: Suite, out: str | os.PathLike,
           compare: Sequence[tuple[str, str | os.PathLike]] | None = None, calibrate_on: str | None = None,
           decision: str = "suite", annotations: str | os.PathLike | None = None, force: bool = False,
           progress: bool = True, name: str | None = None) -> dict:
    """Bundle ``run`` (a run folder, whose ``best.pt`` is taken, or a checkpoint file) into ``out`` as the module
    docstring says, judged on ``suite`` against ``compare`` (``(name, weights)`` pairs; default: the bundled model).
    A model that ``out`` already holds is always compared first, as ``current``: a bundle never replaces a model it
    does not beat. ``name`` (default :func:`default_name`) is the model's name, which the file and its record carry
    and the service and reports show. Returns the record written beside the model (paths in it relative to the
    working folder when inside it).

    Raises :class:`MsferError` naming the file or set for a bad input, before any work; :class:`BundleRefused`
    (with the record) when ``out`` holds a model and the verdict is not ``better`` and not ``force``.
    """
    from ..faces.retinaface import RetinaFaceDetector

    if decision not in (*DECISION_RULES, "suite"):
        raise MsferError(f"decision {decision!r}: use one of {', '.join(DECISION_RULES)} or suite")
    out = Path(out)
    model_path, record_path = out / BUNDLED_MODEL.name, out / BUNDLED_RECORD.name
    if out.exists() and not out.is_dir():
        raise MsferError(f"the output folder {printable(out)} is a file: it must be a folder (made when missing)")
    replacing = model_path.exists() or record_path.exists()
    compare = list(compare or [])
    if model_path.is_file():  # the model a bundle would replace is always the first it must beat
        compare = [("current", model_path)] + [(n, p) for n, p in compare
                                                if Path(p).resolve() != model_path.resolve()]
    elif not compare:
        compare = [("bundled", BUNDLED_MODEL)]
    detector = RetinaFaceDetector()
    # loaded before anything is written: the model compared with may be the file this bundle replaces
    inputs = _read_inputs(Path(run), suite, calibrate_on, [(n, Path(p)) for n, p in compare],
                          Path(annotations) if annotations else None, detector)

    made = [folder for folder in (out, *out.parents) if not folder.exists()]  # leaf first
    try:
        out.mkdir(parents=True, exist_ok=True)
        work_folder = tempfile.TemporaryDirectory(dir=out, prefix=".bundling-")
    except OSError as error:
        _remove_empty(made)
        raise MsferError(f"cannot write into the output folder {printable(out)}: "
                         f"{error.strerror or error}") from None
    try:
        # measured where it is written, then moved into place only when allowed (the temporary folder and
        # everything in it go when this block ends, error or not)
        with work_folder as work:
            candidate, record = make_candidate(inputs, Path(work), decision)
            variant = ModelVariant(CANDIDATE, EmotionRecognizer(candidate, device="cpu", detector=detector),
                                   CANDIDATE, DECISION_RULES if decision == "suite" else ())
            result = run_benchmark(suite, [variant, *inputs.compared], progress=progress)
            judged = CANDIDATE
            if decision == "suite":
                chosen, figures = choose_decision(result, CANDIDATE)
                record["decision"].update(default=chosen, chosen_on="suite", suite=figures)
                judged = f"{CANDIDATE} {chosen}"
            record["name"] = name or default_name(run, inputs.checkpoint)
            photo_sets = found_photo_faces(result, CANDIDATE)
            if photo_sets:
                try:
                    study = photo_temperature_study(photo_sets)
                    record["calibration"]["photos" if photo_temperature_pays(study) else "photos_declined"] = study
                except MsferError as error:  # too few faces to fit it and say how it holds
                    record["calibration"]["photos_declined"] = {"why": str(error)}
            record["calibration"]["suite"] = suite_calibration(result, judged, record["calibrated_on"],
                                                               record["calibration"].get("photos"))
            _finish_model(candidate, record["name"], record)
            record["suite"] = _suite_record(result)
            record["verdict"] = suite_verdict(result, judged, [model.name for model in inputs.compared])
            record["config"] = inputs.checkpoint["config"]
            # what this bundle writes over, so the record says where the model before it came from
            record["replaced"] = ({"source": _previous_source(record_path),
                                   "forced": record["verdict"]["verdict"] != "better"} if replacing else None)
            if replacing and record["verdict"]["verdict"] != "better" and not force:
                raise BundleRefused(
                    f"refused to replace the model in {printable(out)}: the verdict is "
                    f"{record['verdict']['verdict']!r} ({record['verdict']['why']}). Nothing in {printable(out)} "
                    "was changed: bundle into another folder, or force it (--force).", record)
            written = Path(work) / BUNDLED_RECORD.name
            written.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
            _replace_both([(candidate, model_path), (written, record_path)], Path(work))
    except BaseException:
        _remove_empty(made)  # folders this bundle made stay only with a model in them
        raise
    return record


def _previous_source(record_path: Path) -> str | None:
    """The ``source`` of the record at ``record_path`` (None: none, or unreadable)."""
    try:
        return json.loads(record_path.read_text(encoding="utf-8")).get("source")
    except (OSError, ValueError, AttributeError):
        return None


def _replace_both(moves: list[tuple[Path, Path]], work: Path) -> None:
    """Move each ``(new, target)`` into place as one step: the targets there before are set aside in ``work`` first
    and put back if any move fails, so the folder holds both old files or both new ones."""
    kept = []
    try:
        for number, (_, target) in enumerate(moves):
            if target.exists():
                aside = work / f"previous-{number}"
                os.replace(target, aside)
                kept.append((aside, target))
        for new, target in moves:
            os.replace(new, target)
    except BaseException:
        for new, target in moves:
            if target.exists() and not new.exists():
                os.replace(target, new)  # a new file that reached its place goes back
        for aside, target in kept:
            os.replace(aside, target)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (leaf first) while it is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            break


def _suite_record(result: dict) -> dict:
    """The benchmark's result for the record: no predictions, no machine's data paths (the unreadable images
    counted, not named)."""
    suite = {**result["suite"], "file": _shown(result["suite"]["file"]),
             "sets": [{**{k: v for k, v in entry.items() if k not in ("root", "unreadable")},
                       "unreadable": len(entry["unreadable"])} for entry in result["suite"]["sets"]]}
    return {"suite": suite, "models": result["models"], "bootstrap": result["bootstrap"], "rows": result["rows"],
            "confusion_axes": result["confusion_axes"], "scores": result["scores"]}
