"""Building blocks shared by the region detector and the multi-scale head."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock
from torchvision.ops import roi_align
from torchvision.ops.poolers import LevelMapper

from .fpn import STRIDES


def residual_block(in_channels: int, out_channels: int) -> BasicBlock:
    """A ResNet basic block; a 1x1 conv + BN projects the shortcut when the width changes."""
    downsample = None
    if in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
    return BasicBlock(in_channels, out_channels, downsample=downsample)


def conv1x1_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                         nn.ReLU(inplace=True))


class LevelRoIAlign(nn.Module):
    """RoIAlign of each box from the pyramid level ``k = floor(k0 + log2(sqrt(wh) / 224))``, k0 = 4.

    This is the paper's eq. (4) (the FPN paper's eq. 1), evaluated by torchvision's
    :class:`~torchvision.ops.poolers.LevelMapper` (canonical scale 224, canonical level 4) and
    clamped to ``levels``; ``sqrt(wh)`` is measured in input pixels whatever the input size.
    Sampling ratio 2 and ``aligned=False`` as in torchvision's ``MultiScaleRoIAlign``.
    Unlike that class it takes one ``B x N x 4`` box tensor (no per-image lists), so the batch
    size stays symbolic when the model is traced for ONNX.
    """

    def __init__(self, levels: tuple[str, ...], output_size: int) -> None:
        super().__init__()
        self.levels = levels
        self.output_size = output_size
        self.level_mapper = LevelMapper(int(levels[0][1:]), int(levels[-1][1:]))

    def forward(self, features: dict[str, Tensor], boxes: Tensor) -> Tensor:
        """``boxes`` ``B x N x 4`` (input pixels) -> pooled ``(B * N) x C x s x s``, row-major in (B, N)."""
        batch, num_boxes = boxes.shape[:2]
        flat = boxes.reshape(-1, 4).float()
        batch_index = torch.arange(batch, device=boxes.device).repeat_interleave(num_boxes)
        rois = torch.cat([batch_index[:, None].to(flat), flat], dim=1)
        if len(self.levels) == 1:
            return self._pool(features, self.levels[0], rois)
        level_of_roi = self.level_mapper([flat])
        first = features[self.levels[0]]
        pooled = first.new_zeros((rois.shape[0], first.shape[1], self.output_size, self.output_size))
        for index, level in enumerate(self.levels):
            in_level = torch.where(level_of_roi == index)[0]
            pooled[in_level] = self._pool(features, level, rois[in_level]).to(pooled.dtype)
        return pooled

    def _pool(self, features: dict[str, Tensor], level: str, rois: Tensor) -> Tensor:
        return roi_align(features[level], rois, self.output_size, spatial_scale=1.0 / STRIDES[level],
                         sampling_ratio=2, aligned=False)
