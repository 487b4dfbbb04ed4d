"""``msfer bundle``: a trained run calibrated, exported and judged on a suite (the library is
:mod:`msfer.inference.bundle`).

    msfer bundle runs/v3 configs/benchmarks/dev.yaml --data-root DATA --out runs/v3/bundle
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..outputs import printable
from ..weights import BUNDLED_MODEL, BUNDLED_RECORD


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Bundle a trained run as a model msfer ships: calibrate it and choose its balanced decision rule on a crops "
        "set of the suite, export it (half precision where that loses nothing measurable), score it with the models "
        "it is compared with on the whole suite, and write the model and its record "
        f"({BUNDLED_MODEL.name}, {BUNDLED_RECORD.name}) into --out. A folder that already holds a model is replaced "
        "only when the verdict is better: a higher suite score than the first compared model, and on no set worse "
        "than any compared model by more than one standard error of the paired difference.")
    parser.add_argument("run", type=Path, help="training run folder (its best.pt is bundled) or a checkpoint file")
    parser.add_argument("suite", type=Path, help="the suite file (YAML; configs/benchmarks/dev.yaml is msfer's "
                                                 "development suite; see msfer benchmark --help)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder that the suite's relative set roots are in (default: the suite file's folder)")
    parser.add_argument("--calibrate-on", metavar="SET", default=None,
                        help="the crops set of the suite that calibration and the balanced rule are fitted on "
                             "(default: its first crops set)")
    parser.add_argument("--annotations", type=Path, help="pseudo-labels of the calibration set, to score the region "
                                                         "detector too (region networks only)")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="where the model and its record go; the package's own folder "
                             f"({BUNDLED_MODEL.parent.name}/ of the installed msfer) replaces the shipped model if "
                             "the verdict is better, so it must be named")
    parser.add_argument("--decision", choices=("suite", "argmax", "balanced"), default="suite",
                        help="the model's default decision rule, which every command and the API then use unless "
                             "told otherwise; the verdict judges it under this rule. suite (the default): the rule "
                             "with the higher suite score, balanced only where it also raises mean class accuracy on "
                             "the suite's photo sets")
    parser.add_argument("--compare", nargs="+", default=None, metavar="[NAME=]PATH",
                        help="models to compare with, each under its own default rule; the first is the one whose "
                             "suite score the candidate must beat; a model DIR holds is always compared first, as "
                             "'current' (default: that model, else the bundled one)")
    parser.add_argument("--name", default=None,
                        help="the model's name, which its file and record carry and the service and reports show "
                             "(default: the run folder's name, e.g. v3 for runs/v3/last.pt)")
    parser.add_argument("--force", action="store_true", help="replace the model in DIR whatever the verdict")


def run(args: argparse.Namespace) -> int:
    from ..data.suites import load_suite
    from ..inference.bundle import BundleRefused, bundle, decision_line, photo_temperature_line, verdict_table

    def measured(record: dict) -> str:  # what the bundle measured, refused or not
        return "\n".join(line for line in (decision_line(record), photo_temperature_line(record),
                                            verdict_table(record)) if line)
    from .options import model_name, named_weights

    compare = None
    if args.compare:
        compare = []
        for text in args.compare:
            name, path = named_weights(text)
            compare.append((name or model_name(path), path))
    suite = load_suite(args.suite, args.data_root)
    try:
        record = bundle(args.run, suite, args.out, compare, args.calibrate_on, args.decision, args.annotations,
                        args.force, name=args.name)
    except BundleRefused as refused:
        print(measured(refused.record))
        raise
    print(measured(record))
    model, replaced = args.out / BUNDLED_MODEL.name, record["replaced"]
    if replaced is None:
        print(f"{printable(args.out)} held no model: the candidate is written whatever the verdict")
    elif replaced["forced"]:
        print(f"replaced the model in {printable(args.out)} (trained from {replaced['source'] or 'unknown'}) although "
              "the verdict is not better: --force")
    chosen = record["decision"]
    print(f"bundled {record['name']} as {printable(model)} ({model.stat().st_size / 2**20:.1f} MB, "
          f"{record['precision']}; calibration "
          f"{record['calibration']['method']} on {record['calibrated_on']}, default rule {chosen['default']}, "
          f"balanced rule tau {chosen['tau']}); every figure is in {printable(args.out / BUNDLED_RECORD.name)}")
    return 0



