"""Named model configurations (timm style) and :func:`build_model`.

Every entry is a complete config: ``build_model({"name": "msfer_resnet50"})`` builds it and
any other key overrides that entry's value. Unknown keys are an error, never ignored.

* ``msfer_mobilenetv2``: the CPU/laptop recipe. ImageNet MobileNetV2 (offline weights),
  112 px, a 48-channel FPN, 48-wide head branches, 4x4 detector RoIs (16 per image), organ
  RoIs 6x6 and face RoI 10x10 (P3 is 14x14 at 112 px, so larger pools only interpolate).
  Sized for CPU training; its measured speed against the plain classifier is in docs/speed.md
  and ``docs/benchmarks/``, from ``benchmarks/model_speed.py``.
* ``msfer_resnet18/34/50``: the paper's setting: 224 px, 256-channel FPN, organ RoIs 14x14,
  face RoI 56x56, torchvision-sized detector (7x7 RoIs, 128 RoIs per image). ResNet
  ImageNet weights are not available offline, so ``pretrained`` defaults to False.
* ``msfer_faceres``: ``msfer_mobilenetv2`` on the face-identity MobileNet v1 ``faceres`` (VGGFace2,
  converted by ``scripts/convert_face_backbone.py``) with that network's input scale; research use only
  (see docs/training.md, Backbones).
* ``classifier_resnet18``, ``classifier_mobilenetv2``, ``classifier_faceres``: the plain-classifier baseline.
* ``classifier_mobilefacenet``: the plain classifier on the face-identity MobileFaceNet (converted by
  ``scripts/convert_face_backbone.py --model mobilefacenet``), 112 px (97 to 112: C5 is pooled by the
  network's own 7x7 GDConv, ``c5_pool: gdconv``), its own input scale (``(pixel - 127.5) / 128``), its
  batch-norm statistics frozen (``frozen_bn``) and its pooled features normalised (``feature_norm``). No
  ``msfer_mobilefacenet``: that network has no stride-32 layer, which the region network's learned
  detector needs (see :mod:`msfer.model.mobilefacenet`).

A pretrained backbone only works with the input normalisation it was trained with: ``build_model``
refuses a pretrained ``faceres`` or ``mobilefacenet`` with another ``mean``/``std`` (and an ImageNet backbone
with either's).
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..errors import MsferError
from ..values import Range, check_number, check_numbers
from .emotionnet import C5_POOLS, EmotionClassifier, EmotionNet
from .mobilefacenet import MOBILEFACENET_MEAN, MOBILEFACENET_STD
from .mobilenet_v1 import FACERES_MEAN, FACERES_STD

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

_COMMON = {
    "input_size": 112,
    "mean": IMAGENET_MEAN,
    "std": IMAGENET_STD,
    "dropout": 0.5,
    "emotion_gamma": 2.0,
    "label_smoothing": 0.0,
    "class_weights": None,
    "frozen_bn": False,  # backbone batch norms keep their statistics in training (EmotionModel's docstring)
}

_EMOTIONNET = {
    "type": "emotionnet",
    "backbone": "mobilenet_v2",
    "pretrained": True,
    **_COMMON,
    "fpn_channels": 48,
    "anchor_size_multiplier": 2.0,
    "proposals_per_level": 16,
    "rois_per_image": 16,
    # Fast R-CNN's 25% assumes few objects per image; a face crop always has R = 5 regions, and
    # 0.25 x 16 = 4 positives could not hold one of each
    "positive_fraction": 0.5,
    "detector_pool": 4,
    "detector_channels": 32,
    "detector_gamma": 2.0,
    "box_loss_weight": 1.0,
    "detector_weight": 1.0,
    "region_score_threshold": 0.3,
    "organ_pool": 6,
    "face_pool": 10,
    "head_channels": 48,
    "scales": [1, 2, 3],
    "region_source": "learned",
    "merge_eyes": False,
}

# c5_pool: average, or gdconv (the network's own 7x7 GDConv; mobilefacenet only, input 97 to 112 px)
_CLASSIFIER = {"type": "classifier", "backbone": "resnet18", "pretrained": False, **_COMMON, "feature_norm": False,
               "c5_pool": "average"}

_PAPER = {
    "pretrained": False, "input_size": 224, "fpn_channels": 256, "proposals_per_level": 64, "rois_per_image": 128,
    "positive_fraction": 0.25, "detector_pool": 7, "detector_channels": 256, "organ_pool": 14, "face_pool": 56,
    "head_channels": 256,
}

MODELS: dict[str, dict[str, Any]] = {
    "msfer_mobilenetv2": dict(_EMOTIONNET),
    **{f"msfer_{name}": {**_EMOTIONNET, **_PAPER, "backbone": name} for name in ("resnet18", "resnet34", "resnet50")},
    "classifier_resnet18": dict(_CLASSIFIER),
    "classifier_mobilenetv2": {**_CLASSIFIER, "backbone": "mobilenet_v2", "pretrained": True},
    "msfer_faceres": {**_EMOTIONNET, "backbone": "faceres", "mean": FACERES_MEAN, "std": FACERES_STD},
    "classifier_faceres": {**_CLASSIFIER, "backbone": "faceres", "pretrained": True, "mean": FACERES_MEAN,
                           "std": FACERES_STD},
    # c5_pool: a face network's positions are not alike; feature_norm: its pooled C5 is ~600x MobileNetV2's in
    # scale (EmotionClassifier's docstring); frozen_bn: its batch-norm statistics are recovered, and drifted
    # apart in training (EmotionModel's)
    "classifier_mobilefacenet": {**_CLASSIFIER, "backbone": "mobilefacenet", "pretrained": True,
                                 "mean": MOBILEFACENET_MEAN, "std": MOBILEFACENET_STD, "c5_pool": "gdconv",
                                 "feature_norm": True, "frozen_bn": True},
}
# The normalisation (mean, std) each face-pretrained backbone was trained with; the others: ImageNet's.
_BACKBONE_SCALE = {"faceres": (FACERES_MEAN, FACERES_STD), "mobilefacenet": (MOBILEFACENET_MEAN, MOBILEFACENET_STD)}
_TYPES = {"emotionnet": (EmotionNet, _EMOTIONNET), "classifier": (EmotionClassifier, _CLASSIFIER)}

# Model keys added after checkpoints were first written, with the value that rebuilds a file lacking them (a saved
# config spells out every key of its time, so a key it lacks is younger than the file).
ADDED_KEYS: dict[str, Any] = {"feature_norm": False, "frozen_bn": False, "c5_pool": "average"}

# The allowed values of the numeric keys (a key a model type lacks is not checked for it).
MODEL_RANGES: dict[str, Range] = {
    "input_size": Range(8, whole=True),
    "dropout": Range(0, 1, high_open=True),
    "emotion_gamma": Range(0),
    "label_smoothing": Range(0, 1, high_open=True),
    "fpn_channels": Range(1, whole=True),
    "anchor_size_multiplier": Range(0, low_open=True),
    "proposals_per_level": Range(1, whole=True),
    "rois_per_image": Range(1, whole=True),
    "positive_fraction": Range(0, 1, low_open=True),
    "detector_pool": Range(1, whole=True),
    "detector_channels": Range(1, whole=True),
    "detector_gamma": Range(0),
    "box_loss_weight": Range(0),
    "detector_weight": Range(0),
    "region_score_threshold": Range(0),  # above 1: no region is ever used (always the default layout)
    "organ_pool": Range(1, whole=True),
    "face_pool": Range(1, whole=True),
    "head_channels": Range(1, whole=True),
}


def _check_values(cfg: dict[str, Any], defaults: dict[str, Any]) -> None:
    """Raise :class:`MsferError` naming ``model.<key>`` for a value of the wrong type or out of range."""
    for key, allowed in MODEL_RANGES.items():
        if key in cfg:
            check_number(f"model.{key}", cfg[key], allowed)
    check_numbers("model.mean", cfg["mean"], Range(), length=3)
    check_numbers("model.std", cfg["std"], Range(0, low_open=True), length=3)
    check_numbers("model.class_weights", cfg["class_weights"], Range(0, nullable=True), length=7)
    if "c5_pool" in cfg and cfg["c5_pool"] not in C5_POOLS:
        raise MsferError(f"config model.c5_pool={cfg['c5_pool']!r}: expected one of {', '.join(C5_POOLS)}")
    for key, default in defaults.items():
        if isinstance(default, bool) and not isinstance(cfg[key], bool):
            raise MsferError(f"config model.{key}={cfg[key]!r} has the wrong type: expected true or false")
    if cfg["pretrained"]:
        _check_scale(cfg["backbone"], cfg["mean"], cfg["std"])


def _same(values: list[float], expected: list[float]) -> bool:
    return all(abs(a - b) < 1e-6 for a, b in zip(values, expected))


def _check_scale(backbone: str, mean: list[float], std: list[float]) -> None:
    """A pretrained backbone fed another input scale than its own starts from broken features: refuse it."""
    if backbone in _BACKBONE_SCALE:
        expected_mean, expected_std = _BACKBONE_SCALE[backbone]
        if not (_same(mean, expected_mean) and _same(std, expected_std)):
            names = " or ".join(name for name in (f"msfer_{backbone}", f"classifier_{backbone}") if name in MODELS)
            raise MsferError(f"the pretrained backbone {backbone!r} expects model.mean={expected_mean} and "
                             f"model.std={expected_std} (its own input scale), got {mean} and {std}: use "
                             f"model.name={names}, or set those keys")
        return
    for other, (other_mean, other_std) in _BACKBONE_SCALE.items():
        if _same(mean, other_mean) and _same(std, other_std):
            raise MsferError(f"config model.mean/std are {other}'s input scale, but the pretrained backbone "
                             f"{backbone!r} expects ImageNet's ({IMAGENET_MEAN}, {IMAGENET_STD})")


def model_config(name: str) -> dict[str, Any]:
    """A copy of the named config (with its ``name``)."""
    if name not in MODELS:
        raise MsferError(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    return {"name": name, **copy.deepcopy(MODELS[name])}


def saved_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """A model config read from a checkpoint, with the keys it lacks (:data:`ADDED_KEYS` its type has) at the value
    that rebuilds the network it was saved with, rather than at today's registry default."""
    kind = cfg.get("type") or MODELS.get(cfg.get("name"), {}).get("type", "emotionnet")
    defaults = _TYPES.get(kind, (None, {}))[1]
    return {**{key: value for key, value in ADDED_KEYS.items() if key in defaults}, **cfg}


def resolve_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as a full config: a registered ``name``'s defaults overridden by the other keys (without ``name``),
    or a copy of ``cfg`` when it has no name. Its ``type`` (default ``emotionnet``) says which model it builds."""
    cfg = dict(cfg)
    name = cfg.pop("name", None)
    if name is not None:
        cfg = {**model_config(name), **cfg}
        cfg.pop("name")
    return cfg


def build_model(cfg: dict[str, Any]) -> nn.Module:
    """Build a model from ``cfg``: a registered ``name`` (its defaults, overridden by the other keys), or a full
    config."""
    cfg = resolve_config(cfg)
    model_type = cfg.get("type", "emotionnet")
    if model_type not in _TYPES:
        raise MsferError(f"unknown model type {model_type!r}; expected one of {', '.join(_TYPES)}")
    cls, defaults = _TYPES[model_type]
    unknown = sorted(set(cfg) - set(defaults))
    if unknown:
        raise MsferError(f"unknown model config keys {unknown}; valid keys for type {model_type!r}: "
                         f"{', '.join(['name', *sorted(defaults)])}")
    cfg = {**defaults, **cfg}
    _check_values(cfg, defaults)
    del cfg["type"]
    return cls(**cfg)
