"""RetinaFace pseudo-labels on real FER2013 (48 x 48 grey crops): the detection rate the issue promises."""
from __future__ import annotations

import random

import pytest

from msfer.data.readers import read_dataset
from msfer.faces.retinaface import RetinaFaceDetector
from msfer.regions.annotations import STATUS_NO_FACE, STATUS_OK, STATUS_UNREADABLE
from msfer.regions.annotator import LOW_SCORE, Annotator, decode

pytestmark = pytest.mark.realdata


def test_faces_are_found_in_at_least_95_percent_of_a_fixed_fer2013_sample(fer2013_root):
    samples = sorted(read_dataset(fer2013_root, "fer2013").samples, key=lambda sample: sample.id)
    sample = random.Random(2013).sample(samples, 500)
    annotator = Annotator(RetinaFaceDetector(score_threshold=0.2))
    records = annotator.annotate(sample, [decode(s) for s in sample])
    statuses = [record["status"] for record in records]
    assert STATUS_UNREADABLE not in statuses
    detected = sum(status not in (STATUS_NO_FACE, LOW_SCORE) for status in statuses) / len(statuses)
    accepted = statuses.count(STATUS_OK) / len(statuses)
    assert detected >= 0.95, f"a face (score >= 0.5) was found in only {detected:.1%} of 500 FER2013 images"
    assert accepted >= 0.93, f"only {accepted:.1%} of 500 FER2013 images passed the quality filter"
    for record in records:
        if record["status"] == STATUS_OK:
            face = record["regions"]["face"]
            assert 0 <= face[0] < face[2] <= 48 and 0 <= face[1] < face[3] <= 48
