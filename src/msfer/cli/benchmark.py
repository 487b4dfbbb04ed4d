"""``msfer benchmark``: score models on a suite of labelled sets (the library is :mod:`msfer.inference.benchmark`).

    msfer benchmark configs/benchmarks/dev.yaml --data-root DATA --weights v1=a.pt v2=b.pt --out bench/
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import sys
from pathlib import Path

from ..errors import MsferError
from ..files import atomic_output, refuse_file_as_folder, writing
from ..outputs import printable

OWN = "own"  # --crop-rule / --decision: the model's own
OUTPUTS = ("benchmark.json", "benchmark.md", "benchmark.png", "predictions.npz")  # the files --out receives


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .options import add_model_arguments

    parser.description = ("Score one or more models on a suite of labelled sets (a YAML file; configs/benchmarks/"
                          "dev.yaml is msfer's development suite): per set and model, overall and mean class "
                          "accuracy with 95% bootstrap intervals, faces missed, ECE and NLL, and the suite's score, "
                          "the mean over its domains. Prints a Markdown table; --out also writes "
                          f"{', '.join(OUTPUTS)} (the figure: a forest plot of the accuracies and their intervals).")
    parser.epilog = ("A suite file: 'name: NAME', optional 'description: TEXT', and 'sets:', a list of sets, each "
                     "with name (letters, digits, _ . + -), domain (sets of one domain are averaged, then "
                     "domains; null: outside the score), format (a dataset reader: fer2013, ferplus, folder, ...), "
                     "root (relative: to --data-root, else to the suite file's folder), mode (crops: classified "
                     "whole; photos: detect, largest face, crop, classify), and optional split, reader_options, "
                     "groups (a regular expression whose first group in a file name names its group) and "
                     "description. Example: configs/benchmarks/dev.yaml.")
    parser.add_argument("suite", type=Path, help="the suite file (YAML)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder that the suite's relative set roots are in (default: the suite file's folder)")
    parser.add_argument("--weights", nargs="+", default=None, metavar="[NAME=]PATH",
                        help="the models to score, each a .pt checkpoint, its run folder or an "
                             ".onnx file, optionally named (v1=old.pt); the first is the reference of the paired "
                             "differences; default: the bundled model")
    parser.add_argument("--crop-rule", nargs="+", default=[OWN], metavar="RULE",
                        help="score each model with each of these crop rules for photos: own (the model's), box, "
                             "roll or similarity, at the model's scale or METHOD:SCALE (e.g. box:1.2); default own")
    parser.add_argument("--decision", nargs="+", default=[OWN], metavar="RULE",
                        help="score each model under each of these decision rules: own (the model's default), "
                             "argmax or balanced; default own")
    parser.add_argument("--tta", action="store_true", help="horizontal-flip test-time augmentation")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"folder for {', '.join(OUTPUTS)}")
    parser.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    add_model_arguments(parser, weights=False)


def crop_rule_of(text: str, scale: float):
    """``"box"`` -> CropRule("box", scale); ``"box:1.2"`` -> CropRule("box", 1.2); :class:`MsferError` otherwise."""
    from ..faces.crop import CropRule

    method, sep, given = text.partition(":")
    if sep:
        try:
            scale = float(given)
        except ValueError:
            raise MsferError(f"--crop-rule {text!r}: the scale after ':' must be a number, e.g. box:1.2") from None
    try:
        return CropRule(method, scale)
    except MsferError as error:
        raise MsferError(f"--crop-rule {text!r}: {error}") from None


def weights_sha256(path: Path | None) -> str:
    """SHA-256 of a weights file (``None``: the bundled model; a run folder: the best.pt a model is read from)."""
    import hashlib

    from ..model.checkpoint import resolve_checkpoint
    from ..weights import BUNDLED_MODEL

    digest = hashlib.sha256()
    with open(resolve_checkpoint(path or BUNDLED_MODEL, prefer="best.pt"), "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(args: argparse.Namespace, files: dict[str, str]) -> dict:
    """What a benchmark.json needs to be read later: msfer's version, the options as given, and ``files``, the
    SHA-256 of each weights file (:func:`weights_sha256`) keyed as the models' ``weights`` are, so that a row can
    be traced to the exact file."""
    from .. import __version__

    options = {key: value if isinstance(value, (int, float, bool, type(None))) else
               [str(v) for v in value] if isinstance(value, list) else str(value)
               for key, value in vars(args).items() if not callable(value)}
    return {"msfer_version": __version__, "options": options, "weights_sha256": files}


def run(args: argparse.Namespace) -> int:
    from ..data.suites import load_suite
    from ..faces.retinaface import RetinaFaceDetector
    from ..inference.benchmark import (
        FIGURE_SAVE_OPTIONS,
        ModelVariant,
        benchmark_figure,
        format_markdown,
        run_benchmark,
        save_predictions,
    )
    from ..inference.recognizer import EmotionRecognizer
    from ..weights import bundled_record
    from .options import check_at_least_one, model_name, model_options, named_weights

    check_at_least_one(args, "batch_size")
    if args.seed < 0:
        raise MsferError(f"--seed must be 0 or more, got {args.seed}")
    rules = list(dict.fromkeys(None if rule == OWN else rule for rule in args.crop_rule))
    decisions = list(dict.fromkeys(None if rule == OWN else rule for rule in args.decision))
    for rule in decisions:
        if rule not in (None, "argmax", "balanced"):
            raise MsferError(f"--decision {rule!r}: use own, argmax or balanced")
    for rule in rules:  # a bad rule stops before anything loads
        if rule is not None:
            crop_rule_of(rule, 1.0)
    if args.out is not None:
        refuse_file_as_folder(args.out, "--out")
        folders = [name for name in OUTPUTS if (args.out / name).is_dir()]
        if folders:  # found before the scoring, not after it
            raise MsferError(f"--out {printable(args.out)} holds a folder named {folders[0]}, a file this command "
                             "writes: move it or choose another --out")
        existing = [name for name in OUTPUTS if (args.out / name).exists()]
        if existing and not args.overwrite:
            raise MsferError(f"--out {printable(args.out)} already holds {', '.join(existing)}: "
                             f"add --overwrite to replace {'them' if len(existing) > 1 else 'it'}")
    if args.data_root is not None and not args.data_root.is_dir():
        raise MsferError(f"--data-root {printable(args.data_root)} is not a folder")
    suite = load_suite(args.suite, args.data_root)
    detector = RetinaFaceDetector()
    models, hashes = [], {}
    bundled = f"bundled ({bundled_record().get('name', 'msfer')})"  # which model, for a table read later
    for text in args.weights or [None]:
        name, path = named_weights(text) if text is not None else (None, None)
        # hashed as it is loaded: a run folder's best.pt may be rewritten while the benchmark runs
        hashes[str(path) if path else bundled] = weights_sha256(path)
        options = model_options(argparse.Namespace(weights=path, backend=args.backend, device=args.device))
        first = EmotionRecognizer(**options, detector=detector, tta=args.tta, batch_size=args.batch_size)
        scored = set()
        for rule in rules:
            crop_rule = first.crop_rule if rule is None else crop_rule_of(rule, first.crop_rule.scale)
            if crop_rule in scored:  # own is also a named rule: scored once, under the first name given
                continue
            scored.add(crop_rule)
            # one loaded network per file, shared by its crop rules
            recognizer = first if rule is None else copy.copy(first)
            recognizer.crop_rule = crop_rule
            label = name or model_name(path)
            named = f"{label} {rule or OWN}" if len(rules) > 1 or rule is not None else label
            models.append(ModelVariant(named, recognizer, str(path) if path else bundled))
    sources = provenance(args, hashes)
    result = run_benchmark(suite, models, decisions, args.batch_size, args.seed)
    table = format_markdown(result)
    print(table, end="")
    if args.out is not None:
        report = {k: v for k, v in result.items() if k != "predictions"}
        report["provenance"] = sources
        writers = {"predictions.npz": lambda path: save_predictions(result, path),
                   "benchmark.md": lambda path: path.write_text(table, encoding="utf-8"),
                   "benchmark.png": lambda path: benchmark_figure(report).savefig(path, **FIGURE_SAVE_OPTIONS),
                   "benchmark.json": lambda path: path.write_text(json.dumps(report, indent=1) + "\n",
                                                                  encoding="utf-8")}
        # each written to a temporary file, all renamed into place only once all four are written: a failure
        # leaves the earlier run's files as they were, never a mix of two runs
        with contextlib.ExitStack() as stack:
            temporaries = {name: stack.enter_context(atomic_output(args.out / name)) for name in writers}
            for name, write in writers.items():
                with writing(args.out / name):  # an error names the file being written, not a temporary one
                    write(temporaries[name])
        print("wrote " + ", ".join(printable(args.out / name) for name in OUTPUTS), file=sys.stderr)
    return 0
