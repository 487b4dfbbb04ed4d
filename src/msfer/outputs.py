"""Rules every command follows when it writes files, and how file names are shown.

* **Never onto an input.** :class:`InputFiles` remembers the files a command reads (by
  device and inode, so links and hard links count); :meth:`InputFiles.refuse`
  raises a :class:`MsferError` naming both when an output would land on one of them.
* **Whole or not at all.** Every output goes through :mod:`msfer.files`' one writer
  (temporary file, ``fsync``, rename), so a reader never sees half a file and an
  interrupted run leaves the old file as it was.
* **An existing ``--out``** (``msfer predict``, ``msfer annotate`` and ``msfer export``), even an
  empty one, is neither replaced nor appended to unless asked: ``--resume`` continues it (the
  inputs it already has are skipped), ``--overwrite`` starts it afresh (:func:`existing_out_mode`).
* **One writer per output.** A run holds :func:`msfer.files.sole_writer` on its output from
  before any work to its end, and checks the rule above only once it holds it: a second run
  given the same output is refused, whether it is started at the same time or later.
* **A closing line.** A run that writes ``--out`` ends with one line saying what the output
  holds: ``12 inputs, 15 faces, 1 error -> results.csv`` (:func:`summary_line`).
* **A file that cannot be written** is a :class:`MsferError` naming it and the reason
  (:func:`msfer.files.writing`), not a traceback.
* **File names that are not UTF-8, or hold control characters.** Linux allows any bytes but
  NUL and ``/`` in a name; Python gives such names as ``str`` with surrogate escapes.
  :func:`printable` turns a name into valid text on one line, each undecodable byte written as
  ``\\xNN`` (``café`` in Latin-1 becomes ``caf\\xe9``) and each control character escaped
  (a newline as ``\\n``, a carriage return as ``\\r``, a tab as ``\\t``, others as ``\\xNN``
  or ``\\uNNNN``), so that a name can neither split a terminal line or a record nor move the
  cursor; :func:`source_fields` adds the exact bytes in hex for names that needed it.
  Everything printed or written as text goes through these.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable

from .errors import MsferError

# C0 and C1 control characters, DEL, and the Unicode line and paragraph separators.
CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_control(match: re.Match) -> str:
    character = match.group()
    code = ord(character)
    return _NAMED_ESCAPES.get(character) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def printable(text: str | os.PathLike | int) -> str:
    """``text`` (a name or message) as valid Unicode on one line: undecodable file-name bytes become ``\\xNN``,
    control characters their escapes (``\\n``, ``\\r``, ``\\t``, ``\\xNN``, ``\\uNNNN``)."""
    text = str(os.fspath(text)) if isinstance(text, (str, os.PathLike)) else str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produces (e.g. from JSON): keep its code point
        raw = text.encode("utf-8", "surrogatepass")
    return CONTROL_CHARACTERS.sub(_escape_control, raw.decode("utf-8", "backslashreplace"))


def is_printable(text: str | os.PathLike) -> bool:
    """Whether ``text`` is shown as it is (valid Unicode without control characters): :func:`printable` keeps it."""
    text = os.fspath(text)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return CONTROL_CHARACTERS.search(text) is None


def source_fields(source: str | os.PathLike | int) -> dict[str, str]:
    """The ``source`` of an output record, plus ``source_hex`` (the name's exact bytes) when :func:`printable`
    changed it (a name that is not valid UTF-8, or holds a control character).

    ``bytes.fromhex(record["source_hex"])`` is the path as the file system has it
    (``os.fsdecode`` of it opens the file); ``source`` is the same path made readable.
    """
    if not isinstance(source, (str, os.PathLike)):
        return {"source": str(source)}
    fields = {"source": printable(source)}
    if not is_printable(source):
        fields["source_hex"] = os.fsencode(source).hex()
    return fields


class InputFiles:
    """The files a command reads, to refuse any output that would land on one of them.

    Files are told apart by device and inode, so a symbolic or hard link to an input is
    that input; an output path that does not exist yet cannot be one.
    """

    def __init__(self, paths: Iterable[str | os.PathLike] = ()) -> None:
        self.ids: dict[tuple[int, int], Path] = {}
        for path in paths:
            self.add(path)

    def add(self, path: str | os.PathLike) -> Path | None:
        """Remember ``path``; if it is a file already remembered (named twice, or a link), return that one's path."""
        try:
            status = os.stat(path)
        except OSError:
            return None
        key = (status.st_dev, status.st_ino)
        if key in self.ids:
            return self.ids[key]
        self.ids[key] = Path(path)
        return None

    def find(self, output: str | os.PathLike) -> Path | None:
        """The input that ``output`` is (the same file by path, link or hard link), or None."""
        try:
            status = os.stat(output)
        except OSError:
            return None
        return self.ids.get((status.st_dev, status.st_ino))

    def refuse(self, output: str | os.PathLike, option: str) -> None:
        """Raise :class:`MsferError` if ``output`` (written for ``option``) is one of the inputs."""
        source = self.find(output)
        if source is not None:
            raise MsferError(f"{option} would write {printable(output)}, which is the input {printable(source)}; "
                             "msfer never writes onto a file it reads: choose another output")


def existing_out_mode(path: Path | None, resume: bool, overwrite: bool, resumable: bool = True) -> str:
    """``"w"`` (a new file), ``"a"`` (resume it) for ``--out path``, or a :class:`MsferError` saying what to do.

    An existing file, even an empty one (another run may have just made it), needs ``--resume``
    or ``--overwrite``. ``--resume`` on a file that does not exist yet starts it.
    ``resumable=False``: the command has no ``--resume`` (the file is written whole). Decide it
    while holding :func:`msfer.files.sole_writer` on ``path``, so that no other run changes the
    answer before the file is written.
    """
    if resume and overwrite:
        raise MsferError("give --resume or --overwrite, not both")
    if path is None:
        return "w"
    if path.is_dir():
        raise MsferError(f"--out {printable(path)} is a folder; give a file")
    if not path.exists():
        return "w"
    if resume:
        return "a"
    if overwrite:
        return "w"
    if not resumable:
        raise MsferError(f"--out {printable(path)} already exists: add --overwrite to replace it")
    raise MsferError(f"--out {printable(path)} already exists: add --resume to continue it (the inputs already in it "
                     "are skipped) or --overwrite to replace it")


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def summary_line(out: str | os.PathLike, inputs: int, faces: int, errors: int, frames: int = 0,
                 this_run: int | None = None) -> str:
    """The closing line of a run that wrote ``out``: what it holds, e.g. ``12 inputs, 15 faces, 1 error -> out``.

    ``frames``: the video frames among its records (named only when there are some);
    ``this_run``: how many of the inputs this run added (named only when it differs from
    ``inputs``, i.e. a resumed output).
    """
    counted = _count(inputs, "input")
    if this_run is not None and this_run != inputs:
        counted += f" ({this_run} in this run)"
    parts = [counted, *([_count(frames, "video frame")] if frames else []), _count(faces, "face"),
             _count(errors, "error")]
    return f"{', '.join(parts)} -> {printable(out)}"
