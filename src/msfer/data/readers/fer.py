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
(vote counts of 10 annotators). See :func:`ferplus_majority` for the label rule. FER+ names each
image by its FER2013 CSV row (``fer0000000.png`` is row 0), which is how :func:`read_fer2013`'s
``ferplus`` option gives FER2013's own samples their vote distributions.
"""
from __future__ import annotations

import csv
import logging
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
# The FER+ folder relabelling each FER2013 split.
FERPLUS_FOLDER_OF_SPLIT = {"train": "FER2013Train", "public_test": "FER2013Valid", "private_test": "FER2013Test"}
# Largest mean absolute difference (grey levels) between a FER2013 image and its FER+ copy. Folder-tree
# copies of FER2013 are JPEG re-encodings, 1-2 levels off the PNGs; two different faces differ by tens.
FERPLUS_TWIN_MAE = 4.0

log = logging.getLogger(__name__)


def read_fer2013(root: str | Path, split: str = "train", ferplus: str | Path | None = None) -> DatasetIndex:
    """FER2013 from the Kaggle CSV (``root`` is a file) or a ``[<split>/]<class>/`` folder tree.

    ``split`` names the split of a CSV without a ``Usage`` column, or of a folder tree
    without a split level. ``ferplus`` (a FER+ folder) also gives each sample the FER+ vote
    distribution of its image as ``soft_label`` (:func:`attach_ferplus_votes`); ``label``
    stays FER2013's.
    """
    root = Path(root)
    if root.is_dir():
        index = read_class_tree(root, "fer2013", split)
    else:
        index = _read_fer2013_csv(require_file(root, "FER2013 CSV"), split)
    if ferplus is not None:
        attach_ferplus_votes(index, ferplus)
    return index


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


def ferplus_soft_label(votes: list[int]) -> tuple[float, ...] | None:
    """The vote distribution over the 7 emotions in ``EMOTIONS`` order, outlier votes (<= 1) zeroed; ``None``
    when no emotion keeps a vote (contempt, unknown or not-a-face only)."""
    kept = {name: (v if v > 1 else 0) for name, v in zip(FERPLUS_COLUMNS, votes)}
    total = sum(kept[name] for name in EMOTIONS)
    return tuple(kept[name] / total for name in EMOTIONS) if total else None


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


def attach_ferplus_votes(index: DatasetIndex, ferplus_root: str | Path) -> int:
    """Set ``soft_label`` of FER2013 samples to their image's FER+ vote distribution; returns how many got one.

    Samples of a FER2013 CSV (ids ``<split>/<row>``, rows counted over the whole file) are joined by row:
    FER+ names the image of row ``r`` ``fer<r:07d>.png``, in the folder of the sample's split
    (:data:`FERPLUS_FOLDER_OF_SPLIT`); where FER+'s images are there, a few rows are checked against
    them. Images of a folder tree carry no row, so they are joined by pixels: a sample's FER+ copies are
    the images of its split's folder within :data:`FERPLUS_TWIN_MAE` grey levels (mean absolute
    difference) of it, and their vote distributions are averaged (FER2013 holds some pictures twice).
    Samples without a FER+ copy, or whose votes all fall outside the 7 classes (contempt, unknown, not a
    face), keep ``soft_label=None``; the count is logged. Raises :class:`DatasetError` when
    ``ferplus_root`` has none of the FER+ folders, a ``label.csv`` is malformed, a folder tree meets a
    FER+ folder without its images, or a CSV's rows are not FER+'s.
    """
    root = require_dir(Path(ferplus_root), "FER+ folder")
    if not any((root / folder).is_dir() for folder in FERPLUS_FOLDERS):
        raise DatasetError(f"{root} has none of the FER+ folders {', '.join(FERPLUS_FOLDERS)}")
    attached, counts, without = 0, [], []
    for split in sorted({sample.split for sample in index.samples}):
        folder = root / FERPLUS_FOLDER_OF_SPLIT.get(split, "")
        samples = [sample for sample in index.samples if sample.split == split]
        if split not in FERPLUS_FOLDER_OF_SPLIT or not folder.is_dir():
            without.append(split)
            continue
        votes = _ferplus_vote_table(require_file(folder / "label.csv", "FER+ label file"))
        by_row = all(sample.pixels is not None for sample in samples)
        if by_row:
            copies = [[f"fer{int(sample.id.rpartition('/')[2]):07d}.png"] for sample in samples]
            _check_rows(samples, copies, folder, index.root)
        else:
            copies = _ferplus_twins(samples, folder, sorted(votes))
        joined = 0
        for sample, names in zip(samples, copies):
            shares = [s for s in (ferplus_soft_label(votes[name]) for name in names if name in votes) if s]
            if shares:
                sample.soft_label = tuple(float(x) for x in np.mean(shares, axis=0))
                joined += 1
        if by_row:
            _check_agreement([sample for sample in samples if sample.soft_label is not None], folder, index.root)
        attached += joined
        counts.append(f"{split} {joined} of {len(samples)}")
    level = logging.INFO if attached >= 0.9 * len(index.samples) else logging.WARNING
    log.log(level, "%s: FER+ vote distributions for %s%s", index.root, ", ".join(counts) or "no sample",
            f"; no FER+ folder for split {', '.join(map(repr, without))} (FER+ relabels "
            f"{', '.join(FERPLUS_FOLDER_OF_SPLIT)})" if without else "")
    return attached


# On the full FER2013 CSV, FER2013's label is FER+'s vote majority for about 65% of the images; rows joined to
# other faces' votes agree about as often as two random labels do (about 20%). Checked in blocks of rows in file
# order and on the split's last block of rows, so that a row missing late in a file (every later row joined to its
# neighbour's votes) shows too, unless it is among the last ~225 rows (under 55% of a block shifted still passes).
MIN_LABEL_AGREEMENT = 0.4
AGREEMENT_BLOCK = 500


def _check_agreement(samples: list[Sample], folder: Path, csv_path: Path) -> None:
    """Refuse a row join whose labels and votes disagree as other faces' would, in any block of
    :data:`AGREEMENT_BLOCK` consecutive joined rows or in the last such block (a filtered or reordered CSV where
    FER+'s images are not there to compare with). Splits of under 100 joined rows are too small to tell and pass."""
    if len(samples) < 100:
        return
    starts = list(range(0, len(samples), AGREEMENT_BLOCK))
    if len(starts) > 1 and len(samples) - starts[-1] < AGREEMENT_BLOCK // 2:
        starts.pop()  # a short last block joins the one before
    blocks = list(zip(starts, [*starts[1:], len(samples)]))
    if len(samples) > AGREEMENT_BLOCK:
        blocks.append((len(samples) - AGREEMENT_BLOCK, len(samples)))  # the last rows, as a block of their own
    for start, end in blocks:
        block = samples[start:end]
        agreement = float(np.mean([int(np.argmax(sample.soft_label)) == sample.label for sample in block]))
        if agreement < MIN_LABEL_AGREEMENT:
            raise DatasetError(
                f"{csv_path}: joined by row to {folder}, FER2013's labels are FER+'s vote majority for only "
                f"{100 * agreement:.0f}% of the {len(block)} images from row {block[0].id.rpartition('/')[2]} (about "
                "65% in the full fer2013.csv): its rows are not FER+'s; FER+ joins the full, unfiltered and "
                "unreordered FER2013 CSV by row")


def _ferplus_vote_table(label_file: Path) -> dict[str, list[int]]:
    """Image name -> its 10 vote counts, from one FER+ ``label.csv``."""
    table = {}
    with label_file.open(newline="") as file:
        rows = csv.reader(file)
        for row in rows:
            votes = _ferplus_votes(row, at(label_file, rows.line_num), first_line=rows.line_num == 1)
            if votes is not None:
                table[row[0].strip()] = votes
    return table


def _check_rows(samples: list[Sample], copies: list[list[str]], folder: Path, csv_path: Path) -> None:
    """Compare up to 3 CSV rows with the FER+ images their row names (where present): a filtered or reordered
    CSV would join every row to another face's votes."""
    from PIL import Image

    present = [(sample, folder / names[0]) for sample, names in zip(samples, copies) if (folder / names[0]).is_file()]
    for sample, image in present[:: max(len(present) // 3, 1)][:3]:
        theirs = np.asarray(Image.open(image).convert("L"), dtype=np.float32)
        if theirs.shape != sample.pixels.shape or np.abs(theirs - sample.pixels).mean() > FERPLUS_TWIN_MAE:
            raise DatasetError(f"{csv_path}: row {sample.id.rpartition('/')[2]} is not the face FER+ names "
                               f"{image}: FER+ joins the full FER2013 CSV by row, and this one is filtered or "
                               "reordered")


def _ferplus_twins(samples: list[Sample], folder: Path, names: list[str]) -> list[list[str]]:
    """For each sample, the names (of ``names`` in ``folder``) of the FER+ images with its pixels."""
    names = [name for name in names if (folder / name).is_file()]
    if not names:
        raise DatasetError(f"{folder} has a label.csv but none of its images: a FER2013 folder tree is joined to "
                           "FER+ by pixels, so it needs FER+'s images (or join the FER2013 CSV, by row)")
    theirs, their_ok = _grey_stack([folder / name for name in names], f"reading {folder.name} images")
    ours, our_ok = _grey_stack(samples, "reading FER2013 images")
    twins: list[list[str]] = [[] for _ in samples]
    theirs, names = theirs[their_ok], [name for name, ok in zip(names, their_ok) if ok]
    if not names:
        return twins
    # The 3 nearest by 4 x 4 block means (a 144-d vector, blind to JPEG's ringing), then checked on every pixel.
    their_blocks = _block_means(theirs)
    their_norms = (their_blocks**2).sum(1)
    nearest_k = min(3, len(names))
    for start in range(0, len(ours), 512):  # a 512 x N distance block and its argpartition: ~0.2 GB at FER2013's N
        distances = their_norms[None] - 2 * _block_means(ours[start : start + 512]) @ their_blocks.T
        nearest = np.argpartition(distances, nearest_k - 1, axis=1)[:, :nearest_k]
        for i, candidates in enumerate(nearest, start):
            if our_ok[i]:
                mae = np.abs(ours[i].astype(np.float32) - theirs[candidates]).mean(axis=(1, 2))
                twins[i] = [names[j] for j, m in zip(candidates, mae) if m <= FERPLUS_TWIN_MAE]
    return twins


def _grey_stack(items: list, desc: str) -> tuple[np.ndarray, np.ndarray]:
    """Samples or image files as one ``N x 48 x 48`` uint8 array, and which of them are 48 x 48 (the rest
    are left zero: FER2013 faces are all that size)."""
    from PIL import Image

    stack, ok = np.zeros((len(items), 48, 48), dtype=np.uint8), np.zeros(len(items), dtype=bool)
    for i, item in enumerate(tqdm(items, desc=desc, unit=" images", leave=False)):
        image = item.load().convert("L") if isinstance(item, Sample) else Image.open(item).convert("L")
        if image.size == (48, 48):
            stack[i], ok[i] = np.asarray(image), True
    return stack, ok


def _block_means(stack: np.ndarray) -> np.ndarray:
    return stack.reshape(len(stack), 12, 4, 12, 4).mean(axis=(2, 4), dtype=np.float32).reshape(len(stack), -1)


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
