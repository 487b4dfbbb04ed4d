"""The paper's network (:class:`EmotionNet`) and the plain-classifier baseline.

Both follow the forward contract of DEVELOPING.md::

    model(images, targets=None, boxes=None, box_valid=None) -> {"logits", "boxes", "box_scores", "fallback", "losses"?}

``losses`` appears when ``targets`` are given; in eval mode it holds only the emotion loss
(the detector's losses need its training-time RoI sampling).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import MsferError
from ..labels import NUM_EMOTIONS, region_names
from .backbones import TAP_STRIDES, build_backbone
from .fpn import LEVELS, FeaturePyramid
from .losses import focal_cross_entropy
from .multiscale import MultiScaleHead
from .region_detector import RegionDetector

REGION_SOURCES = ("learned", "pseudo", "none")
CALIBRATION_BUFFERS = ("logit_scale", "logit_bias", "balanced_offsets")

# Default layout, relative to the face box (x1, y1, x2, y2 in face-box units). Organ centres
# are the five-point ArcFace 112x112 alignment template (eyes at (0.34, 0.46), (0.66, 0.46),
# nose tip (0.50, 0.64), mouth corners at y 0.82), a standard mean of aligned faces; box sizes
# are typical of the regions derived from those landmarks. It is a buffer, so training code may
# replace it with the mean layout of its own pseudo-labels and the checkpoint carries it.
_TEMPLATE = {
    "face": (0.0, 0.0, 1.0, 1.0),
    "left_eye": (0.22, 0.38, 0.46, 0.54),
    "right_eye": (0.54, 0.38, 0.78, 0.54),
    "eyes": (0.22, 0.38, 0.78, 0.54),
    "nose": (0.38, 0.50, 0.62, 0.74),
    "mouth": (0.30, 0.72, 0.70, 0.92),
}


class EmotionModel(nn.Module):
    """What every msfer model shares: preprocessing metadata, the classifier and the emotion loss.

    ``frozen_bn``: the backbone's batch norms keep their running statistics in training too (detectron2's
    ``FrozenBN``; their scale and shift still learn), for a pretrained backbone converted from a graph with its
    batch norms folded, whose statistics were recovered from calibration faces (``classifier_mobilefacenet``).
    MobileFaceNet's averaged C5 has a large common part (~21 per channel) and a small varying one (std ~0.55),
    so statistics that drifted from the batches' in training moved every eval-mode feature by ~5 standard
    deviations of ``feature_norm`` and one class took every face (FER2013 public_test 24.9% after one epoch,
    with batch statistics 35%). Frozen, the backbone runs the same network in training and evaluation (a
    BatchNorm1d ``feature_norm`` still uses batch statistics in training). Frozen without pretrained weights it
    would keep the initial statistics (mean 0, variance 1): the trainer refuses that.
    """

    def __init__(self, *, feature_dim: int, input_size: int, mean: list[float], std: list[float], dropout: float,
                 emotion_gamma: float, label_smoothing: float, class_weights: list[float] | None,
                 frozen_bn: bool = False) -> None:
        super().__init__()
        self.frozen_bn = frozen_bn
        self.num_classes = NUM_EMOTIONS
        self.input_size = input_size
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.emotion_gamma = emotion_gamma
        self.label_smoothing = label_smoothing
        if class_weights is not None and len(class_weights) != NUM_EMOTIONS:
            raise MsferError(f"class_weights needs {NUM_EMOTIONS} values (one per emotion), got {len(class_weights)}")
        weights = None if class_weights is None else torch.tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights, persistent=False)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(feature_dim, NUM_EMOTIONS)
        # Post-hoc calibration and the balanced decision rule (msfer.engine.calibration), fitted
        # when a model is bundled; identity and zeros until then. Buffers, so that every path that
        # runs the network (TTA, ONNX, the service) returns calibrated logits without code of its own.
        self.register_buffer("logit_scale", torch.ones(NUM_EMOTIONS))
        self.register_buffer("logit_bias", torch.zeros(NUM_EMOTIONS))
        self.register_buffer("balanced_offsets", torch.zeros(NUM_EMOTIONS))

    def calibrated(self, features: Tensor) -> Tensor:
        """Classifier logits ``B x 7`` after calibration: ``z * logit_scale + logit_bias``.

        Their softmax gives the probabilities.
        """
        return self.classifier(self.dropout(features)) * self.logit_scale + self.logit_bias

    def train(self, mode: bool = True) -> EmotionModel:
        super().train(mode)
        if self.frozen_bn:
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in CALIBRATION_BUFFERS:  # files written before calibration existed: identity
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def emotion_loss(self, logits: Tensor, labels: Tensor) -> Tensor:
        return focal_cross_entropy(logits, labels, self.emotion_gamma, self.label_smoothing, self.class_weights)


C5_POOLS = ("average", "gdconv")


class EmotionClassifier(EmotionModel):
    """Baseline: backbone, C5 pooled to one vector (:meth:`pooled`), dropout, linear. No regions (R = 0).

    ``c5_pool``: ``average`` (global average pooling), or ``gdconv``: the backbone's own pooling
    (MobileFaceNet's pretrained 7x7 GDConv, :class:`~msfer.model.backbones.Backbone`'s ``pool``).

    ``feature_norm``: a BatchNorm1d on the pooled C5 before the classifier. A backbone whose pooled C5 is
    unbounded in scale (MobileFaceNet's GDConv output: norm ~1,000 on a face, ImageNet MobileNetV2's
    averaged C5 ~1.5) would otherwise start a fresh linear head with logits of standard deviation ~10 or
    more, and spend its first epoch undoing that rather than learning.
    """

    region_names: tuple[str, ...] = ()

    def __init__(self, *, backbone: str, pretrained: bool, feature_norm: bool = False, c5_pool: str = "average",
                 **common) -> None:
        body = build_backbone(backbone, pretrained, own_pool=c5_pool == "gdconv")
        super().__init__(feature_dim=body.out_channels[-1], **common)
        self.backbone = body
        if body.pool is not None and not 97 <= common["input_size"] <= 112:
            raise MsferError(f"model.c5_pool=gdconv pools a 7 x 7 C5: model.input_size must be 97 to 112, "
                             f"got {common['input_size']}")
        self.feature_norm = nn.BatchNorm1d(body.out_channels[-1]) if feature_norm else nn.Identity()

    def forward(self, images: Tensor, targets: dict[str, Tensor] | None = None,
                boxes: Tensor | None = None, box_valid: Tensor | None = None) -> dict[str, Tensor]:
        if boxes is not None:
            raise MsferError("this classifier uses no regions: do not pass boxes")
        logits = self.calibrated(self.feature_norm(self.pooled(self.backbone(images)["c5"])))
        batch = images.shape[0]
        out = {"logits": logits, "boxes": images.new_zeros((batch, 0, 4)), "box_scores": images.new_zeros((batch, 0)),
               "fallback": torch.zeros(batch, dtype=torch.bool, device=images.device)}
        if targets is not None:
            out["losses"] = {"emotion": self.emotion_loss(logits, targets["labels"])}
        return out

    def pooled(self, c5: Tensor) -> Tensor:
        """``B x C`` from C5 ``B x C x H x W``: its average, or (``c5_pool=gdconv``) the backbone's own pooling,
        which needs a 7 x 7 C5 (a 97 to 112 px input; :class:`MsferError` otherwise)."""
        if self.backbone.pool is None:
            return c5.mean(dim=(2, 3))
        pooled = self.backbone.pool(c5)
        if pooled.shape[-2:] != (1, 1):
            raise MsferError(f"this backbone pools a 7 x 7 C5 (input side 97 to 112 px), got "
                             f"{c5.shape[-2]} x {c5.shape[-1]}")
        return pooled.flatten(1)


class EmotionNet(EmotionModel):
    """Backbone -> FPN P3..P7 -> emotion-region detector -> multi-scale head -> 7 emotions.

    ``region_source`` says where the head's regions come from:

    * ``"learned"``: the detector's boxes. In training the head is teacher-forced with the
      pseudo-label boxes where they are valid (the detector's, detached, elsewhere), so the
      emotion branch learns on good regions from the first step while the detector trains.
    * ``"pseudo"``: no detector; the boxes given in ``targets["boxes"]`` (training) or the
      ``boxes``/``box_valid`` arguments (eval), i.e. the ``msfer annotate`` regions.
    * ``"none"``: no detector; scales 1-2 pool the fixed default layout (whole image as the
      face, template organs), a regions-free ablation. ``fallback`` stays False: the layout
      is the design there, not a failure.

    Fallback. A region whose best detector score is below ``region_score_threshold`` (or,
    for ``"pseudo"``, whose box is missing/invalid) is replaced: the face by the whole image,
    an organ by its template position inside the face box in use (detected or whole image).
    ``fallback`` is True for an image when any of its regions was replaced. The replacement
    is computed with ``torch.where`` on the whole batch, so the eval forward has no
    data-dependent control flow and traces to ONNX with the images as the only input.
    """

    def __init__(self, *, backbone: str, pretrained: bool, fpn_channels: int, anchor_size_multiplier: float,
                 proposals_per_level: int, rois_per_image: int, positive_fraction: float, detector_pool: int,
                 detector_channels: int, detector_gamma: float, box_loss_weight: float, detector_weight: float,
                 region_score_threshold: float, organ_pool: int, face_pool: int, head_channels: int,
                 scales: list[int], region_source: str, merge_eyes: bool, **common) -> None:
        scales = tuple(sorted(set(scales)))
        if not scales or not set(scales) <= {1, 2, 3}:
            raise MsferError(f"scales must be a non-empty subset of [1, 2, 3], got {list(scales)}")
        if region_source not in REGION_SOURCES:
            raise MsferError(f"region_source must be one of {', '.join(REGION_SOURCES)}, got {region_source!r}")
        names = region_names(merge_eyes)
        organ_levels = ("p3", "p4", "p5") if region_source == "learned" else ("p3",)
        head = MultiScaleHead(fpn_channels, head_channels, len(names) - 1, scales, organ_pool, face_pool, organ_levels)
        super().__init__(feature_dim=head.out_features, **common)
        self.region_names = names
        self.region_source = region_source
        self.region_score_threshold = region_score_threshold
        self.detector_weight = detector_weight
        body = build_backbone(backbone, pretrained)
        if region_source == "learned" and body.strides != TAP_STRIDES:
            raise MsferError(f"the backbone {backbone!r} has its C3..C5 at strides {body.strides}, but the learned "
                             f"region detector needs P3..P5 at {TAP_STRIDES}: use region_source=pseudo or none, or "
                             "another backbone")
        self.backbone = body
        self.fpn = FeaturePyramid(body.out_channels, fpn_channels, LEVELS if region_source == "learned" else ("p3",))
        self.detector = None
        if region_source == "learned":
            self.detector = RegionDetector(
                fpn_channels, len(names), anchor_size_multiplier=anchor_size_multiplier,
                proposals_per_level=proposals_per_level, rois_per_image=rois_per_image,
                positive_fraction=positive_fraction, pool_size=detector_pool, head_channels=detector_channels,
                gamma=detector_gamma, box_loss_weight=box_loss_weight)
        self.head = head
        self.register_buffer("region_template", torch.tensor([_TEMPLATE[name] for name in names]))

    def default_layout(self, face_boxes: Tensor) -> Tensor:
        """The template regions inside each face box: ``B x 4`` -> ``B x R x 4``."""
        origin = face_boxes[:, None, :2].repeat(1, 1, 2)
        size = (face_boxes[:, None, 2:] - face_boxes[:, None, :2]).repeat(1, 1, 2)
        return origin + self.region_template * size

    def _with_fallback(self, boxes: Tensor, found: Tensor, whole_image: Tensor) -> Tensor:
        face = torch.where(found[:, :1], boxes[:, 0], whole_image)
        return torch.where(found[..., None], boxes, self.default_layout(face))

    def forward(self, images: Tensor, targets: dict[str, Tensor] | None = None,
                boxes: Tensor | None = None, box_valid: Tensor | None = None) -> dict[str, Tensor]:
        batch, _, height, width = images.shape
        features = self.fpn(self.backbone(images))
        whole_image = images.new_tensor([0.0, 0.0, width, height], dtype=torch.float32).expand(batch, 4)
        training_targets = targets if self.training else None
        if training_targets is not None and self.region_source != "none" and "boxes" not in training_targets:
            raise MsferError(f"region_source={self.region_source!r} trains on region boxes: targets need "
                             "'boxes' and 'box_valid' (run 'msfer annotate', or use region_source=none)")
        if boxes is not None and self.region_source != "pseudo":
            raise MsferError(f"boxes are only an input with region_source=pseudo (this model: {self.region_source!r})")

        losses: dict[str, Tensor] = {}
        num_regions = len(self.region_names)
        if self.region_source == "learned":
            pseudo = None
            if training_targets is not None:
                valid = training_targets["box_valid"].bool()
                # invalid slots may hold anything (zeros, NaN): keep them out of RoIAlign and BatchNorm
                cleaned = torch.where(valid[..., None], training_targets["boxes"].float(), whole_image[:, None])
                pseudo = {"boxes": cleaned, "box_valid": valid}
            detected, scores, proposed, detector_losses = self.detector(features, (height, width), pseudo)
            losses.update({name: self.detector_weight * value for name, value in detector_losses.items()})
            found = scores >= self.region_score_threshold
            region_boxes = self._with_fallback(detected, found, whole_image)
            if pseudo is not None:
                region_boxes = torch.where(pseudo["box_valid"][..., None], pseudo["boxes"], region_boxes.detach())
        elif self.region_source == "pseudo":
            if training_targets is not None:
                boxes, box_valid = training_targets["boxes"], training_targets["box_valid"]
            if boxes is None:
                boxes = whole_image[:, None].expand(batch, num_regions, 4)
                box_valid = torch.zeros(batch, num_regions, dtype=torch.bool, device=images.device)
            found = torch.ones_like(boxes[..., 0], dtype=torch.bool) if box_valid is None else box_valid.bool()
            scores = found.float()
            region_boxes = self._with_fallback(boxes.float(), found, whole_image)
        else:
            region_boxes = self.default_layout(whole_image)
            scores = torch.zeros(batch, num_regions, device=images.device)
            found = torch.ones(batch, num_regions, dtype=torch.bool, device=images.device)

        logits = self.calibrated(self.head(features, region_boxes))
        out = {"logits": logits, "boxes": region_boxes, "box_scores": scores, "fallback": ~found.all(dim=1)}
        if self.region_source == "learned":
            out.update(detected=detected, proposed=proposed)
        if targets is not None:
            out["losses"] = {"emotion": self.emotion_loss(logits, targets["labels"]), **losses}
        return out
