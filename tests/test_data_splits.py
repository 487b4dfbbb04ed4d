"""Seeded stratified and subject-wise splits."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from msfer.data.samples import Sample
from msfer.data.splits import stratified_split, subject_split
from msfer.errors import MsferError


def samples_per_class(counts: dict[int, int]) -> list[Sample]:
    return [Sample(f"c{label}/{i:03d}.jpg", label, "all") for label, n in counts.items() for i in range(n)]


def test_stratified_split_keeps_class_proportions():
    samples = samples_per_class({0: 30, 3: 18, 6: 12, 1: 1})
    train, test = stratified_split(samples, test_fraction=1 / 6, seed=0)
    assert Counter(s.label for s in test) == {0: 5, 3: 3, 6: 2}  # the single-sample class stays in train
    assert Counter(s.label for s in train) == {0: 25, 3: 15, 6: 10, 1: 1}
    assert {s.split for s in train} == {"train"} and {s.split for s in test} == {"test"}
    assert sorted(s.id for s in train + test) == sorted(s.id for s in samples)
    assert {s.split for s in samples} == {"all"}  # inputs untouched


def test_stratified_split_is_seeded_and_order_independent():
    samples = samples_per_class({0: 30, 1: 30})
    _, test = stratified_split(samples, seed=3)
    shuffled = samples[:]
    random.Random(1).shuffle(shuffled)
    _, same = stratified_split(shuffled, seed=3)
    _, other = stratified_split(samples, seed=4)
    assert [s.id for s in test] == [s.id for s in same]
    assert [s.id for s in test] != [s.id for s in other]


def test_stratified_split_keeps_a_small_class_on_both_sides():
    train, test = stratified_split(samples_per_class({2: 2}), test_fraction=0.1)
    assert len(train) == len(test) == 1


def test_subject_split_never_shares_a_subject():
    samples = [Sample(f"S{p:03d}_{i}.png", i % 7, "all", subject=f"S{p:03d}") for p in range(12) for i in range(5)]
    train, test = subject_split(samples, test_fraction=1 / 6, seed=0)
    assert not {s.subject for s in train} & {s.subject for s in test}
    assert len(test) == 10 and len(train) == 50  # 2 of 12 equal-sized subjects
    assert subject_split(samples, 1 / 6, seed=0)[1] == test
    assert {s.subject for s in subject_split(samples, 1 / 6, seed=1)[1]} != {s.subject for s in test}


def test_subject_split_needs_subjects_and_a_sane_fraction():
    with pytest.raises(MsferError, match="sample a.jpg has no subject"):
        subject_split([Sample("a.jpg", 0, "all")])
    with pytest.raises(MsferError, match="test_fraction must be between 0 and 1"):
        stratified_split([], test_fraction=1.5)
