"""``msfer predict``: recognise emotions in photos, folders, videos or a webcam (:mod:`msfer.inference.predict`)."""
from __future__ import annotations

import argparse
import sys
from contextlib import ExitStack
from pathlib import Path

from ..errors import MsferError
from ..faces.detection import DEFAULT_DETECT_SIZE, DEFAULT_MIN_FACE
from ..files import DiskFullError, ready_folder, sole_writer
from ..inference.predict import (
    QualityFilter,
    check_outputs,
    collect_inputs,
    predict_inputs,
    shard,
)
from ..inference.recognizer import EmotionRecognizer
from ..inference.results import MIN_QUALITY, ResultWriter
from ..outputs import existing_out_mode, printable
from .options import (
    add_decision_argument,
    add_existing_out_arguments,
    add_model_arguments,
    check_at_least_one,
    file_argument,
    model_options,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="image files, folders (searched recursively) and video files")
    parser.add_argument("--webcam", type=int, metavar="N", help="also read webcam N (0 is the first); stop with Ctrl+C")
    parser.add_argument("--out", type=file_argument,
                        help="write results to FILE.jsonl (one object per image or frame) or FILE.csv "
                             "(one row per face)")
    add_existing_out_arguments(parser, "--out exists: continue it, skipping the inputs it already has (and replacing "
                                       "annotated copies of the others)",
                               "--out or annotated copies in --save-vis exist: replace them")
    parser.add_argument("--save-vis", type=Path, metavar="DIR",
                        help="write annotated copies into DIR: NAME.msfer.jpg per image, NAME.msfer.mp4 per video, "
                             "at the inputs' relative paths")
    parser.add_argument("--tta", action="store_true",
                        help="average each face with its mirror image (slower, slightly steadier)")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images per detection batch and faces per classifier batch (default 32)")
    parser.add_argument("--detect-size", type=int, default=DEFAULT_DETECT_SIZE,
                        help="longest side of the copy the face detector sees; smaller is faster but misses small "
                             f"faces (default {DEFAULT_DETECT_SIZE})")
    parser.add_argument("--min-face", type=float, default=DEFAULT_MIN_FACE, metavar="PX",
                        help="smallest face (pixels) to find in large photos, by a finer detection pass where the "
                             f"--detect-size copy would miss it (default {DEFAULT_MIN_FACE:g}; 0: no finer pass, "
                             "faster)")
    parser.add_argument("--every", type=int, default=1, metavar="N",
                        help="video: process every N-th frame (default 1, all)")
    parser.add_argument("--smooth", type=float, nargs="?", const=0.6, default=0.0, metavar="FACTOR",
                        help="video: smooth each tracked face's probabilities over time, FACTOR in [0, 1) is the "
                             "weight of the past (0.6 if given without a value)")
    parser.add_argument("--min-quality", choices=MIN_QUALITY, default="low",
                        help="leave out faces below this quality: 'low' keeps every face (each says its quality), "
                             "'good' leaves out those whose quality is low (default low)")
    add_decision_argument(parser)
    parser.add_argument("--num-shards", type=int, default=1,
                        help="split the sorted input list into this many parts ...")
    parser.add_argument("--shard-index", type=int, default=0, help="... and process only this one (0-based)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.inputs and args.webcam is None:
        raise MsferError("give at least one INPUT (image, folder or video) or --webcam N")
    if not 0.0 <= args.smooth < 1.0:
        raise MsferError(f"--smooth must be in [0, 1), got {args.smooth}")
    check_at_least_one(args, "every", "batch_size")
    options = model_options(args)  # a bad option is an error before any file is looked at
    ResultWriter.format_of(args.out)
    with ExitStack() as held:
        if args.out is not None:  # one writer per output: held from before any work to the end of the run
            held.enter_context(sole_writer(args.out))
        return predict_run(args, options, existing_out_mode(args.out, args.resume, args.overwrite))


def predict_run(args: argparse.Namespace, options: dict, mode: str) -> int:
    """The run, once ``--out`` (opened in ``mode``) is this process's alone."""
    inputs = collect_inputs(args.inputs)
    for path, reason in inputs.skipped:
        print(f"msfer predict: skipped {printable(path)}: {reason}", file=sys.stderr)
    if not (inputs.items or inputs.missing or inputs.not_media or args.webcam is not None):
        print("msfer predict: nothing to process: no image or video among the inputs", file=sys.stderr)
        return 1
    items = shard(inputs.items, args.num_shards, args.shard_index)
    if args.save_vis is not None:
        ready_folder(args.save_vis, "--save-vis")
    check_outputs(inputs, items, args.out, args.save_vis, args.overwrite or (args.resume and args.out is not None),
                  args.webcam)
    recognizer = EmotionRecognizer(**options, tta=args.tta, batch_size=args.batch_size,
                                   detect_size=args.detect_size, min_face=args.min_face, decision=args.decision)
    keep = QualityFilter(args.min_quality)
    try:
        tally = predict_inputs(recognizer, inputs, items, args.out, mode, args.save_vis, args.webcam, args.every,
                               args.smooth, keep, (args.shard_index, args.num_shards))
    except DiskFullError as error:
        if args.out is None:
            raise
        raise DiskFullError(f"{error}; {printable(args.out)} keeps every input finished before it: make room and run "
                            "the same command with --resume to do the rest") from None
    if keep.left_out:
        print(f"msfer predict: left out {keep.left_out} face(s) of low quality (--min-quality good)", file=sys.stderr)
    failed_now = len(tally.errors - tally.earlier)
    if failed_now:
        print(f"msfer predict: {failed_now} input(s) could not be processed (see the messages above)", file=sys.stderr)
    if tally.earlier_errors:
        print(f"msfer predict: {printable(args.out)} also holds the error records of {len(tally.earlier_errors)} "
              "input(s) from before this run (--resume does not try them again)", file=sys.stderr)
    if args.out is not None:
        print(tally.line(args.out))
    return 1 if tally.errors else 0  # the whole output: a resumed run with errors from before is not a success
