"""Emotion recognition on video files and webcams, frame by frame, with tracked faces.

Every ``every``-th frame is processed (frame skipping); the frames in between carry
the faces of the last processed frame, so an annotated video shows no flicker, but
only processed frames are reported (``processed=True``). Frames of a file are
detected and classified in chunks of ``frames_per_batch`` (one batched forward pass
each, which is what makes video fast on a CPU); a webcam is processed frame by frame,
since waiting for a chunk would add latency. Timestamps are the frame index over
the stream's frame rate for files, and seconds since the start for webcams.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..errors import MsferError
from .recognizer import EmotionRecognizer, FaceResult
from .tracking import FaceTracker

# Frames held back until their chunk is recognised: bounds memory when `every` is large.
MAX_PENDING_FRAMES = 64
VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp"})


@dataclass
class VideoFrame:
    """One frame: its index, time in seconds, RGB pixels (None once dropped to save memory), and the tracked faces."""

    index: int
    time: float
    image: np.ndarray | None
    faces: list[FaceResult]
    processed: bool


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


class VideoSource:
    """An opened video file or webcam (a context manager that releases it), with its frame rate and length.

    Opening raises a clear :class:`MsferError` for a missing or undecodable file or an absent webcam.
    """

    def __init__(self, source: str | Path | int) -> None:
        self.source, self.live = source, isinstance(source, int)
        if self.live:
            self.capture = cv2.VideoCapture(source)
            if not self.capture.isOpened():
                raise MsferError(f"webcam {source} cannot be opened (no such camera, or it is in use)")
        else:
            if not Path(source).is_file():
                raise MsferError(f"{source}: no such video file")
            self.capture = cv2.VideoCapture(str(source))
            if not self.capture.isOpened():
                raise MsferError(f"{source}: cannot open as a video (unknown format or corrupt file)")
        self.fps: float = self.capture.get(cv2.CAP_PROP_FPS) or 0.0
        count = int(self.capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count: int | None = count if count > 0 and not self.live else None

    def __enter__(self) -> "VideoSource":
        return self

    def __exit__(self, *exc_info) -> None:
        self.capture.release()


def predict_video(
    recognizer: EmotionRecognizer,
    video: VideoSource,
    every: int = 1,
    smoothing: float = 0.0,
    frames_per_batch: int = 8,
) -> Iterator[VideoFrame]:
    """Every frame of ``video`` with its faces; see the module docstring.

    Raises :class:`MsferError` if the video gives no frame at all.
    """
    tracker = FaceTracker(smoothing=smoothing)
    every, frames_per_batch = max(int(every), 1), 1 if video.live else max(int(frames_per_batch), 1)
    started = time.monotonic()
    pending: list[VideoFrame] = []
    last_faces: list[FaceResult] = []
    index = 0
    while True:
        ok, bgr = video.capture.read()
        if not ok:
            break
        seconds = time.monotonic() - started if video.live or video.fps <= 0 else index / video.fps
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        pending.append(VideoFrame(index, round(seconds, 3), rgb, [], index % every == 0))
        index += 1
        if sum(frame.processed for frame in pending) == frames_per_batch or len(pending) >= MAX_PENDING_FRAMES:
            last_faces = _recognise(recognizer, tracker, pending, last_faces)
            yield from pending
            pending = []
    if index == 0:
        raise MsferError(f"{video.source}: no frame could be decoded")
    _recognise(recognizer, tracker, pending, last_faces)
    yield from pending


def _recognise(
    recognizer: EmotionRecognizer, tracker: FaceTracker, frames: list[VideoFrame], last_faces: list[FaceResult]
) -> list[FaceResult]:
    """Fill in the faces of ``frames`` (processed ones in one batch, in order through the tracker); return the last faces."""
    processed = [frame for frame in frames if frame.processed]
    for frame, faces in zip(processed, recognizer.predict_batch([frame.image for frame in processed])):
        frame.faces = tracker.update(faces)
    for frame in frames:
        if frame.processed:
            last_faces = frame.faces
        else:
            frame.faces = last_faces
    return last_faces
