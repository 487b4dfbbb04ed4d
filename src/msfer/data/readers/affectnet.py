"""AffectNet, the manually annotated part.

``training.csv`` / ``validation.csv`` (splits ``train`` / ``valid``; AffectNet's test set
is not public, so papers report on ``valid``) with columns including
``subDirectory_filePath`` and ``expression``: 0..7 = Neutral, Happy, Sad, Surprise, Fear,
Disgust, Anger, Contempt; 8..10 = None, Uncertain, Non-Face. Contempt and 8..10 are
excluded and counted in ``skipped``. Images are ``<images>/<subDirectory_filePath>``.
A bad row (missing field, unknown code) is an error naming the file and line.
"""
from __future__ import annotations

import csv
from pathlib import Path

from tqdm import tqdm

from ...labels import EMOTION_INDEX
from ..samples import Sample
from ._index import DatasetError, DatasetIndex, at, keep_if_present, require_dir, require_file

AFFECTNET_CODES = {
    0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "angry",
    7: "contempt", 8: "none", 9: "uncertain", 10: "not a face",
}
AFFECTNET_EXCLUDED = ("contempt", "none", "uncertain", "not a face")
AFFECTNET_FILES = {"training.csv": "train", "validation.csv": "valid"}
DEFAULT_IMAGE_FOLDER = "Manually_Annotated_Images"


def read_affectnet(root: str | Path, images: str | Path | None = None, require_images: bool = True) -> DatasetIndex:
    """AffectNet from a folder holding ``training.csv``/``validation.csv``, or from one CSV file.

    ``images`` is the folder the ``subDirectory_filePath`` column is relative to; by default
    ``Manually_Annotated_Images`` beside the CSV when it exists, else the CSV's folder.
    One CSV file's split comes from its name (``training`` -> train, ``validation`` -> valid,
    anything else -> the file's stem).
    """
    root = Path(root)
    if root.is_dir():
        csv_files = [root / name for name in AFFECTNET_FILES if (root / name).is_file()]
        if not csv_files:
            raise DatasetError(f"{root} holds neither {' nor '.join(AFFECTNET_FILES)}")
    else:
        csv_files = [require_file(root, "AffectNet CSV")]
    index = DatasetIndex("affectnet", root)
    for csv_file in csv_files:
        image_root = Path(images) if images is not None else _default_image_root(csv_file.parent)
        split = AFFECTNET_FILES.get(csv_file.name, csv_file.stem)
        _read_csv(index, csv_file, require_dir(image_root, "AffectNet image folder"), split, require_images)
    return index


def _default_image_root(folder: Path) -> Path:
    return folder / DEFAULT_IMAGE_FOLDER if (folder / DEFAULT_IMAGE_FOLDER).is_dir() else folder


def _read_csv(index: DatasetIndex, csv_file: Path, image_root: Path, split: str, require_images: bool) -> None:
    with csv_file.open(newline="") as file:
        rows = csv.DictReader(file)
        missing = {"subDirectory_filePath", "expression"} - set(rows.fieldnames or ())
        if missing:
            raise DatasetError(f"{at(csv_file, 1)}: AffectNet CSV header lacks {', '.join(sorted(missing))}")
        for row in tqdm(rows, desc=f"reading {csv_file.name}", unit=" rows", leave=False):
            where = at(csv_file, rows.line_num)
            name, code = row["subDirectory_filePath"], (row["expression"] or "").strip()
            if not name or not code.isdigit() or int(code) not in AFFECTNET_CODES:
                raise DatasetError(
                    f"{where}: expected an image path and an expression code 0-10, got {name!r}, {code!r}"
                )
            label = AFFECTNET_CODES[int(code)]
            if label in AFFECTNET_EXCLUDED:
                index.skip(label)
                continue
            if keep_if_present(index, image_root / name, where, require_images):
                index.samples.append(Sample(Path(name).as_posix(), EMOTION_INDEX[label], split, path=image_root / name))
