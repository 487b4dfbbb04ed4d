"""The trained model bundled with msfer."""
from __future__ import annotations

from pathlib import Path

from ..errors import MsferError

BUNDLED_MODEL = Path(__file__).with_name("msfer_fer2013.pt")


def default_weights_path() -> Path:
    """The bundled model's file; `--weights` and `EmotionRecognizer(weights=...)` default to it."""
    if not BUNDLED_MODEL.is_file():
        raise MsferError(f"no bundled model at {BUNDLED_MODEL}: pass --weights PATH to a checkpoint of 'msfer train'")
    return BUNDLED_MODEL
