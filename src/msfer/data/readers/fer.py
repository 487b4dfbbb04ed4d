"""FER2013 (Kaggle CSV or per-class folders) and FER+ (its relabelling by 10 annotators).

FER2013 CSV: a header ``emotion,pixels,Usage`` (names stripped, any column order);
``emotion`` 0..6 = Angry, Disgust, Fear, Happy, Sad, Surprise, Neutral; ``pixels`` a
square number (48 x 48 = 2304) of space-separated 0..255 values; ``Usage`` Training /
PublicTest / PrivateTest -> splits ``train`` / ``public_test`` / ``private_test``. A CSV
without ``Usage`` (the challenge's train.csv) puts every row in the ``split`` option.
Sample ids are ``<split>/<row>``, the row counted from 0 over the whole file. Any bad
row is an error naming the file and line: in a machine-made CSV it means a broken file.

FER+: ``FER2013Train|Valid|Test/label.csv``, headerless rows ``image name, "(x, y, w, h)",
neutral, happiness, surprise, sadness, anger, disgust, fear, contempt, unknown, NF``
(vote counts of 10 annotators). See :func:`ferplus_majority` for the label rule.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ...labels import EMOTION_INDEX, EMOTIONS
from ..samples import Sample
from ._index import DatasetError, DatasetIndex, at, keep_if_present, require_dir, require_file
from .folders import read_class_tree

FER2013_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER2013_USAGE = {"Training": "train", "PublicTest": "public_test", "PrivateTest": "private_test"}

FERPLUS_FOLDERS = {"FER2013Train": "train", "FER2013Valid": "valid", "FER2013Test": "test"}
FERPLUS_COLUMNS = (
    "neutral", "happy", "surprise", "sad", "angry", "disgust", "fear", "contempt", "unknown", "not a face",
)
# Winners outside the 7 classes, as they are counted in DatasetIndex.skipped.
FERPLUS_EXCLUDED = ("contempt", "unknown", "not a face")


def read_fer2013(root: str | Path, split: str = "train") -> DatasetIndex:
    """FER2013 from the Kaggle CSV (``root`` is a file) or a ``[<split>/]<class>/`` folder tree.

    ``split`` names the split of a CSV without a ``Usage`` column, or of a folder tree
    without a split level.
    """
    root = Path(root)
    if root.is_dir():
        return read_class_tree(root, "fer2013", split)
    return _read_fer2013_csv(require_file(root, "FER2013 CSV"), split)


def _read_fer2013_csv(path: Path, default_split: str) -> DatasetIndex:
    index = DatasetIndex("fer2013", path)
    with path.open(newline="") as file:
        rows = csv.reader(file)
        header = [name.strip().lower() for name in next(rows, [])]
        missing = {"emotion", "pixels"} - set(header)
        if missing:
            raise DatasetError(f"{at(path, 1)}: FER2013 CSV header lacks {', '.join(sorted(missing))} (got {header})")
        emotion_column, pixels_column = header.index("emotion"), header.index("pixels")
        usage_column = header.index("usage") if "usage" in header else None
        for row_number, row in enumerate(tqdm(rows, desc=f"reading {path.name}", unit=" rows", leave=False)):
            where = at(path, rows.line_num)
            if len(row) != len(header):
                raise DatasetError(f"{where}: expected {len(header)} fields, got {len(row)}")
            code = row[emotion_column].strip()
            if code not in {str(i) for i in range(len(FER2013_LABELS))}:
                raise DatasetError(f"{where}: unknown FER2013 emotion {code!r} (expected 0-6)")
            if usage_column is None:
                split = default_split
            elif row[usage_column].strip() in FER2013_USAGE:
                split = FER2013_USAGE[row[usage_column].strip()]
            else:
                expected = ", ".join(FER2013_USAGE)
                raise DatasetError(f"{where}: unknown Usage {row[usage_column]!r} (expected {expected})")
            label = EMOTION_INDEX[FER2013_LABELS[int(code)]]
            pixels = _square_pixels(row[pixels_column], where)
            index.samples.append(Sample(f"{split}/{row_number}", label, split, pixels=pixels))
    return index


def _square_pixels(text: str, where: str) -> np.ndarray:
    try:
        # fromstring parses 5x faster than int() per token; numpy 1.x only warned and stopped at a bad token.
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        raise DatasetError(f"{where}: pixels are not space-separated integers") from None
    side = int(round(len(values) ** 0.5))
    if len(values) == 0 or side * side != len(values):
        raise DatasetError(f"{where}: {len(values)} pixel values do not make a square image (48 x 48 = 2304)")
    if values.min() < 0 or values.max() > 255:
        raise DatasetError(f"{where}: pixel values outside 0-255")
    return values.astype(np.uint8).reshape(side, side)


def ferplus_majority(votes: list[int]) -> str | None:
    """The FER+ paper's majority label of one image's 10 vote counts (``FERPLUS_COLUMNS`` order).

    Votes of 1 or less are zeroed (one annotator's outlier); the top column wins if it
    holds more than half of the remaining votes. Returns its name (which may be one of
    ``FERPLUS_EXCLUDED``), or ``None`` when no column has a majority.
    """
    kept = [v if v > 1 else 0 for v in votes]
    top = max(kept)
    if top == 0 or top * 2 <= sum(kept):
        return None
    return FERPLUS_COLUMNS[kept.index(top)]


def ferplus_soft_label(votes: list[int]) -> tuple[float, ...]:
    """The vote distribution over the 7 emotions in ``EMOTIONS`` order, outlier votes (<= 1) zeroed."""
    kept = {name: (v if v > 1 else 0) for name, v in zip(FERPLUS_COLUMNS, votes)}
    total = sum(kept[name] for name in EMOTIONS)
    return tuple(kept[name] / total for name in EMOTIONS)


def read_ferplus(root: str | Path, soft_labels: bool = False, require_images: bool = True) -> DatasetIndex:
    """FER+ under ``root`` (the folder holding ``FER2013Train`` etc.); labels by :func:`ferplus_majority`.

    Images without a 7-class majority are counted in ``skipped`` under ``"contempt"``,
    ``"unknown"``, ``"not a face"`` or ``"no majority"``. ``soft_labels=True`` also fills
    ``Sample.soft_label`` (:func:`ferplus_soft_label`) for the same kept images: their
    majority label stays the hard label used by accuracy.
    """
    root = require_dir(Path(root), "FER+ folder")
    folders = [name for name in FERPLUS_FOLDERS if (root / name).is_dir()]
    if not folders:
        raise DatasetError(f"{root} has none of the FER+ folders {', '.join(FERPLUS_FOLDERS)}")
    index = DatasetIndex("ferplus", root)
    for folder in folders:
        label_file = require_file(root / folder / "label.csv", "FER+ label file")
        with label_file.open(newline="") as file:
            rows = csv.reader(file)
            for row in rows:
                where = at(label_file, rows.line_num)
                votes = _ferplus_votes(row, where, first_line=rows.line_num == 1)
                if votes is None:
                    continue
                winner = ferplus_majority(votes)
                if winner is None or winner in FERPLUS_EXCLUDED:
                    index.skip(winner or "no majority")
                    continue
                image = root / folder / row[0].strip()
                if keep_if_present(index, image, where, require_images):
                    soft = ferplus_soft_label(votes) if soft_labels else None
                    sample_id = f"{folder}/{row[0].strip()}"
                    index.samples.append(
                        Sample(sample_id, EMOTION_INDEX[winner], FERPLUS_FOLDERS[folder], path=image, soft_label=soft)
                    )
    return index


def _ferplus_votes(row: list[str], where: str, first_line: bool) -> list[int] | None:
    """The 10 vote counts of a ``label.csv`` row, ``None`` for a header; errors name the line.

    The official files have no header, but a hand-edited copy may have gained one.
    """
    if len(row) != 2 + len(FERPLUS_COLUMNS):
        expected = 2 + len(FERPLUS_COLUMNS)
        raise DatasetError(f"{where}: expected {expected} fields (image, box, 10 vote counts), got {len(row)}")
    try:
        votes = [int(value) for value in row[2:]]
    except ValueError:
        if first_line:
            return None
        raise DatasetError(f"{where}: vote counts must be integers, got {row[2:]}") from None
    if min(votes) < 0:
        raise DatasetError(f"{where}: negative vote count")
    if not row[0].strip():
        raise DatasetError(f"{where}: empty image name")
    return votes
