"""Emotions of every face in photos, folders, videos or a webcam (``msfer predict``).

Inputs are image files, folders (searched recursively) and video files, and ``--webcam
N``; an address (``http://``, ``rtsp://``) is none, and is reported as such. In a folder,
images and videos are recognised by their extension (any case: every format Pillow and the
HEIF plugin open; :data:`msfer.inference.video.VIDEO_EXTENSIONS`); every other file is
skipped and named on stderr with the reason. A file given by name with an extension neither
list has is recognised by its content. A run that finds nothing to process exits with status 1.

Results go to ``--out``: JSON Lines (one object per image or processed video frame) or
CSV (one row per face; a source without a face gets one row with empty face columns),
chosen by the file's extension. Each face carries its label under the ``--decision`` rule
and its quality measures (:class:`msfer.inference.recognizer.FaceResult`); ``--min-quality
good`` leaves out the faces whose quality is "low" (after tracking, so track ids stay the
same) and says how many on stderr and on each terminal line. Without ``--out`` every photo
and every processed video frame gets a line on the terminal (with it, runs of up to
``ECHO_LIMIT`` photos do). A source that cannot be read is reported on stderr and,
in the output, as a record with an ``error``; the others are still processed and the
exit status is 1, as it is while a resumed output holds an error record of an earlier run
(:func:`predict_inputs`). An existing ``--out`` needs ``--resume`` or ``--overwrite``
(:func:`msfer.outputs.existing_out_mode`), and one run at a time writes it
(:func:`msfer.files.sole_writer`). A full disk stops the run (:class:`msfer.files.DiskFullError`)
without an error record for the input being done, so that ``--resume`` does it again. A run
with ``--out`` ends with one line of what the file holds
(:meth:`msfer.inference.results.Tally.line`).

``--save-vis DIR`` writes an annotated copy of every input under DIR at the input's path
relative to the inputs' common folder (the deepest folder holding every given folder and
the folder of every given file), with ``.msfer.jpg`` (images) or ``.msfer.mp4`` (videos)
appended to the full file name: ``msfer predict shots/`` with ``shots/holiday.jpg``,
``shots/holiday.png`` and ``shots/a/x.jpg`` gives ``DIR/holiday.jpg.msfer.jpg``,
``DIR/holiday.png.msfer.jpg`` and ``DIR/a/x.jpg.msfer.jpg``. Names cannot collide, each
file appears whole (written to a temporary file and renamed), files named like these
copies are skipped in folders (a second run does not annotate the first one's output),
and a run whose output would land on one of its inputs is refused before anything is
written.
"""
from __future__ import annotations

import hashlib
import os
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..data.images import (
    IMAGE_EXTENSIONS,
    MULTI_FRAME_EXTENSIONS,
    address,
    frame_count,
    is_broken_link,
    not_a_file_reason,
)
from ..errors import MsferError
from ..files import LOCK_SUFFIX, DiskFullError, atomic_output
from ..outputs import InputFiles, printable, source_fields
from .recognizer import EmotionRecognizer, to_rgb_array
from .results import IMAGE_VIS_SUFFIX, MIN_QUALITY, VIDEO_VIS_SUFFIX, FaceResult, ResultWriter, Tally, source_key
from .video import AnnotatedVideoWriter, VideoFrame, is_video, open_video, predict_video, probe_video
from .visualize import draw_faces


class IncompleteVideoError(MsferError):
    """A video whose decoding stopped early: its frames that were read are in the output, the rest are missing."""


@dataclass(frozen=True)
class InputItem:
    """A file to process, whether it is a video, and its annotated copy's path under ``--save-vis``."""

    path: Path
    video: bool
    vis_name: Path


@dataclass
class Inputs:
    """What the INPUT arguments hold: files to process, paths that do not exist, and files skipped with the reason."""

    items: list[InputItem] = field(default_factory=list)
    missing: list[Path | str] = field(default_factory=list)  # a str: an address (http://, rtsp://), not a file
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    not_media: list[Path] = field(default_factory=list)  # given by name, but neither an image nor a video
    files: InputFiles = field(default_factory=InputFiles)  # every file to process, to keep outputs off them


def file_kind(path: Path, by_content: bool) -> str | None:
    """``"video"``, ``"image"``, ``"frames"`` (an animated or multi-page image, read as a video) or None, by
    extension; with ``by_content``, unknown extensions are probed. Only the formats that can hold frames
    (:data:`msfer.data.images.MULTI_FRAME_EXTENSIONS`) are opened to count them."""
    if is_video(path):  # first: Pillow registers .mpg for a format it can only identify, not decode
        return "video"
    if path.suffix.lower() in IMAGE_EXTENSIONS:
        multi = path.suffix.lower() in MULTI_FRAME_EXTENSIONS and frame_count(path) > 1
        return "frames" if multi else "image"
    if not by_content:
        return None
    try:
        with Image.open(path) as image:
            if image.format != "MPEG":
                return "frames" if frame_count(path) > 1 else "image"
    except Exception:  # not something Pillow recognises (it raises many types); try video next
        pass
    return "video" if probe_video(path) else None


def _skip_reason(path: Path) -> str:
    if is_broken_link(path):  # e.g. a folder on a disk that is not mounted
        return not_a_file_reason(path)
    if path.name.lower().endswith((IMAGE_VIS_SUFFIX, VIDEO_VIS_SUFFIX)):
        return "an annotated copy written by msfer predict --save-vis"
    return f"not an image or video file name extension ({path.suffix or 'none'})"


def collect_inputs(inputs: Iterable[Path | str]) -> Inputs:
    """Files named by ``inputs`` (folders expanded recursively, in sorted order), each once.

    See the module docstring. An address (``http://``, ``rtsp://``) is no input: it is among the
    ``missing``, as the address it is (:func:`msfer.data.images.address`), and reported as an address.
    """
    found = Inputs()
    files: list[tuple[Path, str]] = []
    bases: list[str] = []
    for given in inputs:
        url = address(given)
        if url is not None:
            found.missing.append(url)
            continue
        given = Path(given)
        if given.is_dir():
            bases.append(os.path.abspath(given))
            for path in sorted(given.rglob("*")):
                if (path.is_dir() and not path.is_symlink()) or path.name.endswith(LOCK_SUFFIX):
                    continue  # rglob walks it; a lock is an msfer run's own (files.sole_writer), no input
                # A broken link named like a photo is an input that fails (reported, exit 1), as an unreadable
                # photo is; a pipe or a linked folder is no input, so it is skipped with its reason.
                if not (path.is_file() or is_broken_link(path)):
                    found.skipped.append((path, not_a_file_reason(path)))
                    continue
                ours = path.name.lower().endswith((IMAGE_VIS_SUFFIX, VIDEO_VIS_SUFFIX))
                kind = None if ours else file_kind(path, False)
                if kind is None:
                    found.skipped.append((path, _skip_reason(path)))
                elif (earlier := found.files.add(path)) is not None:
                    found.skipped.append((path, f"the same file as {printable(earlier)}, which is processed"))
                else:
                    files.append((path, kind))
        elif given.is_file():
            bases.append(os.path.dirname(os.path.abspath(given)))
            kind = file_kind(given, True)
            earlier = found.files.add(given)  # even a file that is no image or video is read: never written onto
            if kind is None:
                found.not_media.append(given)
            elif earlier is not None:
                found.skipped.append((given, f"the same file as {printable(earlier)}, which is processed"))
            else:
                files.append((given, kind))
        else:
            found.missing.append(given)
    root = os.path.commonpath(bases) if bases else ""
    used: set[str] = set()
    for path, kind in files:
        folder, name = os.path.split(os.path.relpath(os.path.abspath(path), root))
        stream = kind in ("video", "frames")  # an animated or multi-page image is read as a short video
        name = _vis_file_name(name, VIDEO_VIS_SUFFIX if stream else IMAGE_VIS_SUFFIX)
        found.items.append(InputItem(path, stream, Path(_unique(os.path.join(folder, name), used))))
    return found


NAME_MAX = 255  # bytes in one file name on common Linux, macOS and Windows file systems


def _vis_file_name(name: str, suffix: str) -> str:
    """``name + suffix``; a name too long for that is cut and given a hash of the whole name (still unique)."""
    if len(os.fsencode(name + suffix)) <= NAME_MAX:
        return name + suffix
    tag = "~" + hashlib.sha1(os.fsencode(name)).hexdigest()[:10]
    while len(os.fsencode(name + tag + suffix)) > NAME_MAX:
        name = name[:-1]
    return name + tag + suffix


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name`` with ``-2``, ``-3``... before its suffix if a name differing only in case was taken.

    Distinct inputs give distinct names; only a case-insensitive file system for --save-vis
    could merge two of them.
    """
    stem, _, extension = name.rpartition(".msfer.")
    candidate, count = name, 1
    while candidate.casefold() in used:
        count += 1
        candidate = f"{stem}-{count}.msfer.{extension}"
    used.add(candidate.casefold())
    return candidate


def shard(items: list[InputItem], num_shards: int, shard_index: int) -> list[InputItem]:
    """The ``shard_index``-th of ``num_shards`` interleaved parts of ``items`` (deterministic: inputs are sorted)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise MsferError(f"--shard-index must be in 0..{num_shards - 1} and --num-shards at least 1")
    return items[shard_index::num_shards]


ECHO_LIMIT = 50


class QualityFilter:
    """Leaves out faces below ``min_quality`` ("low": none, "good": those whose quality is "low"), counting them."""

    def __init__(self, min_quality: str = "low") -> None:
        if min_quality not in MIN_QUALITY:
            raise MsferError(f"--min-quality must be one of {', '.join(MIN_QUALITY)}, not {min_quality!r}")
        self.min_quality, self.left_out = min_quality, 0

    def __call__(self, faces: list[FaceResult]) -> list[FaceResult]:
        if self.min_quality == "low":
            return faces
        kept = [face for face in faces if face.quality != "low"]
        self.left_out += len(faces) - len(kept)
        return kept


def predict_images(
    recognizer: EmotionRecognizer, items: list[InputItem], writer: ResultWriter, vis_dir: Path | None,
    problems: list[str], keep: QualityFilter | None = None,
) -> None:
    """Recognise ``items`` (images) in batches; unreadable ones go to ``problems`` and the rest carry on.

    An annotated copy (in ``vis_dir``) that cannot be written fails its image alone, as an
    unreadable one does, except on a full disk: :class:`msfer.files.DiskFullError` then stops
    the run, and the image gets no record, so that ``--resume`` does it again.

    ``keep`` filters each image's faces (default: all kept). A handful of images (up to
    ``ECHO_LIMIT``, or all without ``--out``) also get a line each on the terminal; bulk runs into a file stay quiet.
    """
    keep = keep or QualityFilter()
    echo = len(items) <= ECHO_LIMIT or writer.file is None  # without --out the terminal is the only output
    with tqdm(total=len(items), desc="images", unit="img", disable=not items) as progress:
        for start in range(0, len(items), recognizer.batch_size):
            loaded: list[tuple[InputItem, np.ndarray]] = []
            for item in items[start : start + recognizer.batch_size]:
                try:
                    loaded.append((item, to_rgb_array(item.path)))
                except MsferError as error:
                    report_problem(problems, writer, item.path, str(error))
            results = _recognise(recognizer, loaded, writer, problems)
            for (item, image), faces in zip(loaded, results):
                if faces is None:
                    continue
                found = len(faces)
                faces = keep(faces)
                if vis_dir is not None:
                    # Before the record: an input whose copy fails gets an error record instead, as a video does.
                    try:
                        with atomic_output(vis_dir / item.vis_name) as temporary:
                            Image.fromarray(draw_faces(image, faces)).save(temporary, format="JPEG", quality=92)
                    except DiskFullError:
                        raise  # no fault of this photo: the run stops, and --resume does it again
                    except MsferError as error:
                        report_problem(problems, writer, item.path,
                                       f"{printable(item.path)}: no annotated copy: {error}")
                        continue
                writer.write({"source": item.path, "faces": faces})
                if echo:
                    tqdm.write(f"{printable(item.path)}: {faces_line(faces, found - len(faces))}")
            progress.update(len(items[start : start + recognizer.batch_size]))


def faces_line(faces: list[FaceResult], left_out: int = 0) -> str:
    """One image's or frame's faces as the terminal shows them, with the faces --min-quality left out.

    Those are named, so that a photo whose only face was left out does not read as a photo without one.
    """
    parts = [f"{face.label} {face.confidence:.2f}" + (" (low quality)" if face.quality == "low" else "")
             for face in faces]
    if left_out:
        parts.append(f"{left_out} face{'s' if left_out > 1 else ''} left out (low quality)")
    return ", ".join(parts) or "no face"


def _recognise(
    recognizer: EmotionRecognizer, loaded: list[tuple[InputItem, np.ndarray]], writer: ResultWriter, problems: list[str]
) -> list[list[FaceResult] | None]:
    """The faces of each loaded image; should the batch fail, each image alone, None (reported) for those that fail.

    Any error, not only MsferError: one image that breaks the detector or classifier must not cost the
    other images of its batch their results.
    """
    try:
        return recognizer.predict_batch([image for _, image in loaded])
    except Exception:  # noqa: BLE001 - narrowed down below, image by image
        results: list[list[FaceResult] | None] = []
        for item, image in loaded:
            try:
                results.append(recognizer.predict(image))
            except Exception as error:  # noqa: BLE001
                report_problem(problems, writer, item.path,
                        f"{printable(item.path)}: recognition failed ({type(error).__name__}: {error})")
                results.append(None)
        return results


def predict_stream(
    recognizer: EmotionRecognizer, source: Path | int, vis_name: Path, writer: ResultWriter,
    keep: QualityFilter | None = None, save_vis: Path | None = None, every: int = 1, smooth: float = 0.0,
) -> None:
    """Recognise a video file or webcam; write processed frames, and with ``save_vis`` an annotated .mp4 there
    (at ``vis_name``). ``every``-th frame, probabilities smoothed by ``smooth`` (see :func:`predict_video`).

    ``keep`` filters each frame's faces after tracking (default: all kept). Without ``--out``
    each processed frame gets a line on the terminal, as a photo does: it is the only output.
    A file that ends before the frames its container declares (truncated), or whose reading stops on an
    error, keeps the records and annotated copy of the frames read and then raises :class:`MsferError` saying
    how many frames were declared and read (:meth:`VideoSource.shortfall`).
    """
    keep = keep or QualityFilter()
    label = printable(source if isinstance(source, int) else source.name)
    name = printable(f"webcam {source}" if isinstance(source, int) else source)
    with open_video(source) as video, tqdm(total=video.frame_count, desc=label, unit="frame") as progress:
        video_writer = None
        if save_vis is not None:  # before the first frame's record: a copy that cannot be written fails the video
            try:
                video_writer = AnnotatedVideoWriter(save_vis / vis_name, video.fps)
            except DiskFullError:
                raise
            except MsferError as error:
                raise MsferError(f"{printable(source)}: no annotated copy: {error}") from None
        complete = False
        kept: list[FaceResult] = []
        try:
            for frame in _until_interrupted(predict_video(recognizer, video, every, smooth), video.live):
                if frame.processed:
                    found = len(frame.faces)
                    frame.faces = kept = keep(frame.faces)
                    writer.write({"source": source, "frame": frame.index, "time": frame.time, "faces": frame.faces})
                    if writer.file is None:
                        when = f" at {frame.time:.2f} s" if frame.time is not None else ""  # a page has no time
                        tqdm.write(f"{name} frame {frame.index}{when}: "
                                   f"{faces_line(frame.faces, found - len(frame.faces))}")
                else:
                    # A skipped frame (--every) shows the last processed frame's faces, which were counted there.
                    frame.faces = kept
                if video_writer is not None:  # a page without a time is shown for 1 / fps seconds
                    seconds = frame.time if frame.time is not None else frame.index / video.fps
                    _write_annotated(video_writer, frame, seconds, source)
                progress.update()
            complete = True
        finally:
            if video_writer is not None:
                video_writer.close(complete)
        shortfall = video.shortfall()
    if shortfall is not None:  # the frames read are in the output; the video still counts as an error
        raise IncompleteVideoError(f"{name}: {shortfall}; the frames read are in the output")


def _write_annotated(video_writer: AnnotatedVideoWriter, frame: VideoFrame, seconds: float,
                     source: Path | int) -> None:
    """Add ``frame`` with its faces drawn to the annotated copy, shown at ``seconds``; any failure is one
    :class:`MsferError` that fails this input alone (its copy is then discarded), never the run."""
    try:
        video_writer.write(draw_faces(frame.image, frame.faces), seconds)
    except DiskFullError:
        raise  # no fault of this video: the run stops, and --resume does it again
    except Exception as error:  # noqa: BLE001 - whatever breaks the copy must not end the batch
        detail = str(error) if isinstance(error, MsferError) else f"{type(error).__name__}: {error}"
        raise MsferError(f"{printable(source)}: no annotated copy (frame {frame.index}): {detail}") from None


def _until_interrupted(frames: Iterator[VideoFrame], live: bool) -> Iterator[VideoFrame]:
    """A webcam runs until Ctrl+C, which then ends it normally (the outputs are closed properly)."""
    try:
        yield from frames
    except KeyboardInterrupt:
        if not live:
            raise
        print("webcam stopped", file=sys.stderr)


def report_problem(problems: list[str], writer: ResultWriter, source: Path | str | int, message: str,
                   skipped: bool = True) -> None:
    """Count ``message`` as a problem, write it as ``source``'s error record and on stderr (as a skipped input, or,
    ``skipped=False``, as one processed in part)."""
    problems.append(message)
    writer.write({"source": source, "error": message})
    tqdm.write(f"msfer predict: {'skipped ' if skipped else ''}{printable(message)}", file=sys.stderr)


def webcam_vis_name(inputs: Inputs, webcam: int) -> Path:
    """The name of webcam ``webcam``'s annotated video under ``--save-vis``: ``webcamN.msfer.mp4``, made unique
    among the inputs' copies."""
    taken = {str(item.vis_name).casefold() for item in inputs.items}
    return Path(_unique(f"webcam{webcam}{VIDEO_VIS_SUFFIX}", taken))


def check_outputs(inputs: Inputs, items: list[InputItem], out: Path | None, save_vis: Path | None,
                  replace_copies: bool = False, webcam: int | None = None) -> None:
    """Refuse (a :class:`MsferError` naming the files) any output (``--out``, the copies in ``--save-vis``, the
    webcam's included) that would land on an input, and, unless ``replace_copies`` (``--overwrite``, or
    ``--resume`` of an ``--out``), annotated copies that exist already: an earlier run's output is not replaced
    unasked."""
    if out is not None:
        inputs.files.refuse(out, "--out")
    if save_vis is not None:
        copies = [save_vis / item.vis_name for item in items]
        if webcam is not None:
            copies.append(save_vis / webcam_vis_name(inputs, webcam))
        for path in copies:
            inputs.files.refuse(path, "--save-vis")
        # a file or link (something else there fails its input alone, when its copy is written)
        existing = [] if replace_copies else [path for path in copies if path.is_file() or path.is_symlink()]
        if existing:
            resume = ", --resume to go on with the --out run that wrote them" if out is not None else ""
            raise MsferError(f"--save-vis {printable(save_vis)} already holds {len(existing)} of this run's annotated "
                             f"copies ({', '.join(printable(path) for path in existing[:3])}"
                             f"{', ...' if len(existing) > 3 else ''}): add --overwrite to replace them{resume}, "
                             "or give another folder")


def predict_inputs(
    recognizer: EmotionRecognizer, inputs: Inputs, items: list[InputItem], out: Path | None, mode: str = "w",
    save_vis: Path | None = None, webcam: int | None = None, every: int = 1, smooth: float = 0.0,
    keep: QualityFilter | None = None, shard_of: tuple[int, int] = (0, 1),
) -> Tally:
    """Recognise ``items`` (this shard's inputs: ``shard_of`` is its index and the number of shards) and the
    webcam, writing ``out`` (opened in ``mode``: ``"a"`` resumes it, skipping the inputs it has) and the
    annotated copies in ``save_vis``. Each problem is reported on stderr and as an error record.

    Returns what ``out`` then holds (:class:`msfer.inference.results.Tally`: the inputs, faces and
    errors of the whole file, the earlier run's part of a resumed one). A resumed file keeps the
    error records it has: an input with one (a missing file named again, an unreadable photo)
    is not tried again, and its error is not written a second time.

    Raises :class:`msfer.files.DiskFullError` when an output cannot be written for lack of space:
    ``out`` then ends with the last whole record, and the input being done has none."""
    keep = keep or QualityFilter()
    with ExitStack() as stack:
        videos = {source_key(source_fields(item.path)) for item in items if item.video}
        writer = ResultWriter(out, stack, mode, redo=videos)
        if writer.redone is not None:
            video, records = writer.redone
            print(f"msfer predict: {printable(video.decode('utf-8', 'surrogateescape'))} came last in "
                  f"{printable(out)} and may have been cut short: its {records} record(s) are dropped and it is "
                  "processed again from its start", file=sys.stderr)
        if writer.kept_last is not None:
            video, records = writer.kept_last
            print(f"msfer predict: {printable(video.decode('utf-8', 'surrogateescape'))} came last in "
                  f"{printable(out)} and may have been cut short; it is not among this run's inputs, so its {records} "
                  "record(s) are kept as they are (give it again with --resume to do it again)", file=sys.stderr)
        problems: list[str] = []
        named = [(path, f"{path}: {not_a_file_reason(path)}") for path in inputs.missing]
        named += [(path, f"{path}: not an image or video file (its content is neither)") for path in inputs.not_media]
        for path, message in named:
            if source_key(source_fields(path)) in writer.done:  # its error record is in the file already
                tqdm.write(f"msfer predict: skipped {printable(message)} (its error record is in {printable(out)})",
                           file=sys.stderr)
            else:
                report_problem(problems, writer, path, message)
        todo = [item for item in items if source_key(source_fields(item.path)) not in writer.done]
        if len(todo) < len(items):
            print(f"msfer predict: {printable(out)} already has {len(items) - len(todo)} of the inputs; "
                  f"processing the other {len(todo)}", file=sys.stderr)
        elif not items and inputs.items:
            print(f"msfer predict: shard {shard_of[0]} of {shard_of[1]} has no inputs", file=sys.stderr)
        predict_images(recognizer, [item for item in todo if not item.video], writer, save_vis, problems, keep)
        streams = [(item.path, item.vis_name) for item in todo if item.video]
        if webcam is not None:
            streams.append((webcam, webcam_vis_name(inputs, webcam)))
        for source, vis_name in streams:
            try:
                predict_stream(recognizer, source, vis_name, writer, keep, save_vis, every, smooth)
            except DiskFullError:
                raise  # no fault of this video: the run stops, and --resume does it again
            except IncompleteVideoError as error:
                report_problem(problems, writer, source, str(error), skipped=False)
            except MsferError as error:
                report_problem(problems, writer, source, str(error))
    return writer.tally
