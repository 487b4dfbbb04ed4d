"""Emotion recognition on video files and webcams, frame by frame, with tracked faces.

Every ``every``-th frame is processed (frame skipping); the frames in between carry
the faces of the last processed frame, so an annotated video shows no flicker, but
only processed frames are reported (``processed=True``). Frames of a file are
detected and classified in chunks of ``frames_per_batch`` (one batched forward pass
each, which is what makes video fast on a CPU); a webcam is processed frame by frame,
since waiting for a chunk would add latency.

**Time.** A file's frames are decoded with PyAV (FFmpeg) and each frame's ``time`` is
its presentation timestamp from the container, in seconds from the container's start:
the moment a player shows it. Phones and browsers record at a variable frame rate,
so the frame index over an average frame rate can be seconds off; the timestamps are
not. (A frame without a timestamp, rare, gets the previous one plus one average frame
interval.) A webcam's time is seconds since it was opened. The display rotation a
phone stores (its display matrix) is applied, so frames come out upright.

File names are handed to FFmpeg as Python strings, so names that are not valid UTF-8
work too (OpenCV's reader crashed on them).

**Animated and multi-page images** (GIF, APNG, animated WebP, multi-page TIFF) are read as
short videos (:class:`ImageFrames`, which :func:`open_video` picks for them): every frame, with
its index and the time it is shown from (None for a TIFF's pages, which have no time).

**Truncated and damaged files.** A file cut short (a copy that was interrupted, a recording
whose camera died) often still opens and plays in part. Its frames are read as far as they
go, as a player does, and :meth:`VideoSource.shortfall` then says so: how many frames the
container declares and how many were read, or where reading stopped on an error. ``msfer
predict`` and ``msfer report`` keep the frames read and count the video as an error.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..data.images import ADDRESS_REASON, address, not_a_file_reason
from ..errors import MsferError
from ..files import flush_to_disk, temporary_beside, writing
from .recognizer import EmotionRecognizer
from .results import FaceResult
from .tracking import FaceTracker

log = logging.getLogger(__name__)

# Frames held back until their chunk is recognised: bounds memory when `every` is large.
MAX_PENDING_FRAMES = 64
# File name extensions read as video (compared lower-case): the containers phones, cameras,
# camcorders (AVCHD .mts/.m2ts), browsers, screen recorders and older players write.
VIDEO_EXTENSIONS = frozenset({
    ".mp4", ".m4v", ".mov", ".qt", ".avi", ".mkv", ".mk3d", ".webm", ".wmv", ".asf", ".flv", ".f4v",
    ".3gp", ".3g2", ".mpg", ".mpeg", ".mpe", ".m1v", ".m2v", ".vob", ".ts", ".mts", ".m2ts", ".m2t",
    ".mxf", ".ogv", ".dv", ".divx", ".rm", ".rmvb", ".y4m", ".hevc", ".h264", ".264",
})


@dataclass
class VideoFrame:
    """One frame: its index, time in seconds (None for a page of a multi-page image), RGB pixels (None once dropped
    to save memory), the tracked faces, whether they were classified in this frame (``processed``) or repeated
    from the last classified one, and the ``source`` it is from."""

    index: int
    time: float | None
    image: np.ndarray | None
    faces: list[FaceResult]
    processed: bool
    source: str | os.PathLike | int | None = None  # the file or webcam (EmotionRecognizer.predict_video sets it)


def is_video(path: Path) -> bool:
    """Whether ``path``'s extension is a video container's (any case; see :data:`VIDEO_EXTENSIONS`)."""
    return path.suffix.lower() in VIDEO_EXTENSIONS


def probe_video(path: Path) -> bool:
    """Whether FFmpeg recognises ``path``'s content as a container with a video stream.

    For files without a known extension.
    """
    import av

    try:
        with av.open(str(path), metadata_errors="ignore") as container:
            return bool(container.streams.video)
    except (av.FFmpegError, OSError, ValueError, UnicodeError):
        return False


class _Frames:
    """What a source of frames says after reading them: how many it declares and read, and why it stopped."""

    live = False
    frame_count: int | None = None
    frames_read = 0
    stopped: str | None = None  # why reading ended before the file did (an error)
    declared_by = "the container"
    duration: float | None = None  # seconds, as declared, where no frame count is (Matroska, WebM)
    last_time: float | None = None  # of the last frame read

    def shortfall(self) -> str | None:
        """Why fewer frames were read than the file holds, once :meth:`frames` is exhausted; None when none were
        missed (or a webcam). Says how many frames the file declares and how many were read."""
        if self.live:
            return None
        declared = self.frame_count
        read = f"{self.frames_read} frame{'s' if self.frames_read != 1 else ''} read"
        if declared is not None and self.frames_read < declared:
            why = f"; {self.stopped}" if self.stopped else ""
            return (f"decoding stopped early: {self.declared_by} declares {declared} frames, {read} (the file is "
                    f"truncated or damaged{why})")
        if self.stopped:
            counted = f" of the {declared} {self.declared_by} declares" if declared else ""
            return f"decoding stopped early: {read}{counted}; {self.stopped}"
        if declared is None and self.duration and self.last_time is not None:
            # a frame interval short of the end is normal; more than half a second, or a tenth, is not
            if self.last_time + max(0.5, 0.1 * self.duration) < self.duration:
                return (f"decoding stopped early: {self.declared_by} declares {self.duration:.2f} s, frames read "
                        f"up to {self.last_time:.2f} s ({read}; the file is truncated or damaged)")
        return None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        pass


class VideoSource(_Frames):
    """An opened video file or webcam (a context manager that releases it), with its frame rate and length.

    ``frames()`` yields ``(rgb, seconds)`` per frame: H x W x 3 uint8 RGB, upright, and the
    frame's presentation time (see the module docstring). ``fps`` is the average frame rate
    (0.0 when unknown), ``frame_count`` the number of frames the container declares (None
    when it does not say, and for a webcam). Opening raises a clear :class:`MsferError` for a
    missing or undecodable file or an absent webcam. Once the frames are read,
    :meth:`shortfall` says whether decoding stopped early.
    """

    def __init__(self, source: str | Path | int) -> None:
        self.source, self.live = source, isinstance(source, int)
        self.fps, self.frame_count = 0.0, None
        self.frames_read = 0
        self.stopped: str | None = None  # why reading ended before the file did (an error)
        if self.live:
            self.capture = cv2.VideoCapture(source)
            if not self.capture.isOpened():
                raise MsferError(f"webcam {source} cannot be opened (no such camera, or it is in use)")
            self.fps = self.capture.get(cv2.CAP_PROP_FPS) or 0.0
            return
        import av

        url = address(source)
        if url is not None:
            raise MsferError(f"{url}: {ADDRESS_REASON}")
        if not Path(source).is_file():
            what = not_a_file_reason(source) if os.path.lexists(source) else "no such video file"
            raise MsferError(f"{source}: {what}")
        try:
            self.container = av.open(str(source), metadata_errors="ignore")
        except (av.FFmpegError, OSError, ValueError) as error:
            raise MsferError(f"{source}: cannot open as a video (unknown format or corrupt file: {error})") from None
        if not self.container.streams.video:
            self.container.close()
            raise MsferError(f"{source}: cannot open as a video (the file has no video stream)")
        self.stream = self.container.streams.video[0]
        self.stream.thread_type = "AUTO"  # frame- and slice-threaded decoding
        rate = self.stream.average_rate or self.stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self.frame_count = self.stream.frames or None
        if self.frame_count is None and self.container.duration:
            self.duration = self.container.duration / 1e6  # in FFmpeg's AV_TIME_BASE, microseconds

    def frames(self) -> Iterator[tuple[np.ndarray, float]]:
        """Every frame as ``(rgb, seconds)``, in presentation order."""
        yield from (self._live_frames() if self.live else self._file_frames())

    def _live_frames(self) -> Iterator[tuple[np.ndarray, float]]:
        started = time.monotonic()
        while True:
            ok, bgr = self.capture.read()
            if not ok:
                return
            yield cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), time.monotonic() - started

    def _file_frames(self) -> Iterator[tuple[np.ndarray, float]]:
        import av

        # Times count from the container's start, as a player's clock does; a stream whose
        # start is not declared counts from its first frame.
        origin = self.container.start_time / 1e6 if self.container.start_time is not None else None
        step = 1.0 / self.fps if self.fps > 0 else 0.0
        last = None
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except (av.FFmpegError, OSError) as error:  # a damaged container: keep what was read, as a player does
                self.stopped = f"reading stopped at {last or 0.0:.2f} s on an error ({error})"
                log.debug("%s: %s", self.source, self.stopped)
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as error:  # one damaged packet: skip it, as a player does
                log.debug("%s: skipped an undecodable packet (%s)", self.source, error)
                continue
            for frame in decoded:
                if frame.pts is not None:
                    seconds = float(frame.pts * frame.time_base)
                    if origin is None:
                        origin = seconds
                    seconds -= origin
                else:
                    seconds = 0.0 if last is None else last + step
                last = self.last_time = seconds
                rgb = frame.to_ndarray(format="rgb24")
                quarter_turns = round((frame.rotation or 0) / 90) % 4  # counter-clockwise, as np.rot90 counts
                if quarter_turns:
                    rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))
                self.frames_read += 1
                yield rgb, seconds

    def close(self) -> None:
        if self.live:
            self.capture.release()
        else:
            self.container.close()


class ImageFrames(_Frames):
    """An animated image (GIF, APNG, WebP) or a multi-page TIFF, read as a short video: the interface of
    :class:`VideoSource` (``frames()``, ``fps``, ``frame_count``, :meth:`shortfall`, a context manager).

    Frames come from :func:`msfer.data.images.read_frames`, timed by the durations the file gives them; a
    TIFF's pages have no time (None; ``timed`` is False). ``fps`` is nominal (10 for an animation, 1 for pages:
    an annotated copy shows each page for a second). A frame after the first that cannot be decoded ends the
    reading, as a damaged video's does (:meth:`shortfall`); a first frame that cannot is an error naming the file.
    """

    declared_by = "the image"

    def __init__(self, path: str | Path) -> None:
        from ..data.images import frame_count, image_format

        self.source = path
        self.frame_count = frame_count(path)
        self.timed = image_format(path) != "TIFF"
        self.fps = 10.0 if self.timed else 1.0
        self.frames_read, self.stopped = 0, None

    def frames(self) -> Iterator[tuple[np.ndarray, float | None]]:
        from ..data.images import UnreadableImageError, read_frames

        try:
            for rgb, seconds in read_frames(self.source):
                self.frames_read += 1
                yield rgb, seconds
        except UnreadableImageError as error:
            if not self.frames_read:
                raise
            self.stopped = str(error).removeprefix(f"{self.source}: ")


def open_video(source: str | Path | int) -> VideoSource | ImageFrames:
    """The frames of ``source``: a webcam or video file (:class:`VideoSource`), or an image that Pillow opens
    (:class:`ImageFrames`: an animated or multi-page image as frames, a still image as one)."""
    if isinstance(source, int) or is_video(Path(source)) or address(source) is not None:
        return VideoSource(source)
    from PIL import Image

    try:
        with Image.open(source) as image:
            is_image = image.format != "MPEG"  # Pillow identifies MPEG video but cannot decode it
    except Exception:  # noqa: BLE001 - not an image Pillow opens: a video, or an error VideoSource reports
        is_image = False
    return ImageFrames(source) if is_image else VideoSource(source)


class AnnotatedVideoWriter:
    """Writes frames to an .mp4 (H.264) that appears at ``path`` only when it is complete.

    Frames go to a temporary file beside ``path`` that :meth:`close` renames onto it (an
    interrupted or failed run leaves no half-written video, and never a truncated copy
    of anything). Each frame keeps its time from the source, so a variable-frame-rate
    video stays in sync. Odd sizes are padded by one pixel (H.264 needs even sides).

    The copy has the first frame's size. A video whose frame size changes on the way (a
    browser or video-call recording, a broadcast capture, clips joined end to end) has
    every later frame of another size **letterboxed** into it: scaled, keeping its
    proportions, to fit, and centred between black bars (:func:`letterbox`). Any failure
    to encode or write a frame is one :class:`MsferError` naming the copy.
    """

    TIME_BASE = Fraction(1, 1000)  # milliseconds

    def __init__(self, path: Path, fps: float) -> None:
        import av

        self.path, self.fps = Path(path), fps or 25.0
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.temporary = temporary_beside(self.path, ".mp4")
            try:
                self.container = av.open(self.temporary, "w", format="mp4")
            except BaseException:  # no container: close() never runs to remove it
                os.unlink(self.temporary)
                raise
        self.stream = None
        self.size: tuple[int, int] | None = None  # the first frame's width and height
        self.last_pts = -1

    def write(self, rgb: np.ndarray, seconds: float) -> None:
        """Add one H x W x 3 uint8 RGB frame shown at ``seconds``."""
        import av

        height, width = rgb.shape[:2]
        try:
            if self.stream is None:
                codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
                options = {"crf": "20", "preset": "veryfast"} if codec == "libx264" else {}
                self.stream = self.container.add_stream(codec, rate=Fraction(self.fps).limit_denominator(1001),
                                                        options=options)
                self.stream.width, self.stream.height = width + width % 2, height + height % 2
                self.stream.pix_fmt = "yuv420p"
                self.stream.codec_context.time_base = self.TIME_BASE
                self.size = (width, height)
            if (width, height) == self.size:  # the first frame's size: padded to even sides
                rgb = np.pad(rgb, ((0, self.stream.height - height), (0, self.stream.width - width), (0, 0)),
                             mode="edge")
            else:
                rgb = letterbox(rgb, self.stream.width, self.stream.height)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            # Strictly increasing (a muxer refuses equal times; two frames within a millisecond are rare).
            self.last_pts = frame.pts = max(round(seconds / self.TIME_BASE), self.last_pts + 1)
            frame.time_base = self.TIME_BASE
            with writing(self.path):  # a full disk
                self.container.mux(self.stream.encode(frame))
        except MsferError:
            raise
        except (av.FFmpegError, ValueError) as error:  # the encoder or muxer refused the frame
            raise MsferError(f"cannot write {self.path}: encoding a {width} x {height} frame failed "
                             f"({type(error).__name__}: {error})") from None

    def close(self, complete: bool = True) -> None:
        """Finish the file and move it onto ``path`` (``complete=False``: discard it)."""
        try:
            with writing(self.path):
                if complete and self.stream is not None:
                    self.container.mux(self.stream.encode())  # flush the encoder
                self.container.close()
                if complete and self.stream is not None:
                    flush_to_disk(self.temporary)
                    os.replace(self.temporary, self.path)
        finally:
            if os.path.exists(self.temporary):
                os.unlink(self.temporary)


def letterbox(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """``rgb`` (H x W x 3 uint8) scaled to fit ``width`` x ``height``, keeping its proportions, and centred
    between black bars: the frame whole and undistorted in a canvas of another size."""
    rows, columns = rgb.shape[:2]
    scale = min(width / columns, height / rows)
    fitted_width = min(width, max(1, round(columns * scale)))
    fitted_height = min(height, max(1, round(rows * scale)))
    if (fitted_width, fitted_height) != (columns, rows):
        interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
        rgb = cv2.resize(rgb, (fitted_width, fitted_height), interpolation=interpolation)
    canvas = np.zeros((height, width, 3), np.uint8)
    top, left = (height - fitted_height) // 2, (width - fitted_width) // 2
    canvas[top : top + fitted_height, left : left + fitted_width] = rgb
    return canvas


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
    # Smoothed labels follow the recognizer's decision rule, like the frames' own.
    tracker = FaceTracker(smoothing=smoothing, decide=lambda probs: int(recognizer.decide(probs[None])[0]))
    every, frames_per_batch = max(int(every), 1), 1 if video.live else max(int(frames_per_batch), 1)
    pending: list[VideoFrame] = []
    last_faces: list[FaceResult] = []
    index = 0
    for rgb, seconds in video.frames():
        pending.append(VideoFrame(index, None if seconds is None else round(seconds, 3), rgb, [],
                                  index % every == 0))
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
    """Fill in the faces of ``frames`` (processed ones in one batch, in order through the tracker).

    Returns the last faces.
    """
    processed = [frame for frame in frames if frame.processed]
    for frame, faces in zip(processed, recognizer.predict_batch([frame.image for frame in processed])):
        frame.faces = tracker.update(faces, frame.image)
    for frame in frames:
        if frame.processed:
            last_faces = frame.faces
        else:
            frame.faces = last_faces
    return last_faces
