"""Losses of the paper's section 3.2: the focal cross-entropy.

The paper writes the focal term for the binary anchor label p* (its eq. 3):
``-(1 - p_t)^gamma log p_t`` with ``p_t = p p* + (1 - p)(1 - p*)``. That is Lin et al.'s
focal loss without the alpha balance; for the detector's anchors it is
:func:`torchvision.ops.sigmoid_focal_loss` with ``alpha=-1`` (re-exported here as
:func:`binary_focal_loss`). For the multi-class outputs (region classes, emotions) the same
term is applied to the softmax probability of each class, :func:`focal_cross_entropy`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import sigmoid_focal_loss


def binary_focal_loss(logits: Tensor, targets: Tensor, gamma: float, reduction: str = "sum") -> Tensor:
    """``-(1 - p_t)^gamma log p_t`` per element of sigmoid ``logits`` (0/1 ``targets``); gamma 0 is BCE."""
    return sigmoid_focal_loss(logits.float(), targets.float(), alpha=-1, gamma=gamma, reduction=reduction)


def focal_cross_entropy(
    logits: Tensor,
    target: Tensor,
    gamma: float = 0.0,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Softmax focal cross-entropy ``-sum_c q_c w_c (1 - p_c)^gamma log p_c``.

    ``logits`` ``B x classes``. ``target`` is either hard labels (``B`` long; ``q`` is their one-hot)
    or soft labels (``B x classes`` probabilities, e.g. FER+ vote distributions). Label smoothing mixes ``q``
    with the uniform distribution first. With ``gamma=0`` this equals
    :func:`torch.nn.functional.cross_entropy` in every mode, including its normalisation:
    ``reduction="mean"`` divides by the summed class weights of the hard labels (by the
    batch size for soft labels), as PyTorch does.
    """
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', not {reduction!r}")
    log_p = F.log_softmax(logits.float(), dim=-1)
    num_classes = log_p.shape[-1]
    hard = not target.is_floating_point()
    q = F.one_hot(target, num_classes).float() if hard else target.float()
    if label_smoothing:
        q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
    per_class = -q * log_p
    if gamma:
        per_class = per_class * (1.0 - log_p.exp()).pow(gamma)
    if weight is not None:
        per_class = per_class * weight.to(per_class)
    loss = per_class.sum(-1)
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if hard and weight is not None:
        return loss.sum() / weight.to(loss)[target].sum()
    return loss.mean()
