"""Rules every command follows when it writes files, and how file names are shown.

* **Never onto an input.** :class:`InputFiles` remembers the files a command reads (by
  device and inode, so links and hard links count); :meth:`InputFiles.refuse`
  raises a :class:`MsferError` naming both when an output would land on one of them.
* **Whole or not at all.** :func:`atomic_output` writes to a temporary file beside the
  target and renames it onto the target only when the writing succeeded, so a reader
  never sees half a file and an interrupted run leaves the old file as it was.
* **An existing ``--out``** (``msfer predict``, ``msfer annotate`` and ``msfer export``) is
  neither replaced nor appended to unless asked: ``--resume`` continues it (the inputs it
  already has are skipped), ``--overwrite`` starts it afresh (:func:`existing_out_mode`).
* **A file that cannot be written** is a :class:`MsferError` naming it and the reason
  (:func:`writing`), not a traceback.
* **File names that are not UTF-8.** Linux allows any bytes but NUL and ``/`` in a name;
  Python gives such names as ``str`` with surrogate escapes. :func:`printable` turns a
  name into valid text, each undecodable byte written as ``\\xNN`` (``café`` in Latin-1
  becomes ``caf\\xe9``); :func:`source_fields` adds the exact bytes in hex for names that
  needed it. Everything printed or written as text goes through these.
"""
from __future__ import annotations

import argparse
import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from .errors import MsferError


def printable(text: str | os.PathLike | int) -> str:
    """``text`` (a name or message) as valid Unicode: undecodable file-name bytes become ``\\xNN``."""
    text = str(os.fspath(text)) if isinstance(text, (str, os.PathLike)) else str(text)
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file name produces (e.g. from JSON): keep its code point
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace")


def is_printable(text: str | os.PathLike) -> bool:
    """Whether ``text`` is valid Unicode as it is (no undecodable file-name bytes)."""
    try:
        os.fspath(text).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def source_fields(source: str | os.PathLike | int) -> dict[str, str]:
    """The ``source`` of an output record, plus ``source_hex`` (the name's exact bytes) when it is not valid UTF-8.

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

    An existing non-empty file needs ``--resume`` or ``--overwrite``; an empty one is
    simply written. ``--resume`` on a file that does not exist yet starts it.
    ``resumable=False``: the command has no ``--resume`` (the file is written whole).
    """
    if resume and overwrite:
        raise MsferError("give --resume or --overwrite, not both")
    if path is None:
        return "w"
    if path.is_dir():
        raise MsferError(f"--out {printable(path)} is a folder; give a file")
    if not path.exists() or path.stat().st_size == 0:
        return "w"
    if resume:
        return "a"
    if overwrite:
        return "w"
    if not resumable:
        raise MsferError(f"--out {printable(path)} already exists: add --overwrite to replace it")
    raise MsferError(f"--out {printable(path)} already exists: add --resume to continue it (the inputs already in it "
                     "are skipped) or --overwrite to replace it")


def file_argument(text: str) -> Path:
    """The argparse ``type`` of an output file's option: refuses a name ending in ``/``, which names a folder.

    ``Path("models/")`` is ``Path("models")``: without this the slash would be lost and a
    file named ``models`` written.
    """
    if text.endswith(("/", os.sep)):
        raise argparse.ArgumentTypeError(f"{printable(text)} ends in {os.sep}, so it names a folder; give a file")
    return Path(text)


def refuse_file_as_folder(path: Path, option: str) -> None:
    """Raise :class:`MsferError` if ``path`` (a folder ``option`` writes into) is a file or could not be made.

    Checked before the work, so that a run does not end, after it, where it could have begun.
    """
    if path.exists() and not path.is_dir():
        raise MsferError(f"{option} {printable(path)} is a file; give a folder")
    blocking = _file_in_the_way(path)
    if blocking is not None:
        raise MsferError(f"cannot write {printable(path)}: {printable(blocking)} is a file, not a folder")


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path``'s folders if it is not a folder (nothing can be made under it)."""
    for folder in path.parents:
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def _why_not_written(path: Path, error: OSError) -> str:
    """The reason ``path`` could not be written: a file where a folder on its way should be, else the OS's words."""
    if path.is_dir():
        return "it is a folder"
    blocking = _file_in_the_way(path)
    if blocking is not None:  # FileExistsError or NotADirectoryError say this only obliquely
        return f"{printable(blocking)} is a file, not a folder"
    return error.strerror or str(error)


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an :class:`OSError` of the block (which writes ``path``) into one :class:`MsferError` naming it."""
    try:
        yield
    except OSError as error:
        raise MsferError(f"cannot write {printable(path)}: {_why_not_written(Path(path), error)}") from None


def temporary_beside(path: Path, suffix: str) -> str:
    """An empty temporary file (ASCII name) in ``path``'s folder, with the permissions a new file gets.

    ``mkstemp`` makes it readable by its owner only (0600); an output renamed from it should be
    what ``open(path, "w")`` would have made (0666 minus the umask).
    """
    if path.is_dir():  # else only the final rename would find it, after all the work of writing
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), os.fspath(path))
    handle, temporary = tempfile.mkstemp(prefix=".msfer-", suffix=suffix, dir=path.parent)
    os.close(handle)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(temporary, 0o666 & ~umask)
    return temporary


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` if the block succeeds, removed if not.

    ``suffix`` (default ``path``'s own) is the temporary file's extension, for writers that
    choose the format by it. The temporary name is ASCII, whatever ``path``'s name is. An
    :class:`OSError` (a folder that cannot be made, a full disk) is a :class:`MsferError` naming ``path``.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_beside(path, path.suffix if suffix is None else suffix)
        try:
            yield Path(temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)
