"""``msfer report``: an HTML emotion report for a video (:mod:`msfer.inference.report`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MsferError
from ..faces.detection import DEFAULT_DETECT_SIZE, DEFAULT_MIN_FACE
from ..files import ready_folder, sole_writer, writing
from ..inference.recognizer import EmotionRecognizer
from ..inference.report import (
    DEFAULT_UNCERTAIN_BELOW,
    PER_FACE_FILE,
    processed_frames,
    report_files,
    write_video_report,
)
from ..inference.results import MIN_QUALITY
from ..outputs import InputFiles, printable, summary_line
from .options import add_decision_argument, add_model_arguments, check_at_least_one, model_options


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", type=Path, metavar="VIDEO", help="the video file to analyse")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR",
                        help="folder for report.html, its plots and frames.jsonl")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="process every N-th frame (default 1, all)")
    parser.add_argument("--smooth", type=float, default=0.6, metavar="FACTOR",
                        help="weight of the past in each face's moving average of probabilities, in [0, 1); 0 is off "
                             "(default 0.6)")
    parser.add_argument("--detect-size", type=int, default=DEFAULT_DETECT_SIZE,
                        help=f"longest side of the copy the face detector sees (default {DEFAULT_DETECT_SIZE})")
    parser.add_argument("--min-face", type=float, default=DEFAULT_MIN_FACE, metavar="PX",
                        help=f"smallest face (pixels) to find in large frames (default {DEFAULT_MIN_FACE:g}; "
                             "0: no finer pass)")
    parser.add_argument("--uncertain-below", type=float, default=DEFAULT_UNCERTAIN_BELOW, metavar="P",
                        help="a moment whose label has a probability below P is shown as uncertain, not as that "
                             f"emotion (default {DEFAULT_UNCERTAIN_BELOW:g}: with calibrated probabilities, the labels "
                             "more likely wrong than right; 0 turns it off)")
    parser.add_argument("--min-quality", choices=MIN_QUALITY, default="low",
                        help="'low' (default) keeps low-quality faces, marked as such; 'good' leaves them out")
    add_decision_argument(parser)
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not 0.0 <= args.smooth < 1.0:
        raise MsferError(f"--smooth must be in [0, 1), got {args.smooth}")
    if not 0.0 <= args.uncertain_below <= 1.0:
        raise MsferError(f"--uncertain-below must be in [0, 1], got {args.uncertain_below}")
    check_at_least_one(args, "every")
    ready_folder(args.out, "--out")  # before the video's minutes, not after them
    created = not args.out.exists()
    with writing(args.out):
        args.out.mkdir(parents=True, exist_ok=True)  # to be held
    try:
        with sole_writer(args.out, folder=True):  # one writer per output: held from before any work to the end
            return report_run(args)
    except BaseException:
        if created:  # a run that failed before writing anything leaves no empty folder behind
            try:
                args.out.rmdir()
            except OSError:
                pass
        raise


def report_run(args: argparse.Namespace) -> int:
    """The run, once the folder ``--out`` is this process's alone."""
    # Refused before the work, not after: the fixed names, and any timeline_<N>.png or face_<N>.jpg.
    inputs = InputFiles([args.video])
    for name in report_files([]):
        inputs.refuse(args.out / name, "--out")
    if PER_FACE_FILE.fullmatch(args.video.name):
        inputs.refuse(args.out / args.video.name, "--out")
    recognizer = EmotionRecognizer(**model_options(args), detect_size=args.detect_size, min_face=args.min_face,
                                   decision=args.decision)
    frames, shortfall, thumbnails = processed_frames(recognizer, args.video, args.every, args.smooth)
    settings = {"model": f"{recognizer.model_name} ({args.weights or 'bundled'})", "every": args.every,
                "smoothing": args.smooth,
                "decision": recognizer.decision, "uncertain below": args.uncertain_below,
                "min quality": args.min_quality}
    if shortfall is not None:  # the report covers the frames read and says so; the run counts as failed
        settings["incomplete video"] = shortfall
    path = write_video_report(args.video, frames, args.out, settings, args.uncertain_below, args.min_quality,
                              recognizer.calibration, thumbnails)
    if shortfall is not None:
        print(f"msfer report: {printable(args.video)}: {shortfall}; the report covers the frames read",
              file=sys.stderr)
    # The closing line: the report of one video, its processed frames and the faces in them.
    print(summary_line(path, 1, sum(len(frame.faces) for frame in frames), int(shortfall is not None), len(frames)))
    return 1 if shortfall is not None else 0
