"""Seeded train/test splits for datasets that ship without one (CK+, JAFFE, a folder tree).

Both helpers return ``(train, test)`` as new :class:`Sample` records whose ``split`` is
``"train"`` / ``"test"``; the inputs are not modified. The result depends only on the
samples' ids, labels and subjects and on ``seed``, never on the input order, so a split
made on one machine is the split made on every machine.
"""
from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace

from ..errors import MsferError
from .samples import Sample

PAPER_TEST_FRACTION = 1 / 6  # the paper's 5:1 train/test split


def stratified_split(
    samples: list[Sample], test_fraction: float = PAPER_TEST_FRACTION, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split each class separately, so both sides keep the class distribution.

    A class gets ``round(n * test_fraction)`` test samples, at least one on each side
    when it has two or more (so no class vanishes from either side).
    """
    _check_fraction(test_fraction)
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    rng = random.Random(seed)
    train, test = [], []
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda sample: sample.id)
        rng.shuffle(members)
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test += members[:n_test]
        train += members[n_test:]
    return _as_split(train, "train"), _as_split(test, "test")


def subject_split(
    samples: list[Sample], test_fraction: float = PAPER_TEST_FRACTION, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Split by subject: all images of one person land on the same side.

    Subjects are taken in a seeded random order and moved to the test side while that
    brings its size closer to ``test_fraction`` of all samples (at least one subject each
    side when there are two or more). Every sample needs ``subject`` (CK+ and JAFFE
    readers set it).
    """
    _check_fraction(test_fraction)
    by_subject: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        if sample.subject is None:
            raise MsferError(f"sample {sample.id} has no subject; subject_split needs a reader that sets subjects")
        by_subject[sample.subject].append(sample)
    subjects = sorted(by_subject)
    random.Random(seed).shuffle(subjects)
    target = test_fraction * len(samples)
    test_subjects: list[str] = []
    test_size = 0
    for subject in subjects[:-1]:  # the last one stays in train, so train is never empty
        size = len(by_subject[subject])
        if not test_subjects or abs(test_size + size - target) < abs(test_size - target):
            test_subjects.append(subject)
            test_size += size
    train = [sample for subject in subjects if subject not in test_subjects for sample in by_subject[subject]]
    test = [sample for subject in test_subjects for sample in by_subject[subject]]
    return _as_split(train, "train"), _as_split(test, "test")


def _check_fraction(test_fraction: float) -> None:
    if not 0 < test_fraction < 1:
        raise MsferError(f"test_fraction must be between 0 and 1, got {test_fraction}")


def _as_split(samples: list[Sample], split: str) -> list[Sample]:
    return [replace(sample, split=split) for sample in sorted(samples, key=lambda sample: sample.id)]
