"""RAF-DB, the official basic-expression layout.

``EmoLabel/list_patition_label.txt`` (sic) holds lines ``train_00001.jpg 5``; the split is
the ``train_``/``test_`` prefix, the label 1..7 = Surprise, Fear, Disgust, Happiness,
Sadness, Anger, Neutral. Images are ``Image/aligned/<name>_aligned.jpg`` (100 x 100
aligned faces, ``variant="aligned"``) or ``Image/original/<name>.jpg``.
"""
from __future__ import annotations

from pathlib import Path

from ...labels import EMOTION_INDEX
from ..samples import Sample
from ._index import DatasetError, DatasetIndex, at, keep_if_present, require_dir, require_file

LABEL_FILE = Path("EmoLabel/list_patition_label.txt")
RAFDB_LABELS = {1: "surprise", 2: "fear", 3: "disgust", 4: "happy", 5: "sad", 6: "angry", 7: "neutral"}
SPLIT_PREFIXES = {"train_": "train", "test_": "test"}
VARIANTS = ("aligned", "original")


def read_rafdb(root: str | Path, variant: str = "aligned", require_images: bool = True) -> DatasetIndex:
    """Read RAF-DB basic under ``root``; ``require_images=False`` counts from the label file alone."""
    root = require_dir(Path(root), "RAF-DB folder")
    if variant not in VARIANTS:
        raise DatasetError(f"unknown RAF-DB variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    label_file = require_file(root / LABEL_FILE, "RAF-DB label file")
    index = DatasetIndex("rafdb", root)
    for line_number, line in enumerate(label_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        if len(fields) != 2 or not fields[1].isdigit():
            raise DatasetError(f"{at(label_file, line_number)}: expected '<image name> <label 1-7>', got {line!r}")
        name, code = fields[0], int(fields[1])
        if code not in RAFDB_LABELS:
            raise DatasetError(f"{at(label_file, line_number)}: unknown RAF-DB label {code} (expected 1-7)")
        split = next((s for prefix, s in SPLIT_PREFIXES.items() if name.startswith(prefix)), None)
        if split is None:
            raise DatasetError(
                f"{at(label_file, line_number)}: image name {name!r} starts with neither train_ nor test_"
            )
        stem = Path(name).stem
        image = Path("Image/aligned", f"{stem}_aligned.jpg") if variant == "aligned" else Path("Image/original", name)
        if keep_if_present(index, root / image, at(label_file, line_number), require_images):
            index.samples.append(
                Sample(id=image.as_posix(), label=EMOTION_INDEX[RAFDB_LABELS[code]], split=split, path=root / image)
            )
    return index
