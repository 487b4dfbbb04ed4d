"""The models bundled with msfer, and the figures recorded when the emotion model was bundled.

``msfer_fer2013.pt`` is a slim export of the shipped run's ``best.pt``, calibrated and in half
precision where that loses nothing measurable (``msfer bundle``, :mod:`msfer.inference.bundle`);
``msfer_fer2013.json`` records its validation numbers and its accuracy on a fixed sample of
FER2013 public_test, which the tests check it still reaches.
``retinaface_mnet025.onnx`` is the face detector's default model (RetinaFace MobileNet-0.25,
MIT; its source and licence are in ``retinaface_mnet025.NOTICE.md`` beside it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MsferError

BUNDLED_MODEL = Path(__file__).with_name("msfer_fer2013.pt")
BUNDLED_RECORD = BUNDLED_MODEL.with_suffix(".json")
RETINAFACE_MODEL = Path(__file__).with_name("retinaface_mnet025.onnx")
SAMPLE_SPLIT, SAMPLE_SIZE, SAMPLE_SEED = "public_test", 500, 0


def default_weights_path() -> Path:
    """The bundled model's file; `--weights` and `EmotionRecognizer(weights=...)` default to it."""
    if not BUNDLED_MODEL.is_file():
        raise MsferError(f"no bundled model at {BUNDLED_MODEL}: pass --weights PATH to a checkpoint of 'msfer train'")
    return BUNDLED_MODEL


def bundled_record() -> dict:
    """What was measured when the bundled model was made (see msfer.inference.bundle)."""
    return json.loads(BUNDLED_RECORD.read_text())


def fixed_sample(samples: Sequence) -> list:
    """The fixed FER2013 public_test sample the bundled model's recorded accuracy refers to."""
    pool = sorted((s for s in samples if s.split == SAMPLE_SPLIT), key=lambda s: s.id)
    keep = np.random.default_rng(SAMPLE_SEED).choice(len(pool), min(SAMPLE_SIZE, len(pool)), replace=False)
    return [pool[i] for i in sorted(keep)]
