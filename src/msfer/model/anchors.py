"""Anchors: 9 per location on every pyramid level (the paper's section 3.1, RetinaNet's set).

Aspect ratios (h:w) 1:1, 2:1, 1:2 times scales 2^0, 2^(1/3), 2^(2/3) of a base size of
``anchor_size_multiplier * stride``. RetinaNet uses a multiplier of 4 (32 px on P3) for
COCO; here the images are face crops (112 px in the CPU recipe) whose eyes, nose and mouth
span about 15-30 px, so the default multiplier is 2: P3 anchors of 16-25 px and P4 anchors
of 32-51 px cover the organs with IoU > 0.5, and P5/P6 (64-161 px) the face.
Anchors are centred on their cells, ``(i + 0.5) * stride``, as in detectron2 with offset 0.5
(torchvision puts them on the cell corner, ``i * stride``, which biases small anchors).
Per level the order is (y, x, anchor) with the anchor index fastest, matching the
``(A, H, W)`` -> ``(H, W, A)`` flattening of the dense head's outputs.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

ASPECT_RATIOS = (1.0, 2.0, 0.5)  # h / w
SCALES = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
ANCHORS_PER_LOCATION = len(ASPECT_RATIOS) * len(SCALES)


def cell_anchors(base_size: float) -> Tensor:
    """The 9 anchors ``(x1, y1, x2, y2)`` centred on the origin, ``9 x 4``."""
    boxes = []
    for ratio in ASPECT_RATIOS:
        for scale in SCALES:
            size = base_size * scale
            w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)  # area stays size^2
            boxes.append((-w / 2, -h / 2, w / 2, h / 2))
    return torch.tensor(boxes)


def level_anchors(height: int, width: int, stride: int, base_size: float, device: torch.device) -> Tensor:
    """All anchors of one ``height x width`` level, ``(height * width * 9) x 4``, input-pixel coords."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    centres = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (centres + cell_anchors(base_size).to(device)).reshape(-1, 4)
