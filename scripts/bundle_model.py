"""Bundle a trained run as msfer's default model, or as a candidate to compare with it.

It calibrates the model, chooses its balanced decision rule and records what it measures.

    python scripts/bundle_model.py runs/cpu_2h --data /path/to/fer2013 --annotations data/annotations/fer2013.jsonl

Takes the run's ``best.pt`` (or any checkpoint file, region network or plain classifier; one from
msfer <= 0.1 with a class-prior adjustment folded into its bias has it taken out first) and, on
FER2013 public_test (validation), without TTA:

1. fits the calibration (``msfer.engine.calibration.choose_calibration``: temperature or
   vector scaling, chosen and fitted on one stratified half, reported on the other);
2. chooses the balanced decision rule's strength ``tau`` on the calibrated probabilities of the
   same half (``msfer.engine.prior.choose_tau``), against the class prior those probabilities
   carry: their mean over public_test (after vector scaling, the fitting half's class frequencies,
   whatever a FER2013 + TCCE mix drew in training);
3. writes both into the model's buffers and exports it as ``msfer_fer2013.pt`` (half precision
   if that loses nothing measurable: every accuracy within 0.1 point);
4. measures that file with and without flip TTA under both decision rules, its calibration on
   the held-out half and on all of public_test, the fixed sample the tests re-check, and (with
   ``--tcce``) TCCE val through the whole pipeline (detect, crop by the checkpoint's crop rule,
   classify; a photo without a face counts as wrong), and records it in ``msfer_fer2013.json``;
5. compares it with an earlier record (``--compare``, default the shipped model's) and stores the
   verdict per decision rule as the record's ``compared_with``: better means a strictly higher
   overall accuracy on both FER2013 public_test (without TTA) and TCCE val, under that rule.

Both files go into ``--out DIR`` (default ``src/msfer/weights``, the shipped model). Everything is
written and measured in a temporary folder inside DIR and moved into place at the end; where DIR
already holds a model, it is replaced only if the candidate is better under its default decision rule
(``--decision``; or with ``--force``), so a refused or failed bundle leaves DIR as it was.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from msfer.data.readers import read_dataset
from msfer.engine.calibration import apply, calibrated_checkpoint, calibration_metrics, choose_calibration
from msfer.engine.datasets import FaceDataset
from msfer.engine.decision import DECISION_RULES, decide
from msfer.engine.evaluate import predict_split, split_metrics
from msfer.engine.metrics import compute_metrics
from msfer.engine.prior import choose_tau, stratified_halves, unfold_adjustment
from msfer.errors import MsferError
from msfer.labels import EMOTIONS
from msfer.model.checkpoint import export_weights, load_checkpoint, load_model, resolve_checkpoint, save_checkpoint
from msfer.regions.annotations import load_annotations
from msfer.weights import BUNDLED_MODEL, BUNDLED_RECORD, fixed_sample

ROOT = Path(__file__).resolve().parents[1]

KEYS = ("n", "overall_accuracy", "mean_class_accuracy")


def predict(weights: Path, samples: list, annotations: dict | None, tta: bool) -> tuple[dict, tuple[str, ...]]:
    model, _ = load_model(weights)
    dataset = FaceDataset(samples, model.input_size, model.region_names, annotations)
    predictions = predict_split(model, dataset, torch.device("cpu"), 256, tta=tta, num_workers=2)
    predictions["balanced_offsets"] = model.balanced_offsets.float().numpy()
    return predictions, model.region_names


def measure(weights: Path, samples: list, annotations: dict | None, tta: bool) -> dict:
    return summarize(*predict(weights, samples, annotations, tta), scored_regions=annotations is not None)


def summarize(predictions: dict, region_names: tuple[str, ...], scored_regions: bool) -> dict:
    """Headline figures (decision rule argmax), both rules' accuracies and per-class recall, calibration."""
    metrics = split_metrics(predictions, region_names, score_regions=scored_regions,
                            balanced_offsets=predictions["balanced_offsets"])
    recall = {name: scores["recall"] for name, scores in metrics["per_class"].items()}
    balanced_labels = decide(predictions["probs"], predictions["balanced_offsets"], "balanced")
    balanced = compute_metrics(predictions["y_true"], balanced_labels, EMOTIONS)
    return {**{k: metrics[k] for k in (*KEYS, "decision_rules", "calibration", "region_detection",
                                        "region_detection_stages", "fallback_rate") if k in metrics},
            "recall": recall, "recall_balanced": {name: s["recall"] for name, s in balanced["per_class"].items()}}


def public_test(weights: Path, samples: list, annotations: dict | None, without_tta: dict | None = None) -> dict:
    """Scores with and without TTA; ``without_tta`` is the latter when already measured."""
    return {"fer2013_public_test": without_tta or measure(weights, samples, annotations, tta=False),
            "fer2013_public_test_tta": measure(weights, samples, annotations, tta=True)}


def tcce_val(weights: Path, samples: list) -> dict:
    """``weights`` on TCCE val's ``samples`` through the whole pipeline (largest face of each photo): accuracies
    under both rules, faces missed, and the calibration of the probabilities of the faces found."""
    from msfer.engine.photos import photo_metrics
    from msfer.inference.detect_eval import probs_with_detection
    from msfer.inference.recognizer import EmotionRecognizer

    recognizer = EmotionRecognizer(weights, device="cpu", batch_size=32)
    # both rules always, also when tau is 0 (offsets all 0: the rules agree), so records compare rule by rule
    metrics = photo_metrics(samples, probs_with_detection(recognizer, samples), recognizer.classifier.balanced_offsets)
    return {**{rule: {"n": metrics["n"], **scores} for rule, scores in metrics["decision_rules"].items()},
            "faces_missed": metrics["detection"]["faces_missed"], "calibration": metrics["calibration"]}


def bundle(best: Path, checkpoint: dict, samples: list, annotations: dict | None, tcce: list | None,
           work: Path, default_decision: str = "argmax") -> dict:
    """Calibrate ``checkpoint`` (the run's, as trained) on FER2013 public_test's ``samples``, export it as
    ``work/msfer_fer2013.pt`` and measure that file (with TCCE val's samples ``tcce`` too, when given); returns its
    record. Every other file it writes is a temporary one in ``work``."""
    candidate = work / BUNDLED_MODEL.name
    as_trained = save_checkpoint(checkpoint, work / "as_trained.pt")
    record = {"source": shown_path(best), "best_epoch": checkpoint.get("best", {}).get("epoch"), "validation": {}}

    predictions, region_names = predict(as_trained, samples, annotations, tta=False)
    calibration = choose_calibration(predictions["logits"], predictions["y_true"])
    calibrated = apply(predictions["logits"], np.array(calibration["scale"]), np.array(calibration["bias"]))
    # The prior the calibrated probabilities carry, not the one training drew: vector scaling's per-class bias,
    # fitted on public_test, moves their mean to that half's class frequencies whatever mix the run trained on.
    # Their mean over public_test estimates it (no label is used).
    decision = choose_tau(calibrated, predictions["y_true"], calibrated.mean(axis=0))
    record["calibration"] = calibration
    record["decision"] = {"default": default_decision, **{k: v for k, v in decision.items() if k != "curve"},
                          "curve": decision["curve"]}
    kept = {"method": calibration["method"], "scale": calibration["scale"], "bias": calibration["bias"],
            "criterion": calibration["criterion"], "balanced_tau": decision["tau"],
            "balanced_criterion": decision["criterion"], "decision": default_decision}
    source = save_checkpoint(calibrated_checkpoint(checkpoint, calibration["scale"], calibration["bias"],
                                                   decision["offsets"], kept), work / "float32.pt")
    record["validation"]["as_trained"] = public_test(
        as_trained, samples, annotations, summarize(predictions, region_names, scored_regions=annotations is not None))
    as_trained.unlink()

    half = export_weights(source, work / "float16.pt", half=True)
    for name, weights in (("float32", source), ("float16", half)):
        record["validation"][name] = public_test(weights, samples, annotations)
    fp32, fp16 = record["validation"]["float32"], record["validation"]["float16"]
    lossless = all(abs(fp32[k]["decision_rules"][rule][m] - fp16[k]["decision_rules"][rule][m]) <= 0.001
                   for k in fp32 for rule in DECISION_RULES for m in ("overall_accuracy", "mean_class_accuracy"))
    if lossless:
        half.replace(candidate)
    else:
        half.unlink()
        export_weights(source, candidate, half=False)
    source.unlink()
    record["precision"] = "float16" if lossless else "float32"
    bundled, _ = predict(candidate, samples, annotations, tta=False)
    _, held_out = stratified_halves(bundled["y_true"])
    record["calibration"]["held_out"]["bundled"] = calibration_metrics(bundled["probs"][held_out],
                                                                       bundled["y_true"][held_out])
    sample = fixed_sample(samples)
    record["fixed_sample"] = {"split": "public_test", "size": len(sample),
                              **measure(candidate, sample, None, tta=False)}
    if tcce:
        record["validation"]["tcce_val"] = tcce_val(candidate, tcce)
    record["config"] = checkpoint["config"]
    return record


# The figures compared with an earlier record: (key, name); the verdict judges the two validations
# (FER2013 public_test, TCCE val).
COMPARED = (("fer2013_public_test", "FER2013 public_test"),
            ("fer2013_public_test_tta", "FER2013 public_test, flip TTA"),
            ("tcce_val", "TCCE val, whole pipeline"))
JUDGED = ("fer2013_public_test", "tcce_val")
JUDGEMENT = ("overall accuracy, strictly higher on both FER2013 public_test (without TTA) and TCCE val "
             "(whole pipeline), under the same decision rule")


def figures(record: dict, rule: str) -> dict[str, dict | None]:
    """A record's ``{"n", "overall_accuracy", "mean_class_accuracy"}`` per key of ``COMPARED`` under ``rule``, for
    the precision it shipped in; None where the record lacks them."""
    validation = record.get("validation") or {}
    shipped = validation.get(record.get("precision")) or {}
    found = {}
    for key in ("fer2013_public_test", "fer2013_public_test_tta"):
        entry = shipped.get(key) or {}
        scores = (entry.get("decision_rules") or {}).get(rule)
        found[key] = {"n": entry.get("n"), **scores} if scores else None
    found["tcce_val"] = (validation.get("tcce_val") or {}).get(rule)
    return found


def verdict(candidate: dict, old: dict) -> dict:
    """``{"verdict": "better" | "not better" | "no verdict", "why"}`` for two :func:`figures` of one rule."""
    names = dict(COMPARED)
    for key in JUDGED:
        if not candidate[key]:
            hint = " (bundle with --tcce)" if key == "tcce_val" else ""
            return {"verdict": "no verdict", "why": f"the candidate has no {names[key]} figures{hint}"}
        if not old[key]:
            return {"verdict": "no verdict", "why": f"the compared record has no {names[key]} figures"}
        if candidate[key]["n"] != old[key]["n"]:
            return {"verdict": "no verdict", "why": f"{names[key]} has {candidate[key]['n']} images here and "
                    f"{old[key]['n']} in the compared record: not the same set"}
    better = all(candidate[key]["overall_accuracy"] > old[key]["overall_accuracy"] for key in JUDGED)
    detail = "; ".join(f"{names[key]} {100 * candidate[key]['overall_accuracy']:.1f}% vs "
                       f"{100 * old[key]['overall_accuracy']:.1f}%" for key in JUDGED)
    return {"verdict": "better" if better else "not better", "why": f"overall accuracy, candidate vs record: {detail}"}


def shown_path(path: Path) -> str:
    """``path`` relative to the repository when inside it: a shipped record carries no bundling machine's paths."""
    try:
        return Path(path).resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def compare(record: dict, old: dict, old_path: Path) -> dict:
    """The candidate ``record`` against an ``old`` one (read from ``old_path``): its figures and a verdict per rule."""
    return {"record": shown_path(old_path), "judged_by": JUDGEMENT,
            "record_figures": {rule: figures(old, rule) for rule in DECISION_RULES},
            "verdicts": {rule: verdict(figures(record, rule), figures(old, rule)) for rule in DECISION_RULES}}


def comparison_table(record: dict, comparison: dict) -> str:
    """The comparison as a Markdown table (overall / mean class accuracy, %) and one verdict line per rule."""
    def cell(scores: dict | None) -> str:
        return "-" if not scores else (f"{100 * scores['overall_accuracy']:.1f} / "
                                       f"{100 * scores['mean_class_accuracy']:.1f}")

    lines = [f"candidate vs {comparison['record']} (overall / mean class accuracy, %)",
             "| validation | decision rule | candidate | record |", "|---|---|---|---|"]
    for rule in DECISION_RULES:
        mine, theirs = figures(record, rule), comparison["record_figures"][rule]
        lines += [f"| {name} | {rule} | {cell(mine[key])} | {cell(theirs[key])} |" for key, name in COMPARED]
    lines.append(f"verdict ({JUDGEMENT}):")
    lines += [f"  {rule}: {v['verdict']} ({v['why']})" for rule, v in comparison["verdicts"].items()]
    return "\n".join(lines)


def read_record(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        why = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise MsferError(f"cannot read the record to compare with (--compare), {path}: {why}") from None


def read_inputs(args: argparse.Namespace, compare_path: Path) -> tuple[dict, Path, dict, list, list | None,
                                                                       dict | None]:
    """The record to compare with (read from ``compare_path``), the checkpoint to bundle (its path, and the model
    as trained), FER2013 public_test's samples, TCCE val's (None without ``--tcce``) and the pseudo-labels (None
    without ``--annotations``); MsferError naming the file or folder for any that is missing, unreadable or
    empty."""
    old = read_record(compare_path)  # before anything is written: it may be the record this bundle replaces
    if args.out.exists() and not args.out.is_dir():
        raise MsferError(f"--out {args.out} is a file: it must be a folder (made when missing)")
    best = resolve_checkpoint(args.run, prefer="best.pt")
    # the model as trained: an earlier bundle's folded adjustment taken out, any calibration reset, so
    # that the calibration is fitted to (and later applied to) the raw logits
    checkpoint = calibrated_checkpoint(unfold_adjustment(load_checkpoint(best)), [1.0] * 7, [0.0] * 7, [0.0] * 7, {})
    checkpoint.pop("calibration")
    if args.annotations and not checkpoint.get("region_names"):
        raise MsferError(f"--annotations scores a region detector, and {best} is a plain classifier "
                         f"({checkpoint['config']['model'].get('name')}, no regions): leave --annotations out")
    samples = split_samples(args.data, "fer2013", "public_test", "--data")
    tcce = split_samples(args.tcce, "folder", "val", "--tcce") if args.tcce else None
    annotations = load_annotations(args.annotations) if args.annotations else None
    return old, best, checkpoint, samples, tcce, annotations


def split_samples(root: Path, layout: str, split: str, option: str) -> list:
    """The samples of ``split`` in the dataset at ``root`` (``layout`` as ``msfer.data.readers.read_dataset``)."""
    try:
        index = read_dataset(root, layout)
    except MsferError as error:
        raise MsferError(f"{option}: {error}") from None
    samples = [s for s in index.samples if s.split == split]
    if not samples:
        expected = f" (expected {root / split}/<emotion>/*)" if root.is_dir() else ""
        raise MsferError(f"{option} {root} has no {split} images{expected}")
    return samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="training run folder (its best.pt is bundled) or a checkpoint file")
    parser.add_argument("--data", type=Path, required=True,
                        help="FER2013: its folder tree (public_test/<emotion>/*) or Kaggle's CSV")
    parser.add_argument("--annotations", type=Path, help="pseudo-labels, to score the region detector too "
                        "(region networks only)")
    parser.add_argument("--tcce", type=Path, help="TCCE folder tree (train/, val/): its val is the second validation")
    parser.add_argument("--out", type=Path, default=BUNDLED_MODEL.parent, metavar="DIR",
                        help=f"where {BUNDLED_MODEL.name} and {BUNDLED_RECORD.name} go (default: the package's, "
                             "replacing the shipped model)")
    parser.add_argument("--decision", choices=("argmax", "balanced"), default="argmax",
                        help="the model's default decision rule, which every command and the API then use unless "
                             "told otherwise (choose it on the development suite: msfer benchmark); default argmax")
    parser.add_argument("--compare", type=Path, metavar="RECORD",
                        help=f"record to compare the candidate with (default: DIR's {BUNDLED_RECORD.name} when "
                             "DIR holds one, else the shipped model's)")
    parser.add_argument("--force", action="store_true",
                        help="replace the model in DIR even when the candidate is not better (under its --decision "
                             "rule)")
    args = parser.parse_args(argv)

    model_path, record_path = args.out / BUNDLED_MODEL.name, args.out / BUNDLED_RECORD.name
    replacing = model_path.exists() or record_path.exists()
    compare_path = args.compare or (record_path if record_path.is_file() else BUNDLED_RECORD)
    try:  # every input is checked before the minutes of work start, each failure one line naming the file
        old, best, checkpoint, samples, tcce, annotations = read_inputs(args, compare_path)
    except (MsferError, OSError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")  # one line: the usage block would bury it

    made = [folder for folder in (args.out, *args.out.parents) if not folder.exists()]  # leaf first
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        # measured where it is written, then moved into place only when allowed: a refused or failed bundle
        # leaves DIR as it was (the folder and everything in it go when this block ends, error or not)
        with tempfile.TemporaryDirectory(dir=args.out, prefix=".bundling-") as work:
            record = bundle(best, checkpoint, samples, annotations, tcce, Path(work), args.decision)
            record["compared_with"] = compare(record, old, compare_path)
            # Bundled in place, the compared record is the file this bundle replaces: say so, or the record
            # would seem to name itself (its figures stay in record_figures).
            record["compared_with"]["replaced_by_this_bundle"] = compare_path.resolve() == record_path.resolve()
            print(comparison_table(record, record["compared_with"]))
            # judged under the rule the model will label by
            ruling = record["compared_with"]["verdicts"][args.decision]["verdict"]
            if replacing and ruling != "better" and not args.force:
                why = record["compared_with"]["verdicts"][args.decision]["why"]
                raise SystemExit(f"refused to replace the model in {args.out}: the verdict under the "
                                 f"{args.decision} rule against {compare_path} is {ruling!r} ({why}); replacing "
                                 f"needs 'better' ({JUDGEMENT}). Nothing in {args.out} was changed: bundle "
                                 "elsewhere with --out, or pass --force.")
            written = Path(work) / BUNDLED_RECORD.name
            written.write_text(json.dumps(record, indent=1) + "\n")
            os.replace(Path(work) / BUNDLED_MODEL.name, model_path)
            os.replace(written, record_path)
    except BaseException:
        for folder in made:  # folders this run made stay only with a model in them
            try:
                folder.rmdir()  # only an empty one
            except OSError:
                break
        raise
    calibration = record["calibration"]
    print(f"bundled {model_path} ({model_path.stat().st_size / 2**20:.1f} MB, {record['precision']}; calibration "
          f"{calibration['method']}, balanced rule tau {record['decision']['tau']}); every figure is in {record_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
