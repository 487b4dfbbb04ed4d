"""Exact counts on the real data in ../shared/data (skipped with the reason when it is absent)."""
from __future__ import annotations

import pytest

from msfer.data.readers import read_dataset
from msfer.labels import EMOTIONS

pytestmark = pytest.mark.realdata


def by_class(**counts: int) -> dict[str, int]:
    return {name: counts[name] for name in EMOTIONS}


def test_fer2013_folder_counts(fer2013_root):
    index = read_dataset(fer2013_root, "fer2013")
    assert index.counts() == {
        "train": by_class(angry=3995, disgust=436, fear=4097, happy=7215, neutral=4965, sad=4830, surprise=3171),
        "public_test": by_class(angry=467, disgust=56, fear=496, happy=895, neutral=607, sad=653, surprise=415),
    }
    assert not index.problems and not index.skipped
    assert index.samples[0].load().size == (48, 48)


def test_ferplus_label_rows_and_majority_counts(ferplus_root):
    rows = {
        folder: len((ferplus_root / folder / "label.csv").read_text().splitlines())
        for folder in ("FER2013Train", "FER2013Valid")
    }
    assert rows == {"FER2013Train": 28558, "FER2013Valid": 3579}
    index = read_dataset(ferplus_root, "ferplus")
    # Computed by this reader with the FER+ paper's majority rule (votes <= 1 zeroed, > half wins).
    assert index.counts() == {
        "train": by_class(angry=2098, disgust=116, fear=536, happy=7284, sad=3022, surprise=3136, neutral=8733),
        "valid": by_class(angry=289, disgust=25, fear=60, happy=862, sad=348, surprise=411, neutral=1180),
    }
    # Train: no majority 3434, contempt 120, unknown 77, not a face 2; Valid: 377, 16, 11, 0.
    assert index.skipped == {"no majority": 3811, "contempt": 136, "unknown": 88, "not a face": 2}
    assert len(index.samples) + sum(index.skipped.values()) == 28558 + 3579
    assert not index.problems


def test_rafdb_label_file_counts(shared_data):
    root = shared_data / "rafdb"
    index = read_dataset(root, "rafdb", require_images=False)
    counts = index.counts()
    assert {split: sum(per_class.values()) for split, per_class in counts.items()} == {"train": 12271, "test": 3068}
    assert counts["test"] == by_class(surprise=329, fear=74, disgust=160, happy=1185, sad=478, angry=162, neutral=680)
    # The shared copy has labels only: by default every sample is a counted, reported skip.
    with_images = read_dataset(root, "rafdb")
    assert not with_images.samples and with_images.skipped == {"missing image": 12271 + 3068}
    assert "list_patition_label.txt:1" in with_images.problems[0]
