"""The ``msfer`` command line: one subcommand per module of this package.

Each command module defines ``add_arguments(parser)`` and ``run(args) -> int``: it turns the
options into calls of the library (``msfer.data``, ``msfer.regions``, ``msfer.engine``,
``msfer.inference``), and only this package parses arguments. Modules are imported only when
their command runs (or its ``--help`` is asked for), so one command's heavy imports never slow
down another.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MsferError
from ..outputs import printable

# name -> (module, one-line help). The order is the order `msfer --help` lists them.
COMMANDS: dict[str, tuple[str, str]] = {
    "datasets": ("msfer.cli.datasets", "inspect facial-expression datasets (counts, sizes, problems)"),
    "annotate": ("msfer.cli.annotate", "make emotion-region pseudo-labels with RetinaFace"),
    "train": ("msfer.cli.train", "train a model from a YAML config with key=value overrides"),
    "evaluate": ("msfer.cli.evaluate", "measure a model on a dataset split (metrics.json, confusion matrix)"),
    "benchmark": ("msfer.cli.benchmark", "score models on a suite of labelled sets (accuracy with intervals)"),
    "bundle": ("msfer.cli.bundle", "calibrate a trained run and bundle it if it beats a model on a suite"),
    "predict": ("msfer.cli.predict", "recognise emotions in photos, folders, videos or a webcam"),
    "export": ("msfer.cli.export", "export a model to ONNX"),
    "serve": ("msfer.cli.serve", "run the REST service and its web page"),
    "report": ("msfer.cli.report", "write an HTML emotion report for a video"),
    "setup-weights": ("msfer.cli.setup_weights", "put the offline ImageNet weights where torchvision finds them"),
}

# Modules that only an extra of the msfer package brings (pyproject.toml): a command that needs one
# says which extra to install instead of ending in an ImportError.
EXTRA_OF_MODULE = {"fastapi": "serve", "uvicorn": "serve", "multipart": "serve", "python_multipart": "serve",
                   "onnx": "export", "tensorboard": "train"}


def build_parser() -> argparse.ArgumentParser:
    from .._version import __version__

    parser = argparse.ArgumentParser(
        prog="msfer",
        description="Multi-scale, region-attention facial emotion recognition.",
        epilog="Run 'msfer COMMAND --help' for the options of one command.",
    )
    parser.add_argument("--version", action="version", version=f"msfer {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = build_parser()
    # Find the command before parsing its options, so only that module is imported.
    command = next((a for a in argv if not a.startswith("-")), None)
    if command not in COMMANDS:
        top.parse_args(argv)  # prints help, version or a usage error and exits
        return 2
    index = argv.index(command)
    top_args = top.parse_args(argv[:index] + [command])
    module_name, help_text = COMMANDS[command]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        return _missing_extra(command, error)
    parser = argparse.ArgumentParser(prog=f"msfer {command}", description=help_text[0].upper() + help_text[1:] + ".")
    module.add_arguments(parser)
    try:  # intermixed: `msfer train --config X a.b=1 --overwrite c.d=2` keeps every override
        args = parser.parse_intermixed_args(argv[index + 1 :])
    except TypeError:  # argparse cannot intermix around sub-commands (`msfer datasets inspect`)
        args = parser.parse_args(argv[index + 1 :])
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if top_args.verbose else logging.INFO, handlers=[handler])
    try:
        return int(module.run(args) or 0)
    except MsferError as error:
        print(f"msfer {command}: error: {printable(error_message(error))}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        return _missing_extra(command, error)
    except KeyboardInterrupt:
        print(f"msfer {command}: interrupted", file=sys.stderr)
        return 130


class OneLineFormatter(logging.Formatter):
    """Log messages on the terminal as :func:`msfer.outputs.printable` shows them: a file name with a newline or an
    escape sequence in it neither splits its line nor drives the terminal (a traceback after it keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = printable(record.message)
        return super().formatMessage(record)


def error_message(error: MsferError) -> str:
    """The error's own message, also when a DataLoader worker raised it: torch re-raises it in the main process
    with the worker's traceback in front (``Caught X in DataLoader worker process 0. Original Traceback ...``), and
    a user should read the one line that names the file, as when it is raised in the main process."""
    message = str(error)
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        last = message.rstrip().splitlines()[-1]  # "module.ErrorClass: the message"
        message = last.split(": ", 1)[1] if ": " in last else last
    return message


def _missing_extra(command: str, error: ModuleNotFoundError) -> int:
    """Exit status 2 and what to install, for a module an extra brings; any other missing module is a bug."""
    extra = EXTRA_OF_MODULE.get((error.name or "").split(".")[0])
    if extra is None:
        raise error
    print(f"msfer {command}: error: this needs the package {error.name!r}, which msfer's '{extra}' extra installs: "
          f"pip install 'msfer[{extra}]'", file=sys.stderr)
    return 2
