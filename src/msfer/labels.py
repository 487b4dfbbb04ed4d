"""The label spaces of msfer, stated once.

Emotions: the 7 basic classes in the one canonical order used everywhere (model
outputs, metrics, confusion matrices, JSON results). Each dataset's own codes are
mapped to these names by its reader (see ``msfer.data.readers``); free-text names
go through :func:`canonical_emotion`.

Regions: the emotion regions of the paper's detector. ``left_eye`` is the eye on
the image's left (smaller x), i.e. the subject's right eye, which is also the order
RetinaFace gives its landmarks in. A horizontal flip therefore swaps the two eyes.
"""
from __future__ import annotations

from .errors import MsferError

EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_EMOTIONS = len(EMOTIONS)
EMOTION_INDEX = {name: i for i, name in enumerate(EMOTIONS)}

# Names that datasets and people use for the canonical classes (compared case-insensitively).
_EMOTION_ALIASES = {
    "anger": "angry", "angry": "angry", "an": "angry",
    "disgust": "disgust", "disgusted": "disgust", "di": "disgust",
    "fear": "fear", "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "happy": "happy", "happiness": "happy", "joy": "happy", "ha": "happy",
    "sad": "sad", "sadness": "sad", "sa": "sad",
    "surprise": "surprise", "surprised": "surprise", "su": "surprise",
    "neutral": "neutral", "ne": "neutral", "calm": "neutral",
}

# Regions, in detector class order (detector class 0 is background).
REGION_NAMES: tuple[str, ...] = ("face", "left_eye", "right_eye", "nose", "mouth")
MERGED_EYES_REGION_NAMES: tuple[str, ...] = ("face", "eyes", "nose", "mouth")
FLIP_SWAP = {"left_eye": "right_eye", "right_eye": "left_eye"}


class UnknownLabelError(MsferError, ValueError):
    """A label that does not name one of the 7 canonical emotions."""


def canonical_emotion(name: str) -> str:
    """Map a dataset's emotion name (any case, common synonyms) to its canonical name."""
    key = str(name).strip().lower()
    try:
        return _EMOTION_ALIASES[key]
    except KeyError:
        raise UnknownLabelError(
            f"unknown emotion label {name!r}; expected one of {', '.join(EMOTIONS)} "
            f"(or a synonym such as anger, happiness, sadness, surprised, fearful, disgusted)"
        ) from None


def region_names(merge_eyes: bool = False) -> tuple[str, ...]:
    return MERGED_EYES_REGION_NAMES if merge_eyes else REGION_NAMES


def check_classes(classes, source: str) -> None:
    """Refuse a model file (named ``source``) whose classes are not :data:`EMOTIONS` in their order (or that names
    none)."""
    if classes is None:
        raise MsferError(f"{source} does not say which classes it predicts: it was not written by msfer")
    if tuple(classes) != EMOTIONS:
        raise MsferError(f"{source} predicts classes {list(classes)}, not msfer's {list(EMOTIONS)}")
