"""``msfer datasets``: commands about datasets (today: ``inspect``)."""
from __future__ import annotations

import argparse
import json

from ..data.inspect import DEFAULT_SIZE_SAMPLE, format_report, inspect_dataset
from ..data.readers import READERS, read_dataset
from ..errors import MsferError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    inspect = actions.add_parser(
        "inspect",
        help="print counts per split and class, image sizes and the problems found",
        description="Print a dataset's counts per split and class (canonical class names), "
        "image size statistics, what was skipped and why, and the problems found.",
    )
    inspect.add_argument("path", metavar="PATH", help="the dataset folder (or the CSV file, for fer2013 and affectnet)")
    inspect.add_argument("--format", required=True, metavar="F", help=f"the dataset's layout: {', '.join(READERS)}")
    inspect.add_argument("--json", action="store_true", help="print exactly one JSON object instead of the text report")
    inspect.add_argument("--split", metavar="S", help="report only this split (e.g. train, test, public_test)")
    inspect.add_argument(
        "--check-images",
        action="store_true",
        help="decode every image (slow on big datasets) and list the unreadable ones; "
        "by default only the headers of a sample of images are read",
    )
    inspect.add_argument(
        "--size-sample",
        type=_positive_int,
        default=DEFAULT_SIZE_SAMPLE,
        metavar="N",
        help=f"read the sizes of at most N images, drawn with a fixed seed (default {DEFAULT_SIZE_SAMPLE})",
    )
    inspect.add_argument(
        "-o",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a reader option, repeatable: e.g. variant=original (rafdb), require_images=false "
        "(count a labels-only copy), soft_labels=true (ferplus), ferplus=DIR (fer2013: its FER+ votes), "
        "images=DIR (affectnet), split=NAME",
    )


def run(args: argparse.Namespace) -> int:
    index = read_dataset(args.path, args.format, **_reader_options(args.option))
    report = inspect_dataset(index, split=args.split, size_sample=args.size_sample, check_images=args.check_images)
    print(json.dumps(report) if args.json else format_report(report))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _reader_options(pairs: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` strings to reader keyword arguments; true/false become booleans."""
    options: dict[str, object] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise MsferError(f"reader option {pair!r} is not KEY=VALUE")
        booleans = {"true": True, "false": False}
        options[key.strip().replace("-", "_")] = booleans.get(value.strip().lower(), value.strip())
    return options
