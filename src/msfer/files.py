"""The one way msfer writes an output file: whole or not at all.

Every file a command writes whole (checkpoints, ``metrics.csv``, ``metrics.json``, plots,
reports, exports, annotated copies, the run's ``config.yaml``) goes through
:func:`atomic_output`: the data is written to a temporary file beside the target, flushed to
the disk (``fsync``) and only then renamed onto the target (``os.replace``). A process killed
or a disk that fills at any moment leaves either the old file or the new one, never a part of
it. :func:`write_atomic` and :func:`write_text` are the same writer for a write function or a
text. Files written record by record (the JSONL and CSV of ``msfer predict``, the annotation
file of ``msfer annotate``) are appended to instead, so that an interrupted run can resume; each
record (or batch) is appended whole or cut off again (:func:`append_whole`).

**One writer per output.** A command holds :func:`sole_writer` on its output (a file, or the
folder of ``msfer report``) for the whole run, from before any work: a second msfer run given the
same output, started at the same time or while the first is running, is refused with one error
naming it, instead of the two interleaving their records or replacing each other's file.

An :class:`OSError` while writing (a folder that cannot be made, a full disk) is one
:class:`MsferError` naming the file and the reason (:func:`writing`), not a traceback; a writer
that reports the :class:`OSError` as another exception (``torch.save`` turns a full disk into a
``RuntimeError``) counts the same. A full disk (or an exhausted quota) is a :class:`DiskFullError`,
which a command does not take for a fault of one input: it stops the run.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import logging
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from .errors import MsferError
from .outputs import printable

log = logging.getLogger(__name__)

# The errors of a file system that has no room left (a full disk, an exhausted quota).
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(MsferError):
    """An output could not be written for lack of space: no input is at fault, and nothing later can be written
    either, so a command stops (with one line naming the file) instead of going on to the next input."""


def file_in_the_way(path: Path) -> Path | None:
    """The nearest existing one of ``path``'s folders if it is not a folder (nothing can be made under it)."""
    for folder in path.parents:
        if folder.exists():
            return None if folder.is_dir() else folder
    return None


def refuse_file_as_folder(path: Path, option: str) -> None:
    """Raise :class:`MsferError` if ``path`` (a folder ``option`` writes into) is a file or could not be made.

    Checked before the work, so that a run does not end, after it, where it could have begun.
    """
    if path.exists() and not path.is_dir():
        raise MsferError(f"{option} {printable(path)} is a file; give a folder")
    blocking = file_in_the_way(path)
    if blocking is not None:
        raise MsferError(f"cannot write {printable(path)}: {printable(blocking)} is a file, not a folder")


def ready_folder(path: Path, option: str) -> None:
    """Check that the output folder ``path`` (given as ``option``) can be written: files can be made in it, or in
    the nearest of its folders that exists when it does not (it could then be made).

    Raises :class:`MsferError` naming it (a file in its place, no permission, a read-only file
    system) before the work, so that a run does not find out after it. Nothing is left: the
    check's own empty file is removed, and no folder is made.
    """
    refuse_file_as_folder(path, option)
    existing = next((folder for folder in (path, *path.parents) if folder.exists()), Path("."))
    try:
        os.unlink(temporary_beside(existing / ".msfer-check", ""))
    except OSError as error:
        kind = DiskFullError if error.errno in NO_SPACE else MsferError
        raise kind(f"cannot write {printable(path)}: {_why_not_written(path / '.msfer-check', error)}") from None


def _why_not_written(path: Path, error: OSError) -> str:
    """The reason ``path`` could not be written: a file where a folder on its way should be, else the OS's words."""
    if path.is_dir():
        return "it is a folder"
    blocking = file_in_the_way(path)
    if blocking is not None:  # FileExistsError or NotADirectoryError say this only obliquely
        return f"{printable(blocking)} is a file, not a folder"
    return error.strerror or str(error)


def os_error_behind(error: BaseException) -> OSError | None:
    """``error`` if it is an :class:`OSError`, else the OSError it was raised while handling (or from), if any.

    ``torch.save`` reports a failed write as a ``RuntimeError`` raised while handling the
    ``OSError`` (``No space left on device``) of the file.
    """
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


@contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn an :class:`OSError` of the block (which writes ``path``) into one :class:`MsferError` naming it.

    An exception raised because of an ``OSError`` (see :func:`os_error_behind`) is turned the
    same way; an error of the file system's space (:data:`NO_SPACE`) is a :class:`DiskFullError`.
    Any other exception, and a :class:`MsferError`, passes through unchanged.
    """
    try:
        yield
    except MsferError:
        raise
    except Exception as error:  # noqa: BLE001 - only those an OSError is behind are turned, the rest re-raised
        cause = os_error_behind(error)
        if cause is None:
            raise
        kind = DiskFullError if cause.errno in NO_SPACE else MsferError
        raise kind(f"cannot write {printable(path)}: {_why_not_written(Path(path), cause)}") from None


def append_whole(file: BinaryIO, data: bytes, path: str | os.PathLike) -> None:
    """Append ``data`` to the open (unbuffered, binary) ``file`` at ``path``, whole or not at all: when it cannot be
    (a full disk: :class:`DiskFullError`; another error: :class:`MsferError` naming ``path``) the file is cut back to
    where it ended, so that it still ends with its last whole record. Cutting back needs no space."""
    end = file.seek(0, os.SEEK_END)
    with writing(path):
        try:
            view = memoryview(data)
            while view:  # an unbuffered write may write part of it
                view = view[file.write(view):]
        except BaseException:
            file.truncate(end)
            raise


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


def flush_to_disk(path: str | os.PathLike) -> None:
    """``fsync`` a written file, so that a rename after it never publishes data still in the page cache."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_output(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; flushed and renamed onto ``path`` if the block succeeds,
    removed if not.

    ``suffix`` (default ``path``'s own) is the temporary file's extension, for writers that
    choose the format by it. The temporary name is ASCII, whatever ``path``'s name is (writers
    such as PyAV cannot open a name that is not UTF-8). The folder is made if it is missing.
    """
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = temporary_beside(path, path.suffix if suffix is None else suffix)
        try:
            yield Path(temporary)
            flush_to_disk(temporary)
            os.replace(temporary, path)
        finally:
            if os.path.exists(temporary):
                os.unlink(temporary)


def write_atomic(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` whole through ``write(handle)`` (see :func:`atomic_output`); text modes write UTF-8 with
    the newlines as given. Returns the path."""
    path = Path(path)
    with atomic_output(path) as temporary:
        with open(temporary, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as handle:
            write(handle)
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` whole (see :func:`atomic_output`). Returns the path."""
    return write_atomic(path, lambda handle: handle.write(text), mode="w")


LOCK_SUFFIX = ".msfer-lock"
_NAME_MAX = 255  # bytes in one file name on common file systems


def lock_file(path: Path) -> Path:
    """The lock file beside the output file ``path``: ``.NAME.msfer-lock`` (a hash of NAME when that is too long)."""
    name = f".{path.name}{LOCK_SUFFIX}"
    if len(os.fsencode(name)) > _NAME_MAX:
        name = f".{hashlib.sha1(os.fsencode(path.name)).hexdigest()}{LOCK_SUFFIX}"
    return path.with_name(name)


def _same_file(descriptor: int, path: Path) -> bool:
    """Whether ``path`` still names the open file ``descriptor`` (an earlier holder may have removed it)."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(descriptor)
    return (status.st_dev, status.st_ino) == (mine.st_dev, mine.st_ino)


@contextmanager
def sole_writer(path: str | os.PathLike, option: str = "--out", folder: bool = False) -> Iterator[None]:
    """Hold, for the block, the advisory lock (``fcntl.flock``) that makes this process the one writer of ``path``.

    ``path`` is an output file (its folder is made if missing) or, with ``folder``, an existing
    folder that a command writes into. A file is locked through :func:`lock_file` beside it, which stays the
    same file while the output is replaced (atomic writes rename a new file onto it) and is
    removed when the block ends; a folder is locked itself. The lock is the kernel's: a killed
    run's lock ends with it, whatever file it leaves.

    Raises :class:`MsferError` naming ``path`` (as ``option``) when another process holds the
    lock: take it before any work, and check what the output holds only once it is held. Where
    the file system cannot lock (some network file systems), the block runs unlocked, with a
    warning in the log.
    """
    path = Path(path)
    target = path if folder else lock_file(path)
    with writing(path):
        if not folder:
            path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(target, (os.O_RDONLY if folder else os.O_RDWR | os.O_CREAT) | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                raise MsferError(f"{option} {printable(path)} is being written by another msfer run: wait for it to "
                                 f"end, or give this run another {option}") from None
            except OSError as error:  # ENOLCK, EINVAL: the file system has no locks
                log.warning("cannot lock %s (%s): a second msfer run writing it at the same time would not be "
                            "refused", printable(path), error.strerror or error)
                break
            if folder or _same_file(descriptor, target):
                break
            os.close(descriptor)  # the file an earlier holder locked and then removed: lock the one there now
    try:
        yield
    finally:
        try:
            if not folder and _same_file(descriptor, target):
                os.unlink(target)  # while held: whoever opened it meanwhile finds it gone and starts again
        except OSError:
            pass
        finally:
            os.close(descriptor)
