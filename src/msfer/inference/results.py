"""What msfer says about a face, and how it is written: :class:`FaceResult` and :class:`ResultWriter`.

``FaceResult.to_dict()`` is the JSON of JSON Lines and the service; :data:`CSV_FIELDS` the CSV
columns. A new output field goes into all three.
"""
from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Collection
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ..errors import MsferError
from ..files import append_whole, writing
from ..labels import EMOTIONS
from ..outputs import printable, source_fields, summary_line

DEFAULT_DECISION = "argmax"
MIN_QUALITY = ("low", "good")  # --min-quality: "low" keeps every face, "good" leaves out the low-quality ones


@dataclass
class FaceResult:
    """One face: where it is and what the network thinks it expresses.

    All coordinates are in the input image's pixels. ``box`` is ``[x1, y1, x2, y2]``;
    ``landmarks`` are RetinaFace's five points (image-left eye, image-right eye, nose,
    left and right mouth corner); ``regions`` maps region names (face, eyes, nose,
    mouth) to the boxes the network attended to, ``{}`` for a model without regions (a plain
    classifier); ``probs`` has the 7 emotions in :data:`msfer.labels.EMOTIONS` order.
    ``score`` and ``landmarks`` are ``None`` for faces that were given pre-cropped
    (:meth:`EmotionRecognizer.classify_faces`); ``track_id`` is set only for video.

    ``label`` is the emotion the ``decision`` rule ("argmax" or "balanced") chose and
    ``confidence`` its probability; ``probs`` do not depend on the rule. For a face found in a photo,
    ``probs`` carry the model's photo temperature and ``decision_probs`` (the same 7 keys) are those
    before it, which the rule read (so the label does not depend on the temperature); for a crop given
    whole they are ``probs`` themselves. ``decision_probs`` stay out of :meth:`to_dict`. The quality fields
    are those of :func:`msfer.faces.quality.face_quality`: ``face_size`` (pixels),
    ``sharpness``, ``roll`` and ``yaw`` (degrees; None without landmarks), ``quality``
    ("good" or "low") and ``quality_issues``.
    """

    box: list[float]
    score: float | None
    landmarks: list[list[float]] | None
    regions: dict[str, list[float]]
    probs: dict[str, float]
    label: str
    confidence: float
    decision: str = DEFAULT_DECISION
    face_size: float | None = None
    sharpness: float | None = None
    roll: float | None = None
    yaw: float | None = None
    quality: str | None = None
    quality_issues: list[str] = field(default_factory=list)
    track_id: int | None = field(default=None)
    decision_probs: dict[str, float] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written by ``msfer predict`` and returned by the REST service."""
        result = asdict(self)
        del result["decision_probs"]
        if self.track_id is None:
            del result["track_id"]
        return result


# Appended to an input's full file name for its annotated copy under msfer predict --save-vis.
IMAGE_VIS_SUFFIX, VIDEO_VIS_SUFFIX = ".msfer.jpg", ".msfer.mp4"

QUALITY_FIELDS = ["face_size", "sharpness", "roll", "yaw", "quality", "quality_issues"]
CSV_FACE_FIELDS = ["face", "track_id", "x1", "y1", "x2", "y2", "score", "label", "confidence", *EMOTIONS, "decision",
                   *QUALITY_FIELDS]
CSV_FIELDS = ["source", "frame", "time", *CSV_FACE_FIELDS, "error", "source_hex"]


def source_key(record: dict) -> bytes:
    """What identifies a record's input in an output file: its name's exact bytes (``source_hex`` where the record
    has it, else ``source``), so that a name is one input however an earlier msfer wrote it."""
    exact = record.get("source_hex")
    if exact:
        try:
            return bytes.fromhex(exact)
        except ValueError:  # not msfer's hex: the text is all there is
            pass
    return str(record.get("source") or "").encode("utf-8", "surrogatepass")


@dataclass
class Tally:
    """What an output of ``msfer predict`` holds: its inputs (by :func:`source_key`), the video frames and faces of
    their records, and the inputs with an error record; ``earlier`` those an earlier run wrote (``--resume``)."""

    inputs: set[bytes] = field(default_factory=set)
    errors: set[bytes] = field(default_factory=set)
    frames: set[tuple[bytes, int]] = field(default_factory=set)
    faces: int = 0
    earlier: set[bytes] = field(default_factory=set)

    def add(self, key: bytes, faces: int = 0, frame: int | None = None, error: bool = False) -> None:
        """Count one record (or one CSV row: ``faces`` is then 0 or 1) of the input ``key``."""
        self.inputs.add(key)
        self.faces += faces
        if frame is not None:
            self.frames.add((key, frame))
        if error:
            self.errors.add(key)

    @property
    def earlier_errors(self) -> set[bytes]:
        """The inputs whose error record an earlier run wrote (``--resume`` does not try them again)."""
        return self.errors & self.earlier

    def line(self, out: Path) -> str:
        """The closing line of the run (:func:`msfer.outputs.summary_line`): the whole output, this run's part."""
        return summary_line(out, len(self.inputs), self.faces, len(self.errors), len(self.frames),
                            len(self.inputs - self.earlier))


def _frame(value: Any) -> int | None:
    """A record's ``frame`` as a number (CSV gives text, empty for a photo)."""
    try:
        return None if value in (None, "") else int(value)
    except (TypeError, ValueError):
        return None


class ResultWriter:
    """Writes records to JSON Lines or CSV by the file's extension (or nowhere when ``path`` is None).

    ``mode="a"`` continues a file an earlier run wrote (see :meth:`_prepare_resume`);
    :attr:`done` then holds the :func:`source_key` of every input it has whole. :attr:`tally`
    counts what the file holds, from before and from this run (also when ``path`` is None).

    Each record (a JSON line, or all the CSV rows of one image or frame) goes to the file in one
    piece and is flushed: a record that cannot be written whole (a full disk) is cut off again,
    so the file ends with the last whole record, and :meth:`write` raises a
    :class:`msfer.files.DiskFullError` (a full disk) or :class:`MsferError` naming the file.
    """

    def __init__(self, path: Path | None, stack: ExitStack, mode: str = "w", redo: Collection[bytes] = ()) -> None:
        self.format = self.format_of(path)
        self.file: IO[bytes] | None = None
        self.done: set[bytes] = set()
        # A resumed file's last video, (its source key, how many records it has): dropped to be done again when it is
        # in ``redo`` (the inputs of this run), else kept as it is.
        self.redone: tuple[bytes, int] | None = None
        self.kept_last: tuple[bytes, int] | None = None
        self.redo = set(redo)
        self.tally = Tally()
        self.path = path
        if path is not None:
            with writing(path):
                path.parent.mkdir(parents=True, exist_ok=True)
            if mode == "a":
                self.done = self._prepare_resume(path)
            with writing(path):  # unbuffered: nothing of a failed record waits in a buffer to be written on close
                self.file = stack.enter_context(open(path, mode + "b", buffering=0))
            if self.format == "csv" and self.file.seek(0, os.SEEK_END) == 0:
                self._append(_csv_text([dict(zip(CSV_FIELDS, CSV_FIELDS))]))

    @staticmethod
    def format_of(path: Path | None) -> str | None:
        """``"jsonl"``, ``"csv"`` or None (no file) for ``--out path``; another extension is a :class:`MsferError`."""
        format = None if path is None else path.suffix.lower().lstrip(".")
        if format not in (None, "jsonl", "csv"):
            raise MsferError(f"--out {printable(path)}: use a .jsonl or .csv file")
        return format

    def _prepare_resume(self, path: Path) -> set[bytes]:
        """The inputs ``path`` already has; drops what may be incomplete so that it is done again.

        Records go out input by input, so only the last input can be incomplete: a line
        torn by a kill is dropped, and so are the frames of a video that came last when it is
        in ``redo`` (it may have been cut short; it is processed again from its start); a last
        video this run does not process is kept as it is (:attr:`kept_last`). The file is read
        as written (lines end at ``\\n`` only, ``newline=''`` as the csv module requires), so a
        carriage return inside a quoted CSV field stays part of it; what is dropped is cut
        off the end of the file in place (no space is needed, nothing before it changes).
        """
        try:
            with open(path, encoding="utf-8", newline="") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as error:
            raise MsferError(f"--resume: cannot read {printable(path)} ({error})") from None
        pieces = text.split("\n")
        lines = [piece + "\n" for piece in pieces[:-1]]  # a last piece is a line torn by an interruption: dropped
        # (input, an unfinished video's frame, end line, faces, frame, an error)
        entries: list[tuple[bytes, bool, int, int, int | None, bool]] = []
        if self.format == "jsonl":
            start = 0
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        raise MsferError(f"--resume: {printable(path)} line {number} is not JSON; it was not written "
                                         "by msfer predict (use --overwrite or another --out)") from None
                    entries.append((source_key(record), "frame" in record and "error" not in record, number,
                                    len(record.get("faces") or []), _frame(record.get("frame")), "error" in record))
        else:
            # io.StringIO splits lines at "\n" alone (its default newline), as ``lines`` does: line_num counts them.
            reader = csv.DictReader(io.StringIO("".join(lines)))
            if reader.fieldnames is not None and reader.fieldnames != CSV_FIELDS:
                raise MsferError(f"--resume: {printable(path)} has other columns than msfer predict writes "
                                 "(use --overwrite or another --out)")
            start = 1 if reader.fieldnames is not None else 0
            for row in reader:
                entries.append((source_key(row), bool(row.get("frame")) and not row.get("error"), reader.line_num,
                                int(bool(row.get("face"))), _frame(row.get("frame")), bool(row.get("error"))))
        keep = len(lines)
        if entries and entries[-1][1]:  # the last input is a video: it may be incomplete
            last, first = entries[-1][0], len(entries)
            while first and entries[first - 1][0] == last:
                first -= 1
            records = len(entries) - first
            if last in self.redo:  # done again from its start in this run
                del entries[first:]
                self.redone = (last, records)
                keep = entries[-1][2] if entries else start
            else:  # not this run's to do again: what the file has of it is kept, never dropped
                self.kept_last = (last, records)
        kept = len("".join(lines[:keep]).encode("utf-8"))
        if kept < len(text.encode("utf-8")):
            with writing(path):
                os.truncate(path, kept)
        for key, _, _, faces, frame, error in entries:
            self.tally.add(key, faces, frame, error)
        self.tally.earlier = set(self.tally.inputs)
        return set(self.tally.inputs)

    def write(self, record: dict) -> None:
        """One record: ``source`` (a path, name or webcam number), optionally ``frame``/``time``, and ``faces``
        (FaceResult) or ``error``. Written whole or not at all (see the class), then counted in :attr:`tally`."""
        record = {**source_fields(record["source"]),
                  **{key: printable(value) if isinstance(value, str) else value
                     for key, value in record.items() if key != "source"}}
        counted = (source_key(record), len(record.get("faces", [])), record.get("frame"), "error" in record)
        if self.file is None:
            self.tally.add(*counted)
            return
        if self.format == "jsonl":
            faces = [face.to_dict() for face in record.get("faces", [])]
            text = json.dumps({**record, **({"faces": faces} if "faces" in record else {})}) + "\n"
        else:
            text = _csv_text(csv_rows(record))
        self._append(text)
        self.tally.add(*counted)

    def _append(self, text: str) -> None:
        """Append ``text`` to the file whole; if it cannot be (a full disk), cut the file back to where it ended."""
        append_whole(self.file, text.encode("utf-8"), self.path)


def _csv_text(rows: list[dict]) -> str:
    """``rows`` as CSV lines (``\\r\\n`` line ends, the csv module's default)."""
    text = io.StringIO()
    csv.DictWriter(text, CSV_FIELDS).writerows(rows)
    return text.getvalue()


def csv_rows(record: dict) -> list[dict]:
    """A record's rows in :data:`CSV_FIELDS`: one per face, or one without face columns (no face, an error)."""
    base = {key: record[key] for key in ("source", "source_hex", "frame", "time", "error") if key in record}
    rows = [_csv_row(index, face) for index, face in enumerate(record.get("faces", []))] or [{}]
    return [{**base, **row} for row in rows]


def to_dataframe(results, sources=None):
    """A pandas DataFrame of results: one row per face, with the columns of ``msfer predict``'s CSV.

    ``results`` is what the API returns, in any of its forms:

    - ``recognizer.predict(image)``: a list of :class:`FaceResult` (one image);
    - ``recognizer.predict_batch(images, ...)``: a list with, per image, its faces or the
      :class:`MsferError` it raised (``errors="return"``);
    - ``recognizer.predict_folder(folder)``: ``(path, faces or error)`` pairs, or a dict of them;
    - ``recognizer.predict_video(path)``: :class:`msfer.inference.video.VideoFrame` objects
      (``frame`` and ``time`` columns filled). As in the CSV, only processed frames have rows: with
      ``every`` > 1 the frames between, which repeat the last processed frame's faces, are left out.

    Columns (:data:`CSV_FIELDS`): ``source`` (``sources[i]`` if given, else the path or video, else
    the image's index in ``results``), ``frame``, ``time``, ``face`` (0 = largest), ``track_id``, the box ``x1 y1
    x2 y2`` (input pixels), ``score``, ``label``, ``confidence``, the seven probabilities, ``decision``,
    the quality fields, ``error`` and ``source_hex``. An image without a face, or one that failed,
    is one row with empty face columns (and ``error`` set for a failure), as in the CSV. An empty
    list has no rows: pass one image's faces as ``[faces]`` to get its row when it has none.

    Needs pandas (``pip install "msfer[pandas]"``); without it raises :class:`MsferError`.
    """
    try:
        import pandas
    except ImportError:
        raise MsferError('to_dataframe needs pandas, which is not installed (pip install "msfer[pandas]")') from None
    records = [_record(item, number, sources) for number, item in enumerate(_result_items(results))]
    rows = [row for record in records for row in csv_rows(record)]
    return pandas.DataFrame(rows, columns=CSV_FIELDS)


def _result_items(results):
    """``results`` as a sequence of one item per image or frame (see :func:`to_dataframe`)."""
    if isinstance(results, dict):
        return list(results.items())
    results = list(results)
    if results and all(isinstance(item, FaceResult) for item in results):
        return [results]  # one image's faces
    return [item for item in results if getattr(item, "processed", True)]


def _record(item, number: int, sources) -> dict:
    """The output record (as :class:`ResultWriter` writes) of one item of :func:`to_dataframe`'s input."""
    record: dict[str, Any] = {}
    if hasattr(item, "faces") and hasattr(item, "time"):  # a video frame
        record.update(frame=item.index, time=item.time)
        source, outcome = number if getattr(item, "source", None) is None else item.source, item.faces
    elif isinstance(item, tuple) and len(item) == 2:
        source, outcome = item
    else:
        source, outcome = number, item
    if sources is not None:
        source = sources[number]
    if isinstance(outcome, Exception):
        record["error"] = str(outcome)
    elif isinstance(outcome, list) and all(isinstance(face, FaceResult) for face in outcome):
        record["faces"] = outcome
    else:
        raise MsferError(f"to_dataframe: item {number} is a {type(outcome).__name__}, not a list of FaceResult, an "
                         "error or a video frame")
    return {**source_fields(source), **record}


def _csv_row(index: int, face: FaceResult) -> dict:
    x1, y1, x2, y2 = face.box
    return {"face": index, "track_id": face.track_id, "x1": x1, "y1": y1, "x2": x2, "y2": y2, "score": face.score,
            "label": face.label, "confidence": face.confidence, **face.probs, "decision": face.decision,
            **{name: getattr(face, name) for name in QUALITY_FIELDS[:-1]},
            "quality_issues": ";".join(face.quality_issues)}
