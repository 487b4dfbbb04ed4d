"""``msfer predict``: emotions of every face in photos, folders, videos or a webcam.

Inputs are image files, folders (searched recursively for images and videos),
video files (by extension) and ``--webcam N``. Results go to ``--out``: JSON Lines
(one object per image or processed video frame) or CSV (one row per face; a source
without a face gets one row with empty face columns), chosen by the file's
extension. A source that cannot be read is reported on stderr and, in the output, as
a record with an ``error``; the others are still processed and the exit status is 1.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..errors import MsferError
from ..labels import EMOTIONS
from .options import add_model_arguments, model_options
from .recognizer import EmotionRecognizer, FaceResult, to_rgb_array
from .video import VIDEO_EXTENSIONS, VideoFrame, VideoSource, is_video, predict_video
from .visualize import draw_faces

IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)
CSV_FACE_FIELDS = ["face", "track_id", "x1", "y1", "x2", "y2", "score", "label", "confidence", *EMOTIONS]


@dataclass(frozen=True)
class InputItem:
    """A file to process and its name under ``--save-vis`` (relative to the folder it was found in)."""

    path: Path
    name: Path


def collect_inputs(inputs: Iterable[Path]) -> tuple[list[InputItem], list[Path]]:
    """Files named by ``inputs`` (folders expanded recursively, in sorted order), and the paths that do not exist."""
    items, missing = [], []
    for given in inputs:
        if given.is_dir():
            found = sorted(p for p in given.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
            items.extend(InputItem(path, Path(given.resolve().name) / path.relative_to(given)) for path in found)
        elif given.exists():
            items.append(InputItem(given, Path(given.name)))
        else:
            missing.append(given)
    return items, missing


def shard(items: list[InputItem], num_shards: int, shard_index: int) -> list[InputItem]:
    """The ``shard_index``-th of ``num_shards`` interleaved parts of ``items`` (deterministic: inputs are sorted)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise MsferError(f"--shard-index must be in 0..{num_shards - 1} and --num-shards at least 1")
    return items[shard_index::num_shards]


ECHO_LIMIT = 50


class ResultWriter:
    """Writes records to JSON Lines or CSV by the file's extension (or nowhere when ``path`` is None)."""

    def __init__(self, path: Path | None, stack: ExitStack) -> None:
        self.format = None if path is None else path.suffix.lower().lstrip(".")
        if self.format not in (None, "jsonl", "csv"):
            raise MsferError(f"--out {path}: use a .jsonl or .csv file")
        self.file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.file = stack.enter_context(open(path, "w", encoding="utf-8", newline=""))
        if self.format == "csv":
            self.csv = csv.DictWriter(self.file, ["source", "frame", "time", *CSV_FACE_FIELDS, "error"])
            self.csv.writeheader()

    def write(self, record: dict) -> None:
        """One record: ``source``, optionally ``frame``/``time``, and ``faces`` (FaceResult) or ``error``."""
        if self.format == "jsonl":
            faces = [face.to_dict() for face in record.get("faces", [])]
            self.file.write(json.dumps({**record, **({"faces": faces} if "faces" in record else {})}) + "\n")
        elif self.format == "csv":
            base = {key: record[key] for key in ("source", "frame", "time", "error") if key in record}
            rows = [_csv_row(index, face) for index, face in enumerate(record.get("faces", []))] or [{}]
            self.csv.writerows({**base, **row} for row in rows)
        if self.file is not None:
            self.file.flush()  # an interrupted run keeps every record written so far


def _csv_row(index: int, face: FaceResult) -> dict:
    x1, y1, x2, y2 = face.box
    return {"face": index, "track_id": face.track_id, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": face.score,
            "label": face.label, "confidence": face.confidence, **face.probs}


def predict_images(
    recognizer: EmotionRecognizer, items: list[InputItem], writer: ResultWriter, vis_dir: Path | None, problems: list[str]
) -> None:
    """Recognise ``items`` (images) in batches; unreadable ones go to ``problems`` and the rest carry on.

    A handful of images (up to ``ECHO_LIMIT``) also get a line each on the terminal; bulk runs stay quiet.
    """
    echo = len(items) <= ECHO_LIMIT
    with tqdm(total=len(items), desc="images", unit="img", disable=not items) as progress:
        for start in range(0, len(items), recognizer.batch_size):
            loaded: list[tuple[InputItem, np.ndarray]] = []
            for item in items[start : start + recognizer.batch_size]:
                try:
                    loaded.append((item, to_rgb_array(item.path)))
                except MsferError as error:
                    _report(problems, writer, str(item.path), str(error))
            results = recognizer.predict_batch([image for _, image in loaded])
            for (item, image), faces in zip(loaded, results):
                writer.write({"source": str(item.path), "faces": faces})
                if echo:
                    found = ", ".join(f"{face.label} {face.confidence:.2f}" for face in faces) or "no face"
                    tqdm.write(f"{item.path}: {found}")
                if vis_dir is not None:
                    out = (vis_dir / item.name).with_suffix(".jpg")
                    out.parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(draw_faces(image, faces)).save(out, quality=92)
            progress.update(len(items[start : start + recognizer.batch_size]))


def predict_stream(
    recognizer: EmotionRecognizer, source: Path | int, name: Path, args: argparse.Namespace, writer: ResultWriter,
) -> None:
    """Recognise a video file or webcam; write processed frames, and with ``--save-vis`` an annotated .mp4."""
    with VideoSource(source) as video, tqdm(total=video.frame_count, desc=str(name), unit="frame") as progress:
        video_writer = None
        try:
            for frame in _until_interrupted(predict_video(recognizer, video, args.every, args.smooth), video.live):
                if frame.processed:
                    writer.write({"source": str(source), "frame": frame.index, "time": frame.time, "faces": frame.faces})
                if args.save_vis is not None:
                    if video_writer is None:
                        video_writer = _open_video_writer(args.save_vis / name.with_suffix(".mp4"), video.fps, frame)
                    video_writer.write(cv2.cvtColor(draw_faces(frame.image, frame.faces), cv2.COLOR_RGB2BGR))
                progress.update()
        finally:
            if video_writer is not None:
                video_writer.release()


def _until_interrupted(frames: Iterator[VideoFrame], live: bool) -> Iterator[VideoFrame]:
    """A webcam runs until Ctrl+C, which then ends it normally (the outputs are closed properly)."""
    try:
        yield from frames
    except KeyboardInterrupt:
        if not live:
            raise
        print("webcam stopped", file=sys.stderr)


def _open_video_writer(path: Path, fps: float, frame: VideoFrame) -> cv2.VideoWriter:
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frame.image.shape[:2]
    return cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps or 25.0, (width, height))


def _report(problems: list[str], writer: ResultWriter, source: str, message: str) -> None:
    problems.append(message)
    writer.write({"source": source, "error": message})
    tqdm.write(f"msfer predict: skipped {message}", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="*", type=Path, metavar="INPUT",
                        help="image files, folders (searched recursively) and video files")
    parser.add_argument("--webcam", type=int, metavar="N", help="also read webcam N (0 is the first); stop with Ctrl+C")
    parser.add_argument("--out", type=Path, help="write results to FILE.jsonl (one object per image or frame) or FILE.csv (one row per face)")
    parser.add_argument("--save-vis", type=Path, metavar="DIR", help="write annotated images (.jpg) and videos (.mp4) into DIR")
    parser.add_argument("--tta", action="store_true", help="average each face with its mirror image (slower, slightly steadier)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per detection batch and faces per classifier batch (default 32)")
    parser.add_argument("--detect-size", type=int, default=640,
                        help="longest side of the copy the face detector sees; smaller is faster but misses small faces (default 640)")
    parser.add_argument("--every", type=int, default=1, metavar="N", help="video: process every N-th frame (default 1, all)")
    parser.add_argument("--smooth", type=float, nargs="?", const=0.6, default=0.0, metavar="FACTOR",
                        help="video: smooth each tracked face's probabilities over time, FACTOR in [0, 1) is the weight of the past (0.6 if given without a value)")
    parser.add_argument("--num-shards", type=int, default=1, help="split the sorted input list into this many parts ...")
    parser.add_argument("--shard-index", type=int, default=0, help="... and process only this one (0-based)")
    add_model_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if not args.inputs and args.webcam is None:
        raise MsferError("give at least one INPUT (image, folder or video) or --webcam N")
    if not 0.0 <= args.smooth < 1.0:
        raise MsferError(f"--smooth must be in [0, 1), got {args.smooth}")
    items, missing = collect_inputs(args.inputs)
    items = shard(items, args.num_shards, args.shard_index)
    recognizer = EmotionRecognizer(**model_options(args), tta=args.tta, batch_size=args.batch_size,
                                   detect_size=args.detect_size)
    with ExitStack() as stack:
        writer = ResultWriter(args.out, stack)
        problems: list[str] = []
        for path in missing:
            _report(problems, writer, str(path), f"{path}: no such file or folder")
        predict_images(recognizer, [item for item in items if not is_video(item.path)], writer, args.save_vis, problems)
        streams = [(item.path, item.name) for item in items if is_video(item.path)]
        if args.webcam is not None:
            streams.append((args.webcam, Path(f"webcam{args.webcam}")))
        for source, name in streams:
            try:
                predict_stream(recognizer, source, name, args, writer)
            except MsferError as error:
                _report(problems, writer, str(source), str(error))
    if problems:
        print(f"msfer predict: {len(problems)} input(s) could not be processed (see the messages above)", file=sys.stderr)
        return 1
    return 0
