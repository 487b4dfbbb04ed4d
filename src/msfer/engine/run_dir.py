"""A run's folder: what it holds, and how each epoch commits to it.

Each epoch commits ``metrics.csv`` (rewritten whole, with ``curves.png``), then ``best.pt`` (if
the epoch improved), then ``last.pt``, each through :mod:`msfer.files` (temporary file, fsync,
rename). ``last.pt`` is the commit marker: a run killed anywhere resumes from the last committed
epoch, ``metrics.csv`` is cut back to it (:func:`committed_rows`) and ``best.pt`` is reconciled
with the resumed best record (:func:`reconcile_best`).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from ..errors import MsferError
from ..files import write_atomic
from ..model.checkpoint import load_checkpoint, save_checkpoint
from .metrics import plot_learning_curves

log = logging.getLogger(__name__)

METRICS_FIELDS = ("epoch", "train_loss", "train_accuracy", "val_overall_accuracy", "val_mean_class_accuracy", "lr",
                  "epoch_seconds", "train_images_per_second", "photo_val_overall_accuracy",
                  "photo_val_mean_class_accuracy", "photo_val_faces_missed")
# What a run writes in its output directory (and --overwrite removes): nothing else there is touched.
RUN_FILES = ("config.yaml", "metrics.csv", "curves.png", "best.pt", "last.pt")


def claim_output_dir(out: Path, overwrite: bool) -> None:
    """Create the run directory; refuse one that already holds files, unless ``overwrite``.

    With ``overwrite`` the files of a run there (:data:`RUN_FILES`, the temporary files of
    interrupted writes, the TensorBoard events) are removed, so the new run starts fresh.
    """
    if out.exists() and not out.is_dir():
        raise MsferError(f"output directory {out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite and (out / "last.pt").is_file():
            raise MsferError(f"output directory {out} already holds a run: continue it with --resume {out}, "
                             "choose another --output-dir, or pass --overwrite to start over there")
        if not overwrite:
            raise MsferError(f"output directory {out} already holds files but no last.pt (no epoch of a run "
                             "there was saved, so it cannot be resumed): choose another --output-dir, or pass "
                             "--overwrite to start over there")
        for name in RUN_FILES:
            remove_file(out / name)
        remove_interrupted_writes(out)
        for events in (out / "tensorboard").glob("events.out.tfevents.*"):
            remove_file(events)
    out.mkdir(parents=True, exist_ok=True)


def remove_interrupted_writes(out: Path) -> None:
    """Remove the temporary files that a kill left in the run folder (only the run's one process writes there)."""
    for path in out.glob(".msfer-*"):
        remove_file(path)
    for name in RUN_FILES:  # the temporary names of earlier versions of msfer
        remove_file(out / f".{name}.tmp")


def read_rows(path: Path) -> list[dict]:
    """The rows of a run's metrics.csv ([] when it is missing)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return [row for row in csv.DictReader(handle) if row.get("epoch")]


def committed_rows(path: Path, epoch: int) -> list[dict]:
    """The rows of ``path`` (a metrics.csv) up to the committed ``epoch``, one per epoch, the latest kept.

    Rows after it were written by an epoch whose commit (last.pt) did not happen: it runs again.
    """
    rows = {}
    for row in read_rows(path):
        if row["epoch"].isdigit() and int(row["epoch"]) <= epoch:
            rows[int(row["epoch"])] = row
    return [rows[number] for number in sorted(rows)]


def write_rows(out: Path, rows: list[dict], title: str) -> None:
    """``metrics.csv`` with ``rows``, then (when there are any) ``curves.png``, each written whole."""
    def write(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=METRICS_FIELDS, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    write_atomic(out / "metrics.csv", write, mode="w")
    if rows:
        write_atomic(out / "curves.png", lambda handle: plot_learning_curves(rows, handle, title))


def reconcile_best(out: Path, epoch: int, best: dict, resumed: dict) -> dict:
    """Make best.pt and the resumed best record agree (after a kill between their writes); return the best record.

    ``epoch`` is the committed epoch, ``best`` its checkpoint's best record and ``resumed`` the checkpoint.
    """
    path, recorded = out / "best.pt", best["epoch"]
    on_disk = None
    if path.is_file():
        try:
            on_disk = load_checkpoint(path)
        except MsferError as error:
            log.warning("%s; it is ignored", error)
    disk_epoch = on_disk.get("epoch") if on_disk else None
    if disk_epoch is not None and disk_epoch > epoch and on_disk.get("best", {}).get("epoch") == disk_epoch:
        # Written for the epoch whose last.pt a kill prevented: it was validated and beat the
        # committed best, so it stays the best; the rerun of its epoch replaces it if it does better.
        return on_disk["best"]
    if recorded is not None and disk_epoch != recorded:
        if recorded == epoch:  # last.pt is that epoch's checkpoint (runs that wrote last.pt first)
            log.info("best.pt is rewritten from last.pt (epoch %d): a kill had left it behind", epoch)
            save_checkpoint(resumed, path)
        else:
            log.warning("%s holds epoch %s, but the run's best epoch is %d, whose weights are gone: best.pt is "
                        "replaced when an epoch does better", path, disk_epoch, recorded)
    return best


def remove_file(path: Path) -> None:
    """Remove ``path`` if it is a file (whatever else has that name is not msfer's to remove)."""
    if path.is_file() or path.is_symlink():
        path.unlink()
