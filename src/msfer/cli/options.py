"""Options shared by the commands: the model options (one set, one set of defaults), count checks, output files.

``predict``, ``evaluate``, ``serve``, ``report`` and ``export`` all take ``--weights``
(default: the bundled model); those that run the model also take ``--device`` (default
``auto``: CUDA when available, else the CPU; the face detector always runs on the CPU)
and ``--backend`` (``torch`` or ``onnx``; ONNX Runtime runs on the CPU; default: by the
file, ``onnx`` for an ``.onnx`` file and ``torch`` for a checkpoint). ``predict``, ``evaluate``,
``serve`` and ``report`` also take ``--decision`` (:func:`add_decision_argument`).
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..engine.decision import DECISION_RULES
from ..errors import MsferError
from ..outputs import printable

BACKENDS = ("torch", "onnx")


def add_model_arguments(parser: argparse.ArgumentParser, device: bool = True, backend: bool = True,
                        weights: bool = True) -> argparse._ArgumentGroup:
    """Add ``--weights`` (unless the command takes several, its own way) and, unless the command cannot honour
    them, ``--device`` and ``--backend``; returns the option group."""
    group = parser.add_argument_group("model")
    onnx = ", or an .onnx file of 'msfer export' (run in ONNX Runtime)" if backend else ""
    if weights:
        group.add_argument("--weights", type=Path, default=None, metavar="PATH",
                           help=f"a .pt checkpoint of 'msfer train' or its run directory (best.pt){onnx}; "
                                "default: the bundled model")
    if device:
        group.add_argument("--device", default="auto",
                           help="torch device for the classifier: auto (CUDA if available, else cpu), cpu, cuda or "
                                "cuda:N; default auto")
    if backend:
        group.add_argument("--backend", choices=BACKENDS, default=None,
                           help="classifier runtime: torch, or onnx (ONNX Runtime on the CPU; a .pt is exported "
                                "in memory); default: by the --weights file, onnx for an .onnx file, else torch")
    return group


def add_existing_out_arguments(parser: argparse.ArgumentParser, resume_help: str,
                                overwrite_help: str = "--out exists: replace it") -> None:
    """``--resume`` / ``--overwrite`` for an ``--out`` file that exists (read with
    :func:`msfer.outputs.existing_out_mode`); argparse refuses the two together."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help=resume_help)
    group.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_decision_argument(parser: argparse.ArgumentParser) -> None:
    """``--decision``: how a face's label is chosen from its probabilities (which it never changes)."""
    parser.add_argument("--decision", choices=DECISION_RULES, default=None,
                        help="decision rule: 'argmax', the most probable emotion, or 'balanced', the class-prior "
                             "adjustment a bundled model carries (higher mean class accuracy); probabilities are "
                             "unchanged. Default: the model's own rule (the bundled model's: argmax; a model "
                             "that names none: argmax)")


def check_at_least_one(args: argparse.Namespace, *names: str) -> None:
    """Raise :class:`MsferError` for a count option (``--every``, ``--batch-size``) below 1: nothing honours it."""
    for name in names:
        value = getattr(args, name)
        if value < 1:
            raise MsferError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


def model_options(args: argparse.Namespace) -> dict:
    """``weights``, ``device`` (resolved) and ``backend`` of parsed options, as keyword arguments of
    :class:`msfer.inference.recognizer.EmotionRecognizer`.

    Without ``--backend`` the file says: an ``.onnx`` file runs in ONNX Runtime, anything else in
    PyTorch (:func:`msfer.inference.backends.backend_for`). Raises :class:`MsferError` for a CUDA
    device where there is none, ``--backend torch`` with an ONNX file, or a device other than the
    CPU with the ONNX backend (it would be ignored).
    """
    from ..inference.backends import backend_for

    device = getattr(args, "device", "auto")
    backend = backend_for(args.weights, getattr(args, "backend", None))
    if backend == "onnx":
        if device not in ("auto", "cpu"):
            what = "--backend onnx" if getattr(args, "backend", None) else f"{printable(args.weights)}, an ONNX model,"
            raise MsferError(f"{what} runs on the CPU (ONNX Runtime): drop --device {device}")
        return {"weights": args.weights, "device": "cpu", "backend": backend}
    from ..engine.runtime import resolve_device

    return {"weights": args.weights, "device": str(resolve_device(device)), "backend": backend}


def file_argument(text: str) -> Path:
    """The argparse ``type`` of an output file's option: refuses a name ending in ``/``, which names a folder.

    ``Path("models/")`` is ``Path("models")``: without this the slash would be lost and a
    file named ``models`` written.
    """
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{printable(text)} ends in {os.sep}, so it names a folder; give a file")
    return Path(text)


def named_weights(text: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` -> (NAME, PATH); a bare PATH -> (None, PATH)."""
    name, sep, path = text.partition("=")
    if sep and name.replace("_", "").replace("-", "").replace(".", "").isalnum() and path:
        return name, Path(path)
    return None, Path(text)


def model_name(path: Path | None) -> str:
    """The name a model file goes by in tables (:func:`msfer.model.checkpoint.file_model_name`); 'bundled'."""
    from ..model.checkpoint import file_model_name

    return "bundled" if path is None else file_model_name(path)
