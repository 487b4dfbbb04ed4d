"""A real, small file system for the tests of a full disk or a read-only folder.

A tmpfs of a given size is mounted in a private mount namespace (``unshare -rm``: no root
needed where user namespaces are allowed), a command runs on it, and what the file system
then holds is copied out, since the mount ends with the command. Where mounting is not
possible the test is skipped with the reason.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import msfer

SOURCE = str(Path(msfer.__file__).parents[1])


@functools.cache
def mount_refused() -> str | None:
    """Why a tmpfs cannot be mounted here, or None when it can."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    done = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs in a mount namespace: {done.stderr.strip()}"


def on_small_filesystem(mountpoint: Path, size: int, command: list[str], copy_to: Path, read_only: bool = False,
                        prepare: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``command`` with a tmpfs of ``size`` bytes at ``mountpoint`` (made if missing), then copy what it holds
    to ``copy_to``. ``prepare``: a folder whose content is copied onto the file system first. ``read_only``: the
    file system is read-only (after ``prepare`` was copied). Returns the command's completed process (text)."""
    reason = mount_refused()
    if reason is not None:
        pytest.skip(reason)
    mountpoint.mkdir(parents=True, exist_ok=True)
    copy_to.mkdir(parents=True, exist_ok=True)
    script = (
        'mount -t tmpfs -o size="$1" tmpfs "$2" || exit 99\n'
        'if [ -n "$4" ]; then cp -a "$4/." "$2/" || exit 99; fi\n'
        'if [ "$5" = ro ]; then mount -o remount,ro "$2" || exit 99; fi\n'
        'mount="$2"; copy="$3"; shift 5\n'
        '"$@"; status=$?\n'
        'cp -a "$mount/." "$copy/"\n'
        'exit $status\n'
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SOURCE, os.environ.get("PYTHONPATH", "")]),
           "PYTHONIOENCODING": "utf-8"}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh", str(size), str(mountpoint), str(copy_to),
                           str(prepare or ""), "ro" if read_only else "rw", *command],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode != 99, f"could not prepare the file system: {done.stderr}"
    return done


def msfer_command(*arguments: str) -> list[str]:
    """``python -m msfer.cli ARGUMENTS`` with this interpreter."""
    return [sys.executable, "-m", "msfer.cli", *arguments]
