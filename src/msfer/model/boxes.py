"""Intersection over union of boxes ``[x1, y1, x2, y2]``: the one home of every IoU msfer computes.

Hand-written, each saying why torchvision's :func:`~torchvision.ops.box_iou` (every pair of one
``N x 4`` and one ``M x 4`` set) does not serve: :func:`box_iou` is batched, :func:`box_iou_pairs`
element by element. Tests check both against torchvision's.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise IoU, batched: ``(..., N, 4)`` x ``(..., M, 4)`` -> ``(..., N, M)``.

    :func:`torchvision.ops.box_iou`'s formula, kept by hand because torchvision's takes one
    ``N x 4`` and one ``M x 4`` set: the detector matches a whole batch (``B x R`` boxes
    against the ``A`` anchors, or each image's own ``K + R`` candidates) in one call.
    The union is clamped at 1e-6, so degenerate boxes give 0, not NaN.
    """
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    top_left = torch.max(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    bottom_right = torch.min(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[..., :, None] + area2[..., None, :] - inter).clamp(min=1e-6)


def box_iou_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of corresponding boxes (``... x 4`` each, ``x1, y1, x2, y2``).

    Element by element, which :func:`torchvision.ops.box_iou` (every pair of two sets) is not.
    """
    width = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    height = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    intersection = width * height
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    return intersection / np.maximum(area_a + area_b - intersection, 1e-9)
