"""``msfer annotate``: RetinaFace pseudo-labels of the emotion regions for a whole dataset
(:mod:`msfer.regions.annotator`).

The output is resumable: with ``--resume``, ids already in ``--out`` are skipped; an existing
``--out`` without ``--resume`` or ``--overwrite`` is refused (:func:`msfer.outputs.existing_out_mode`,
the rule ``msfer predict`` follows too), and so is a second run while one writes it
(:func:`msfer.files.sole_writer`). The run ends with one line of what the file holds
(:func:`msfer.outputs.summary_line`; an unreadable image is an error).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import MsferError
from ..faces.retinaface import RetinaFaceDetector
from ..files import sole_writer
from ..outputs import InputFiles, existing_out_mode, printable, summary_line
from ..regions.annotations import STATUS_UNREADABLE
from ..regions.annotator import CANDIDATE_SCORE, DETECT_SIZE, Annotator, annotate_samples, rates_table
from ..regions.filter import QualityRules
from .options import add_existing_out_arguments


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..data.readers import READERS

    parser.add_argument("data", type=Path, help="dataset folder (or CSV file, for FER2013 in Kaggle form)")
    parser.add_argument("--format", required=True, choices=sorted(READERS), help="layout of the dataset")
    parser.add_argument("--out", required=True, type=Path,
                        help="annotation file (.jsonl) to write; an existing one needs --resume or --overwrite")
    add_existing_out_arguments(parser, "--out exists: continue it, skipping the ids it already has (after an "
                                       "interruption)")
    parser.add_argument("--split", help="annotate only this split (default: every split of the dataset)")
    parser.add_argument("--review", type=Path, metavar="SHEET.png",
                        help="also draw a contact sheet of random accepted and rejected images")
    parser.add_argument("--batch-size", type=int, default=256, help="images per detector call (default 256)")
    parser.add_argument("--score-threshold", type=float, default=0.5,
                        help="RetinaFace confidence a face needs to be accepted (default 0.5); weaker faces "
                             f"down to {CANDIDATE_SCORE} are written as rejected:low_score")
    parser.add_argument("--merge-eyes", action="store_true",
                        help="write one 'eyes' region instead of 'left_eye' and 'right_eye'")
    parser.add_argument("--detector-model", type=Path, metavar="PATH",
                        help="another RetinaFace ONNX export with the same outputs "
                             "(default: the bundled MobileNet-0.25)")
    parser.add_argument("--detect-size", type=int, default=DETECT_SIZE,
                        help=f"smaller images are enlarged so their longer side has this many pixels "
                             f"(default {DETECT_SIZE})")
    parser.add_argument("--threads", type=int, help="onnxruntime threads (default: all cores)")


def report_skips(index) -> None:
    """Name on stderr what the dataset reader left out (a broken link, a file that is no image), never silently."""
    for problem in index.problems:
        print(f"msfer annotate: {printable(problem)}", file=sys.stderr)
    if index.skipped:
        counts = ", ".join(f"{reason} {count}" for reason, count in sorted(index.skipped.items()))
        print(f"msfer annotate: left out by the {index.format} reader, not annotated: {counts}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise MsferError(f"--batch-size must be at least 1, got {args.batch_size}")
    with sole_writer(args.out):  # one writer per output: held from before any work to the end of the run
        return annotate_run(args, existing_out_mode(args.out, args.resume, args.overwrite))


def annotate_run(args: argparse.Namespace, mode: str) -> int:
    """The run, once ``--out`` (to be written afresh, ``mode`` "w", or continued, "a") is this process's alone."""
    from ..data.readers import read_dataset

    index = read_dataset(args.data, args.format)
    report_skips(index)
    samples = index.samples
    if args.split is not None:
        samples = [sample for sample in samples if sample.split == args.split]
        if not samples:
            raise MsferError(f"{printable(args.data)} has no split {printable(repr(args.split))}; "
                             f"its splits: {', '.join(index.splits()) or 'none'}")
    # Only same-named images can be the output file (a cheap filter before the file-system checks).
    same_name = (sample.path for sample in samples
                 if sample.path is not None and Path(sample.path).name == args.out.name)
    InputFiles(same_name).refuse(args.out, "--out")  # before --overwrite removes anything
    if mode == "w" and args.out.exists():
        args.out.unlink()  # --overwrite: start afresh
    detector = RetinaFaceDetector(args.detector_model, score_threshold=min(CANDIDATE_SCORE, args.score_threshold),
                                  threads=args.threads)
    annotator = Annotator(detector, QualityRules(min_score=args.score_threshold), args.merge_eyes, args.detect_size)
    records, done, elapsed = annotate_samples(annotator, samples, args.out, args.batch_size)
    print(rates_table(samples, records))
    rate = done / max(elapsed, 1e-9)
    print(f"annotated {done} images in {elapsed:.1f} s ({rate:.0f} images/s)")
    if args.review is not None:
        from ..regions.review import write_review_sheet

        write_review_sheet(args.review, samples, records)
        print(f"review sheet -> {printable(args.review)}")
    # The closing line: the whole file (a resumed one holds earlier runs' images too); an unreadable image's
    # record is its error.
    print(summary_line(args.out, len(records), sum(record.get("faces") or 0 for record in records.values()),
                       sum(record.get("status") == STATUS_UNREADABLE for record in records.values()),
                       this_run=done))
    return 0
