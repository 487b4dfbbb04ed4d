"""``msfer export``: the emotion network as an ONNX file that runs without PyTorch (:mod:`msfer.inference.export`).

``--out`` follows :mod:`msfer.outputs`: an existing file is replaced only with ``--overwrite``,
never when it is the checkpoint read (by path, symbolic or hard link), a folder is refused,
and the file appears whole or not at all.
"""
from __future__ import annotations

import argparse

from ..inference.export import DEFAULT_OPSET, export_onnx
from .options import add_model_arguments, file_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="export format (only onnx)")
    parser.add_argument("--out", required=True, type=file_argument, help="the file to write, e.g. model.onnx")
    parser.add_argument("--overwrite", action="store_true", help="--out exists: replace it")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                        help=f"ONNX opset, 17 or newer (default {DEFAULT_OPSET})")
    # The export traces the PyTorch model on the CPU: --device and --backend would change nothing.
    add_model_arguments(parser, device=False, backend=False)


def run(args: argparse.Namespace) -> int:
    out = export_onnx(args.weights, args.out, args.opset, overwrite=args.overwrite)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, opset {args.opset}, dynamic batch)")
    return 0
