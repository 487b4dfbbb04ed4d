"""Files that a kill or a full disk never leaves half-written."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from ..errors import MsferError


def write_atomic(path: str | Path, write: Callable[[Any], None], mode: str = "wb") -> Path:
    """Write ``path`` through ``write(handle)`` into a temporary file beside it, then ``os.replace`` it.

    A process killed (or a disk that fills) at any moment leaves either the old file or the
    new one, never a part of it. The data is flushed to the disk before the rename. Raises
    :class:`MsferError` naming ``path`` when it cannot be written.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if tmp.is_file():
            tmp.unlink()
        raise MsferError(f"cannot write {path}: {error}") from None
    return path
