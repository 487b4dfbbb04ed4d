"""Feature pyramid P3..P7 (the paper's Fig. 2; RetinaNet's pyramid).

P3..P5: lateral 1x1 convs on C3..C5, nearest-neighbour top-down addition, 3x3 output convs,
as torchvision's :class:`~torchvision.ops.FeaturePyramidNetwork` (same init). P6 is a 3x3
stride-2 conv and P7 is ReLU then a 3x3 stride-2 conv on P6. The paper does not say what P6
is computed from; as torchvision's RetinaNet (``LastLevelP6P7`` with ``use_P5``) it is taken
from the P5 output rather than C5, which keeps the extra levels at ``channels`` width
whatever the backbone.

Only the requested ``levels`` are computed: without the region detector nothing reads
P4..P7 (every region RoIAligns from P3 at these input sizes), and leaving their convs out
keeps every parameter trained, which DDP requires.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = ("p3", "p4", "p5", "p6", "p7")
STRIDES = {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}


class FeaturePyramid(nn.Module):
    def __init__(self, in_channels: list[int], channels: int, levels: tuple[str, ...] = LEVELS) -> None:
        super().__init__()
        if levels not in (LEVELS, ("p3",)):
            raise ValueError(f"levels must be all of {LEVELS} or ('p3',), got {levels}")
        self.levels = levels
        self.channels = channels
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in levels[:3])
        self.p6 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if "p6" in levels else None
        self.p7 = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if "p7" in levels else None
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: OrderedDict[str, Tensor]) -> OrderedDict[str, Tensor]:
        """``{"c3", "c4", "c5"}`` -> ``{"p3", ..., "p7"}`` (or ``{"p3"}``)."""
        c3, c4, c5 = features.values()
        inner5 = self.lateral[2](c5)
        inner4 = self.lateral[1](c4) + F.interpolate(inner5, size=c4.shape[-2:], mode="nearest")
        inner3 = self.lateral[0](c3) + F.interpolate(inner4, size=c3.shape[-2:], mode="nearest")
        pyramid = OrderedDict(p3=self.output[0](inner3))
        if self.p6 is not None:
            pyramid["p4"] = self.output[1](inner4)
            pyramid["p5"] = self.output[2](inner5)
            pyramid["p6"] = self.p6(pyramid["p5"])
            pyramid["p7"] = self.p7(F.relu(pyramid["p6"]))
        return pyramid
