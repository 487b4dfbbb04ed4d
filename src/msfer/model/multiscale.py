"""The multi-scale feature learning module (the paper's section 3.3).

Scale 1, organs: each organ box is RoIAligned to ``organ_pool`` from the level of the paper's
eq. (4) (``organ_levels``: P3..P5 when the pyramid has them, else P3; at 112-224 px input
every organ maps to P3 anyway, as the paper computes), then a
1x1 conv + BN + ReLU to ``width`` channels, a residual block and global average pooling.
The paper says a 1x1 conv "transforms the map to a fixed size"; the fixed size is RoIAlign's
output, the 1x1 conv sets the width. One branch with shared weights serves every organ (they
are the same kind of evidence at different places, and sharing keeps the head small); the
per-organ vectors are concatenated in region-name order (left eye, right eye, nose, mouth, or
eyes, nose, mouth), so the classifier still knows which organ each part came from.
Scale 2, face: the face box RoIAligned from P3 to ``face_pool``, 1x1 conv, residual block, GAP.
Scale 3, global: the whole P3 map through a residual block (projecting to ``width``) and GAP.
The enabled scales' vectors are concatenated; dropout and the classifier follow in the model.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .layers import LevelRoIAlign, conv1x1_bn_relu, residual_block


def _branch(channels: int, width: int) -> nn.Sequential:
    """The 1x1 conv to ``width`` channels, then a residual block (scales 1 and 2)."""
    return nn.Sequential(conv1x1_bn_relu(channels, width), residual_block(width, width))


class MultiScaleHead(nn.Module):
    def __init__(self, channels: int, width: int, num_organs: int, scales: tuple[int, ...],
                 organ_pool: int, face_pool: int, organ_levels: tuple[str, ...]) -> None:
        super().__init__()
        self.scales = scales
        self.organ_pool = LevelRoIAlign(organ_levels, organ_pool) if 1 in scales else None
        self.organ_branch = _branch(channels, width) if 1 in scales else None
        self.face_pool = LevelRoIAlign(("p3",), face_pool) if 2 in scales else None
        self.face_branch = _branch(channels, width) if 2 in scales else None
        self.global_branch = residual_block(channels, width) if 3 in scales else None
        self.out_features = width * ((num_organs if 1 in scales else 0) + (2 in scales) + (3 in scales))

    def forward(self, features: dict[str, Tensor], boxes: Tensor) -> Tensor:
        """``boxes`` ``B x R x 4`` (face first, then organs) -> ``B x out_features``."""
        batch = boxes.shape[0]
        parts = []
        if self.organ_branch is not None:
            organs = self.organ_branch(self.organ_pool(features, boxes[:, 1:]))
            parts.append(organs.mean(dim=(2, 3)).reshape(batch, -1))
        if self.face_branch is not None:
            face = self.face_branch(self.face_pool(features, boxes[:, :1]))
            parts.append(face.mean(dim=(2, 3)))
        if self.global_branch is not None:
            parts.append(self.global_branch(features["p3"]).mean(dim=(2, 3)))
        return torch.cat(parts, dim=1)
