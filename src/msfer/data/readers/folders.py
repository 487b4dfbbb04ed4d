"""Datasets whose labels are folder or file names: ``folder``, ``ckplus``, ``jaffe``.

``folder`` reads any ``<root>/[<split>/]<class>/**/<image>`` tree. Whether the first level
holds splits or classes is decided by its names: all emotion names -> classes (every
sample gets the ``split`` option, ``"all"`` by default), none -> splits; a mix is an error.
Class names go through ``msfer.labels.canonical_emotion`` (any case, synonyms);
``contempt`` folders are excluded and counted; any other unknown class folder is an
error naming it, never a guessed label. Files that are not images, and entries that are
no file (a broken link, a pipe, a linked folder, which is not followed), are counted skips
with a problem entry; dot-files are ignored.
"""
from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from ...labels import EMOTION_INDEX, UnknownLabelError, canonical_emotion
from ..images import IMAGE_EXTENSIONS, is_broken_link, not_a_file_reason
from ..samples import Sample
from ._index import DatasetError, DatasetIndex, is_hidden, relative_id, require_dir

EXCLUDED_CLASSES = ("contempt",)  # real expressions outside the 7-class space: counted, not errors
JAFFE_CODES = {
    "AN": "angry", "DI": "disgust", "FE": "fear", "HA": "happy", "NE": "neutral", "SA": "sad", "SU": "surprise",
}
_CKPLUS_SUBJECT = re.compile(r"^(S\d+)")


def read_folder(root: str | Path, split: str = "all") -> DatasetIndex:
    """Any per-class folder tree, with or without a split level."""
    return read_class_tree(Path(root), "folder", split)


def read_ckplus(root: str | Path, split: str = "all") -> DatasetIndex:
    """CK+ as per-class folders; ``Sample.subject`` is the ``Sxxx`` file-name prefix.

    CK+ has no official split: use ``msfer.data.splits.subject_split`` so that no person
    appears on both sides. A file name without the prefix is an error, as a sample with
    no subject would silently break that guarantee.
    """

    def subject_of(image: Path) -> str:
        match = _CKPLUS_SUBJECT.match(image.name)
        if match is None:
            raise DatasetError(f"{image}: CK+ file name does not start with the subject (e.g. S005_001_00000011.png)")
        return match.group(1)

    return read_class_tree(Path(root), "ckplus", split, subject_of)


def read_jaffe(root: str | Path, split: str = "all") -> DatasetIndex:
    """JAFFE: every image under ``root``; ``KA.AN1.39.tiff`` is subject KA, label AN (angry)."""
    root = require_dir(Path(root), "JAFFE folder")
    index = DatasetIndex("jaffe", root)
    for path in _files(root):
        if _skipped_as_no_file(index, path):
            continue
        if path.suffix.lower() not in IMAGE_EXTENSIONS:
            index.skip("not an image file", f"{path}: not an image file")
            continue
        parts = path.name.split(".")
        code = parts[1][:2].upper() if len(parts) > 2 else ""
        if code not in JAFFE_CODES:
            raise DatasetError(
                f"{path}: cannot read the JAFFE label from the file name; expected <subject>.<code><n>.<number>.<ext> "
                f"with code one of {', '.join(JAFFE_CODES)}"
            )
        index.samples.append(
            Sample(relative_id(path, root), EMOTION_INDEX[JAFFE_CODES[code]], split, path=path, subject=parts[0])
        )
    return index


def read_class_tree(
    root: Path, format: str, split: str = "all", subject_of: Callable[[Path], str] | None = None
) -> DatasetIndex:
    """The shared reader of ``<root>/[<split>/]<class>/**/<image>`` trees (see the module docstring)."""
    require_dir(root, f"{format} dataset folder")
    index = DatasetIndex(format, root)
    for split_name, split_dir in _split_folders(root, split):
        for entry in sorted(split_dir.iterdir()):
            if is_hidden(entry):
                continue
            if is_broken_link(entry):  # perhaps a class folder on an unmounted disk
                _skipped_as_no_file(index, entry)
                continue
            if not entry.is_dir():
                index.skip("file outside a class folder", f"{entry}: file outside a class folder, ignored")
                continue
            label = _class_label(entry)
            for path in _files(entry):
                if _skipped_as_no_file(index, path):
                    continue
                if path.suffix.lower() not in IMAGE_EXTENSIONS:
                    index.skip("not an image file", f"{path}: not an image file")
                elif label is None:
                    index.skip(entry.name.lower())
                else:
                    subject = subject_of(path) if subject_of else None
                    index.samples.append(Sample(relative_id(path, root), label, split_name, path=path, subject=subject))
    return index


def _split_folders(root: Path, default_split: str) -> list[tuple[str, Path]]:
    entries = sorted(root.iterdir())
    broken = [entry for entry in entries if is_broken_link(entry) and entry.suffix.lower() not in IMAGE_EXTENSIONS]
    if broken:  # a split or class folder linked from a disk that is not there: reading on would drop it unseen
        raise DatasetError(f"{broken[0]}: {not_a_file_reason(broken[0])}")
    folders = [entry for entry in entries if entry.is_dir() and not is_hidden(entry)]
    if not folders:
        raise DatasetError(f"{root} has no class folders; expected <root>/[<split>/]<class>/<images>")
    classes = [folder.name for folder in folders if _is_class_name(folder.name)]
    if len(classes) == len(folders):
        return [(default_split, root)]
    if classes:
        others = [folder.name for folder in folders if not _is_class_name(folder.name)]
        raise DatasetError(
            f"{root} mixes class folders ({', '.join(classes)}) with other folders ({', '.join(others)}); "
            f"expected either <root>/<class>/ or <root>/<split>/<class>/"
        )
    return [(folder.name, folder) for folder in folders]


def _is_class_name(name: str) -> bool:
    try:
        canonical_emotion(name)
    except UnknownLabelError:
        return name.lower() in EXCLUDED_CLASSES
    return True


def _class_label(folder: Path) -> int | None:
    """The label index of a class folder; ``None`` for an excluded class."""
    if folder.name.lower() in EXCLUDED_CLASSES:
        return None
    try:
        return EMOTION_INDEX[canonical_emotion(folder.name)]
    except UnknownLabelError as error:
        raise DatasetError(f"{folder}: class folder is not an emotion: {error}") from None


def _files(folder: Path) -> list[Path]:
    """Entries under ``folder`` at any depth but the folders it walks, sorted, leaving out dot-files and dot-folders.

    Broken links, pipes and linked folders are in it, for :func:`_skipped_as_no_file` to count, never dropped unseen.
    """
    return sorted(
        path
        for path in folder.rglob("*")
        if not (path.is_dir() and not path.is_symlink())
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def _skipped_as_no_file(index: DatasetIndex, path: Path) -> bool:
    """Whether ``path`` is no regular file (a broken link, a pipe, a linked folder), counted as a skip if so."""
    if path.is_file():
        return False
    index.skip("not a file", f"{path}: {not_a_file_reason(path)}")
    return True
