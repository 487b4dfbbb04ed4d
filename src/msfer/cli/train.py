"""``msfer train``: train a model from a YAML config (:mod:`msfer.engine.trainer`).

    msfer train --config configs/cpu.yaml [key.sub=value ...] [--output-dir DIR]
    msfer train --resume runs/cpu [key.sub=value ...]          # continue exactly where it stopped
    msfer train --resume runs/cpu/best.pt --test-only           # evaluate a checkpoint on the validation split
    torchrun --nproc_per_node 4 -m msfer.cli train --config configs/gpu.yaml   # data-parallel
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from ..engine.config import load_config
from ..engine.trainer import train
from ..errors import MsferError
from ..model.checkpoint import load_checkpoint, resolve_checkpoint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see configs/); may name _base_ files")
    parser.add_argument("opts", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.lr=3e-4 data.root=/data/fer2013 (values parsed as YAML)")
    parser.add_argument("--resume", type=Path, metavar="PATH_OR_DIR",
                        help="continue from a checkpoint, or a run directory's last.pt, with its config "
                             "(plus overrides)")
    parser.add_argument("--output-dir", type=Path, help="where the run writes (overrides the config's output_dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run in a directory that holds one: its checkpoints, metrics.csv, config.yaml "
                             "and TensorBoard events are removed first")
    parser.add_argument("--test-only", action="store_true",
                        help="only evaluate the --resume checkpoint on the validation split, then exit")


def run(args: argparse.Namespace) -> int:
    train_or_test(args)
    return 0


def train_or_test(args: argparse.Namespace) -> dict[str, Any]:
    """Train (or, with ``--test-only``, evaluate); return the summary (best epoch and its validation metrics)."""
    checkpoint = None
    if args.resume is not None:
        if args.config is not None:
            raise MsferError("--resume continues a run with its own config: drop --config, pass changes as key=value")
        checkpoint = load_checkpoint(args.resume)
        config = load_config(overrides=args.opts, base=checkpoint["config"])
        output_dir = args.output_dir or resolve_checkpoint(args.resume).parent
    elif args.config is not None:
        config = load_config(args.config, args.opts)
        output_dir = args.output_dir or Path(config["output_dir"])
    else:
        raise MsferError("give --config FILE for a new run, or --resume PATH to continue one")
    config["output_dir"] = str(output_dir)
    if args.test_only:
        if args.resume is None:
            raise MsferError("--test-only evaluates a checkpoint: give it with --resume PATH")
        return train(config, Path(output_dir), test_checkpoint=resolve_checkpoint(args.resume, prefer="best.pt"))
    if importlib.util.find_spec("tensorboard") is None:  # fail before any data is read
        raise MsferError("msfer train writes TensorBoard logs: install what training needs with "
                         "pip install 'msfer[train]' (or pip install tensorboard)")
    return train(config, Path(output_dir), checkpoint, overwrite=args.overwrite)
