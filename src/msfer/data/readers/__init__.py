"""Dataset readers: each maps one dataset's own layout and labels to :class:`Sample` records.

``read_<format>(root, **options) -> DatasetIndex``, registered in :data:`READERS` and
dispatched by :func:`read_dataset`. Labels become indices into ``msfer.labels.EMOTIONS``
through a table stated in each reader's module.

What happens with bad input (the same across readers):

* missing dataset folder, label file or CSV -> ``DatasetError`` naming the path;
* a label-file line that cannot be parsed, or a label code or class-folder name that is
  not a known expression -> ``DatasetError`` naming the file and line (or folder):
  never a guessed label, and a broken label file is not something to train through;
* expressions outside the 7 classes (contempt, FER+ unknown / not a face / no majority,
  AffectNet none / uncertain / non-face) -> counted in ``DatasetIndex.skipped``, by design;
* an image named by a label file but absent -> counted skip ``"missing image"`` with a
  problem entry naming the label line (``require_images=False`` keeps such samples, for
  counting labels-only copies); a non-image file in a class folder, or an entry there that
  is no file (a broken link) -> counted skip with a problem entry;
* a corrupt, truncated or empty image is only found when decoded: ``sample.load()``
  raises ``UnreadableImageError`` naming the file, and ``msfer datasets inspect
  --check-images`` decodes every image and counts them.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

from ._index import DatasetError, DatasetIndex
from .affectnet import read_affectnet
from .fer import ferplus_majority, ferplus_soft_label, read_fer2013, read_ferplus
from .folders import read_ckplus, read_folder, read_jaffe
from .rafdb import read_rafdb

READERS: dict[str, Callable[..., DatasetIndex]] = {
    "rafdb": read_rafdb,
    "fer2013": read_fer2013,
    "ferplus": read_ferplus,
    "affectnet": read_affectnet,
    "ckplus": read_ckplus,
    "jaffe": read_jaffe,
    "folder": read_folder,
}


def read_dataset(root: str | Path, format: str, **options) -> DatasetIndex:
    """Read the dataset at ``root`` with the reader of ``format``; unknown formats or options are errors."""
    if format not in READERS:
        raise DatasetError(f"unknown dataset format {format!r}; expected one of {', '.join(READERS)}")
    reader = READERS[format]
    accepted = list(inspect.signature(reader).parameters)[1:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise DatasetError(
            f"the {format} reader has no option {', '.join(unknown)}; its options: {', '.join(accepted) or 'none'}"
        )
    if not Path(root).exists():
        raise DatasetError(f"dataset path {root} does not exist")
    return reader(root, **options)


__all__ = [
    "READERS", "DatasetError", "DatasetIndex", "read_dataset", "read_rafdb", "read_fer2013", "read_ferplus",
    "read_affectnet", "read_ckplus", "read_jaffe", "read_folder", "ferplus_majority", "ferplus_soft_label",
]
