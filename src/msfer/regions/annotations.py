"""The region-annotation file: JSON Lines, one object per image, appended to safely.

One line per image (see DEVELOPING.md)::

    {"id", "split", "label", "width", "height", "status", "regions", "landmarks",
     "score", "faces", "transform", "face_box"}

``status`` is ``ok``, ``no_face``, ``rejected:<reason>`` or ``unreadable``. Boxes and
landmarks are in the original image's pixels; ``transform`` records how the image was
resized before detection (``detector_xy = scale * original_xy``), ``faces`` how many
faces RetinaFace saw (the largest, most central one is described). ``regions["face"]`` is
RetinaFace's box clipped to the image (the region detector's target); ``face_box`` is the same
box not clipped (a face cut by the image edge extends past it), which photo crops are framed by
(:func:`face_box`), as inference frames a detected face. A rejected image keeps its regions so
that a person (or a looser training recipe) can still look at them.

Writing is append-only and flushed per batch, so an interrupted run loses at most the
batch in flight; :class:`AnnotationWriter` drops a torn last line before appending. A batch
that cannot be written whole (a full disk) is cut off again and stops the run with one error
naming the file (:class:`msfer.files.DiskFullError`); ``--resume`` then annotates it.
"""
from __future__ import annotations

import gzip
import io
import json
import os
from pathlib import Path

from ..errors import MsferError
from ..files import append_whole, writing
from ..outputs import printable

STATUS_OK = "ok"
STATUS_NO_FACE = "no_face"
STATUS_UNREADABLE = "unreadable"
REJECTED_PREFIX = "rejected:"


def _parse_lines(text: str, path: Path) -> dict[str, dict]:
    """Records by id from complete lines; a torn (unterminated, unparsable) last line is ignored."""
    records: dict[str, dict] = {}
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            if number == len(lines):  # the write of the last line was interrupted
                break
            raise MsferError(f"{printable(path)}: line {number} is not valid JSON ({error}); "
                             "fix or delete that line") from None
        if not isinstance(record, dict) or "id" not in record:
            raise MsferError(f"{printable(path)}: line {number} is not an annotation object with an 'id'")
        records[record["id"]] = record
    return records


def load_annotations(path: str | os.PathLike) -> dict[str, dict]:
    """All records of an annotation file (``.jsonl`` or ``.jsonl.gz``) by image id; the last line for an id wins."""
    path = Path(path)
    if not path.is_file():
        raise MsferError(f"annotation file {printable(path)} does not exist; make it with 'msfer annotate'")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return _parse_lines(handle.read(), path)
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise MsferError(f"cannot read annotation file {printable(path)}: {error}") from None


class AnnotationWriter:
    """Appends records to a ``.jsonl`` file, resuming what an earlier (maybe interrupted) run wrote.

    On opening, a last line that an interruption left without its newline is kept if
    it is a whole record and cut off otherwise; :attr:`records` holds what the file
    already has, so the caller can skip those ids.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.suffix == ".gz":
            raise MsferError(f"{printable(self.path)}: annotations are written as plain .jsonl "
                             "(gzip the finished file if you like)")
        with writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = load_annotations(self.path) if self.path.exists() else {}
        with writing(self.path):  # unbuffered: nothing of a failed batch waits in a buffer to be written on close
            self._handle = open(self.path, "a+b", buffering=0)
            self._repair_last_line()

    def _repair_last_line(self) -> None:
        size = self._handle.seek(0, io.SEEK_END)
        if size == 0:
            return
        self._handle.seek(max(0, size - 1))
        if self._handle.read(1) == b"\n":
            return
        self._handle.seek(0)
        content = self._handle.read()
        last_start = content.rfind(b"\n") + 1
        try:
            json.loads(content[last_start:])
            self._handle.write(b"\n")  # a whole record that only lacks its newline
        except json.JSONDecodeError:
            self._handle.truncate(last_start)
        self._handle.flush()

    def write(self, records: list[dict]) -> None:
        """Append ``records`` to the file (one call per batch), whole or not at all: a batch that cannot be written
        (:class:`MsferError` naming the file; :class:`msfer.files.DiskFullError` for a full disk) is cut off again."""
        lines = [json.dumps(record, separators=(",", ":")) + "\n" for record in records]
        append_whole(self._handle, "".join(lines).encode("utf-8"), self.path)
        self.records.update((record["id"], record) for record in records)

    def close(self) -> None:
        self._handle.close()

    def __enter__(self) -> "AnnotationWriter":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def face_box(record: dict) -> list[float]:
    """The box a record's face is cropped by, ``[x1, y1, x2, y2]`` in original pixels: RetinaFace's own box
    (``face_box``, not clipped), or in files written before msfer recorded it, ``regions["face"]`` (the
    same box clipped to the image). ``record`` must have a face (status ``ok`` or ``rejected:*``)."""
    return record.get("face_box") or record["regions"]["face"]


def face_box_maybe_clipped(record: dict) -> bool:
    """Whether :func:`face_box` of ``record`` may differ from the detector's box: the record has no
    ``face_box`` and its clipped face box reaches the image's edge (where a clipped box ends)."""
    if record.get("face_box"):
        return False
    x1, y1, x2, y2 = record["regions"]["face"]
    return x1 <= 0 or y1 <= 0 or x2 >= record["width"] or y2 >= record["height"]
