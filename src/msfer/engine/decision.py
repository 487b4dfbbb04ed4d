"""The decision rule: the one place a face's label is chosen from its probabilities.

``"argmax"`` is the most probable emotion; ``"balanced"`` is ``argmax(log p + balanced_offsets)``,
the class-prior adjustment a bundled model carries (its ``balanced_offsets``, fitted by
``msfer bundle``: higher mean class accuracy). The rule changes the label, never the
probabilities. Every path that labels a face (training's validation, ``msfer evaluate``, the API,
the tracker's smoothed labels, the service) comes here; numpy only, so the API needs no torch for it.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from ..errors import MsferError
from ..labels import EMOTIONS

DECISION_RULES = ("argmax", "balanced")
NO_FACE = len(EMOTIONS)  # the extra "prediction" of a photo without a detected face


def check_rule(rule: str) -> str:
    """``rule`` if it is one of :data:`DECISION_RULES`, else :class:`MsferError` naming them."""
    if rule not in DECISION_RULES:
        raise MsferError(f"unknown decision rule {rule!r}: use one of {', '.join(DECISION_RULES)}")
    return rule


def model_decision(record: dict | None) -> str:
    """A model's own default decision rule: its calibration record's (or summary's) ``decision``, written when
    it was bundled (``msfer bundle --decision``), else "argmax". Raises :class:`MsferError` for a rule
    that is not one of :data:`DECISION_RULES`."""
    rule = (record or {}).get("decision") or "argmax"
    if rule not in DECISION_RULES:
        raise MsferError(f"the model's calibration record names the decision rule {rule!r}; "
                         f"known rules: {', '.join(DECISION_RULES)}")
    return rule


def decide(probs: np.ndarray, balanced_offsets: Sequence[float] | None, rule: str = "argmax") -> np.ndarray:
    """Class index per row of ``probs`` (N x 7) under ``rule``: the most probable emotion, or
    ``argmax(log p + balanced_offsets)`` for ``"balanced"`` (argmax reads no offsets)."""
    check_rule(rule)
    if rule == "argmax":
        return np.asarray(probs).argmax(axis=1)
    return (np.log(np.clip(probs, 1e-12, None)) + np.asarray(balanced_offsets)).argmax(axis=1)


def decisions(probs: np.ndarray, offsets: Sequence[float] | None, rule: str = "argmax") -> np.ndarray:
    """:func:`decide` for rows that may be NaN (a photo without a detected face): those give :data:`NO_FACE`.
    ``offsets`` None: zeros (a model without the balanced rule)."""
    found = ~np.isnan(probs).any(axis=1)
    y_pred = np.full(len(probs), NO_FACE, dtype=np.int64)
    if found.any():
        offsets = np.zeros(len(EMOTIONS)) if offsets is None else np.asarray(offsets, dtype=np.float64)
        y_pred[found] = decide(probs[found], offsets, rule)
    return y_pred


def has_balanced_rule(balanced_offsets, calibration: dict | None) -> bool:
    """Whether a model carries the balanced decision rule: non-zero ``balanced_offsets`` (7 logit
    offsets), or a calibration record (or :func:`msfer.engine.calibration.calibration_summary`) with
    ``balanced_tau``. The bundling step may choose tau 0, whose offsets are all zero: the rule then
    equals argmax and is still the model's balanced rule."""
    return bool(np.any(np.asarray(balanced_offsets))) or (calibration or {}).get("balanced_tau") is not None
