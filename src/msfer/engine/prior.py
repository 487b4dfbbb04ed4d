"""Class-prior logit adjustment: trade a little overall accuracy for mean class accuracy after training.

A classifier trained on imbalanced data (FER2013: 7,215 happy faces, 436 disgusted) learns
scores that include the class prior ``pi``; subtracting ``tau * log(pi)`` from its logits moves
its decisions toward the balanced optimum (Menon et al., "Long-tail learning via logit
adjustment", ICLR 2021): ``tau = 0`` is the model as trained, ``tau = 1`` the Bayes rule for
mean class accuracy when the scores are calibrated. It is the ``balanced`` decision rule of
:mod:`.calibration`: the offsets live in the model's ``balanced_offsets`` buffer and change
decisions only, never the reported probabilities.

``tau`` is a choice made on validation data; :func:`choose_tau` makes it on one stratified half
and reports the other half, so the gain it claims is measured on images the choice never saw.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import MsferError
from ..labels import EMOTIONS
from ..model.checkpoint import model_state
from .metrics import compute_metrics

DEFAULT_TAUS = tuple(round(0.1 * step, 1) for step in range(16))


def adjustment(prior: Sequence[float], tau: float) -> np.ndarray:
    """The logit offsets ``-tau * log(prior)``, shifted to mean 0 (a common shift changes no decision).

    ``prior``: the class prior the probabilities carry, as 7 positive numbers in ``EMOTIONS`` order,
    counts or frequencies (only their ratios matter)."""
    counts = np.asarray(prior, dtype=np.float64)
    if counts.shape != (len(EMOTIONS),) or (counts <= 0).any():
        raise MsferError(f"the prior needs {len(EMOTIONS)} positive numbers (one per emotion, EMOTIONS order), "
                         f"got {list(prior)}")
    offsets = -tau * np.log(counts / counts.sum())
    return offsets - offsets.mean()


def _scores(log_probs: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> dict:
    metrics = compute_metrics(labels, (log_probs + offsets).argmax(axis=1), EMOTIONS)
    return {key: metrics[key] for key in ("overall_accuracy", "mean_class_accuracy")}


def stratified_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of two halves of ``labels`` with the same class mix (each class split in two at random)."""
    rng = np.random.default_rng(seed)
    first, second = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        first.append(members[: len(members) // 2])
        second.append(members[len(members) // 2:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def choose_tau(probs: np.ndarray, labels: np.ndarray, prior: Sequence[float],
               taus: Sequence[float] = DEFAULT_TAUS, seed: int = 0) -> dict:
    """Pick ``tau`` on one half of a validation split, maximising the mean of overall and mean class accuracy.

    ``probs`` are the model's softmax outputs (N x 7, no TTA: then adjusting ``log(probs)`` is
    exactly adjusting the logits); ``prior`` the class prior those probabilities carry, as
    :func:`adjustment` takes it (after calibration, the mean calibrated probability). Returns the
    chosen ``tau``, its ``offsets``, the ``class_prior`` (frequencies, summing to 1) and, for every tau
    tried, the scores on the ``selection`` half, the ``held_out`` half and ``all`` images.
    """
    labels = np.asarray(labels)
    if probs.ndim != 2 or probs.shape != (len(labels), len(EMOTIONS)):
        raise MsferError(f"probs must be N x {len(EMOTIONS)} for N = {len(labels)} labels, got {probs.shape}")
    log_probs = np.log(np.clip(probs, 1e-12, None))
    selection, held_out = stratified_halves(labels, seed)
    curve = []
    for tau in taus:
        offsets = adjustment(prior, tau)
        curve.append({"tau": float(tau), **{name: _scores(log_probs[idx], labels[idx], offsets)
                                            for name, idx in (("selection", selection), ("held_out", held_out),
                                                              ("all", np.arange(len(labels))))}})
    best = max(curve, key=lambda row: sum(row["selection"].values()))
    return {"tau": best["tau"], "offsets": adjustment(prior, best["tau"]).tolist(),
            "class_prior": [round(float(c), 6) for c in np.asarray(prior, float) / np.sum(prior)],
            "criterion": "mean of overall and mean class accuracy "
            "on a stratified half (seed %d) of the validation split" % seed, "curve": curve}


def unfold_adjustment(checkpoint: dict) -> dict:
    """A copy of a checkpoint whose classifier bias had an adjustment folded in (msfer <= 0.1's bundled
    model, recorded as ``logit_adjustment``), with the offsets taken out again: the model as trained,
    up to the rounding of the stored bias. Other checkpoints are returned as they are."""
    record = checkpoint.get("logit_adjustment")
    if not record:
        return checkpoint
    state = dict(model_state(checkpoint))
    bias = state["classifier.bias"]
    state["classifier.bias"] = (bias.float() - torch.tensor(record["offsets"], dtype=torch.float32)).to(bias.dtype)
    unfolded = {key: value for key, value in checkpoint.items() if key not in ("logit_adjustment", "ema")}
    unfolded["model"] = state
    return unfolded
