"""The emotion-region detector (the paper's section 3.1): proposals, then a Fast R-CNN head.

The paper builds it "based on Fast R-CNN" on anchors of every pyramid level but does not say
where the proposals come from; as in torchvision's Faster R-CNN they come from a light
region-proposal head on the anchors, and the choices below are torchvision's unless stated.

Proposals. A 3x3 conv shared across levels, then per anchor an objectness logit and four box
deltas (:class:`~torchvision.models.detection._utils.BoxCoder`, weights 1). Anchors are matched
to the pseudo-label boxes with IoU >= 0.7 positive, < 0.3 negative, plus each box's best
anchors (torchvision's RPN ``Matcher`` with low-quality matches). The objectness loss is the
paper's focal term (eq. 3) over all non-ignored anchors, normalised by the number of positive
anchors as RetinaNet does (focal loss replaces the RPN's 256-anchor sampling); the box loss is
smooth-L1 (beta 1/9) on the positives, same normaliser. The top ``proposals_per_level``
anchors of every level are decoded into proposals; there is no NMS: a face crop holds one
instance of each region, the per-level quota already keeps small organ proposals from being
crowded out by face-sized ones, and a fixed count keeps the eval forward free of
data-dependent shapes for ONNX export.

Fast R-CNN head. RoIAlign (:class:`~msfer.model.layers.LevelRoIAlign`: P3..P5 by the paper's
level formula) to ``detector_pool``, a residual block, global average pooling, then two linear
layers: region class (background + R regions) and class-specific box deltas (BoxCoder weights
10, 10, 5, 5). Training: the pseudo-label boxes are added to the proposals, every candidate
is labelled by IoU >= 0.5 with a box (else background; torchvision's ``Matcher``), and
``rois_per_image`` are sampled with at most ``positive_fraction`` positives (torchvision's
``BalancedPositiveNegativeSampler``). Loss ``1/N_cls sum focal_CE + lambda 1/N_cls sum p* smoothL1``
over the sampled RoIs (torchvision normalises the box term by the sampled count too).

Output. For each region class the highest-scoring proposal, refined by that class's deltas:
inputs are single-face crops, so one box per class and no NMS. In training the candidates are
the sampled proposals (the pseudo-label boxes excluded), at eval all proposals.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder, Matcher
from torchvision.ops import clip_boxes_to_image

from .anchors import ANCHORS_PER_LOCATION, level_anchors
from .boxes import box_iou
from .fpn import LEVELS, STRIDES
from .layers import LevelRoIAlign, residual_block
from .losses import binary_focal_loss, focal_cross_entropy

SMOOTH_L1_BETA = 1.0 / 9
PRIOR_PROBABILITY = 0.01


class ProposalHead(nn.Module):
    """Dense per-anchor objectness and box deltas, shared across pyramid levels (torchvision's RPNHead)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.objectness = nn.Conv2d(channels, ANCHORS_PER_LOCATION, 1)
        self.deltas = nn.Conv2d(channels, 4 * ANCHORS_PER_LOCATION, 1)
        for layer in (self.conv, self.objectness, self.deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)
        # RetinaNet's prior: start every anchor at objectness 0.01, so the focal loss over all
        # anchors is not swamped by the easy negatives in the first steps
        nn.init.constant_(self.objectness.bias, -math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, feature: Tensor) -> tuple[Tensor, Tensor]:
        """``B x C x H x W`` -> objectness ``B x HWa``, deltas ``B x HWa x 4`` (anchor order of :mod:`.anchors`)."""
        x = F.relu(self.conv(feature))
        batch = x.shape[0]
        objectness = self.objectness(x).permute(0, 2, 3, 1).reshape(batch, -1)
        deltas = self.deltas(x).unflatten(1, (ANCHORS_PER_LOCATION, 4)).permute(0, 3, 4, 1, 2).reshape(batch, -1, 4)
        return objectness, deltas


def _gather(values: Tensor, index: Tensor) -> Tensor:
    """``values[b, index[b, k]]`` for ``values`` ``B x N x ...`` and ``index`` ``B x K``."""
    expanded = index.reshape(index.shape + (1,) * (values.dim() - 2)).expand(index.shape + values.shape[2:])
    return values.gather(1, expanded)


class RegionDetector(nn.Module):
    def __init__(
        self,
        channels: int,
        num_regions: int,
        *,
        anchor_size_multiplier: float,
        proposals_per_level: int,
        rois_per_image: int,
        positive_fraction: float,
        pool_size: int,
        head_channels: int,
        gamma: float,
        box_loss_weight: float,
    ) -> None:
        super().__init__()
        self.num_regions = num_regions
        self.anchor_size_multiplier = anchor_size_multiplier
        self.proposals_per_level = proposals_per_level
        self.rois_per_image = rois_per_image
        self.positive_fraction = positive_fraction
        self.gamma = gamma
        self.box_loss_weight = box_loss_weight
        self.proposal_head = ProposalHead(channels)
        self.anchor_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.roi_coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
        self.matcher = Matcher(0.5, 0.5, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(rois_per_image, positive_fraction)
        self.roi_pool = LevelRoIAlign(("p3", "p4", "p5"), pool_size)
        self.roi_block = residual_block(channels, head_channels)
        self.class_logits = nn.Linear(head_channels, num_regions + 1)
        self.box_deltas = nn.Linear(head_channels, 4 * (num_regions + 1))
        nn.init.normal_(self.class_logits.weight, std=0.01)
        nn.init.normal_(self.box_deltas.weight, std=0.001)
        for layer in (self.class_logits, self.box_deltas):
            nn.init.zeros_(layer.bias)

    def anchors(self, features: dict[str, Tensor]) -> list[Tensor]:
        return [
            level_anchors(features[level].shape[-2], features[level].shape[-1], STRIDES[level],
                          self.anchor_size_multiplier * STRIDES[level], features[level].device)
            for level in LEVELS
        ]

    def forward(
        self, features: dict[str, Tensor], image_size: tuple[int, int], targets: dict[str, Tensor] | None = None
    ) -> tuple[Tensor, Tensor, Tensor, dict[str, Tensor]]:
        """-> (boxes ``B x R x 4``, scores ``B x R``, the proposals they were refined from ``B x R x 4``, losses).

        Boxes in input pixels, ``x1, y1, x2, y2``, clipped to ``image_size`` (H, W); scores in [0, 1].
        Losses only in training with ``targets``.
        """
        level_anchors_ = self.anchors(features)
        anchors = torch.cat(level_anchors_)
        objectness, deltas = zip(*(self.proposal_head(features[level]) for level in LEVELS))
        objectness, deltas = torch.cat(objectness, 1), torch.cat(deltas, 1)
        proposals = self._proposals(objectness.detach(), deltas.detach(), anchors, [len(a) for a in level_anchors_],
                                    image_size)

        if not (self.training and targets is not None):
            logits, roi_deltas = self._roi_head(features, proposals)
            return (*self._best_per_region(logits, roi_deltas, proposals, image_size), {})

        gt_boxes, gt_valid = targets["boxes"].float(), targets["box_valid"].bool()
        losses = self._proposal_losses(objectness, deltas, anchors, gt_boxes, gt_valid)
        rois, labels, matched, is_proposal = self._sample_rois(proposals, gt_boxes, gt_valid)
        logits, roi_deltas = self._roi_head(features, rois)
        losses.update(self._roi_losses(logits, roi_deltas, rois, labels, matched))
        return (*self._best_per_region(logits, roi_deltas, rois, image_size, candidates=is_proposal), losses)

    # -- proposals ---------------------------------------------------------------------------

    def _proposals(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, level_sizes: list[int],
                   image_size: tuple[int, int]) -> Tensor:
        """Top ``proposals_per_level`` anchors of each level, decoded and clipped: ``B x K x 4``."""
        top = []
        start = 0
        for size, level_objectness in zip(level_sizes, objectness.split(level_sizes, dim=1)):
            top.append(level_objectness.topk(min(self.proposals_per_level, size), dim=1).indices + start)
            start += size
        index = torch.cat(top, dim=1)
        batch, count = index.shape
        chosen_deltas = _gather(deltas.float(), index).reshape(-1, 4)
        boxes = self.anchor_coder.decode_single(chosen_deltas, anchors[index.reshape(-1)])
        return clip_boxes_to_image(boxes.reshape(batch, count, 4), image_size)

    def _proposal_losses(self, objectness: Tensor, deltas: Tensor, anchors: Tensor, gt_boxes: Tensor,
                         gt_valid: Tensor) -> dict[str, Tensor]:
        iou = box_iou(gt_boxes, anchors)  # B x R x A
        iou = torch.where(gt_valid[..., None], iou, torch.full_like(iou, -1.0))
        best_iou, best_gt = iou.max(dim=1)  # per anchor
        labels = torch.full_like(best_iou, -1.0)
        labels[best_iou < 0.3] = 0.0
        labels[best_iou >= 0.7] = 1.0
        # low-quality matches: every valid box keeps the anchors it overlaps best
        best_per_gt = iou.max(dim=2, keepdim=True).values
        is_best = ((iou == best_per_gt) & gt_valid[..., None] & (best_per_gt > 0)).any(dim=1)
        labels[is_best] = 1.0
        positive = labels == 1.0
        normaliser = positive.sum().clamp(min=1)
        cls_loss = binary_focal_loss(objectness[labels >= 0], labels[labels >= 0], self.gamma) / normaliser
        matched = _gather(gt_boxes, best_gt)  # B x A x 4
        targets = self.anchor_coder.encode_single(matched[positive], anchors.expand_as(matched)[positive])
        box_loss = F.smooth_l1_loss(deltas[positive].float(), targets, beta=SMOOTH_L1_BETA, reduction="sum")
        box_loss = box_loss / normaliser
        return {"proposal_class": cls_loss, "proposal_box": self.box_loss_weight * box_loss}

    # -- Fast R-CNN head ---------------------------------------------------------------------

    def _roi_head(self, features: dict[str, Tensor], rois: Tensor) -> tuple[Tensor, Tensor]:
        """``rois`` ``B x N x 4`` -> class logits ``B x N x (R+1)``, deltas ``B x N x (R+1) x 4``."""
        pooled = self.roi_pool(features, rois)
        x = self.roi_block(pooled).mean(dim=(2, 3))
        batch, count = rois.shape[:2]
        return (self.class_logits(x).reshape(batch, count, -1),
                self.box_deltas(x).reshape(batch, count, self.num_regions + 1, 4))

    def _sample_rois(self, proposals: Tensor, gt_boxes: Tensor,
                     gt_valid: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fast R-CNN's RoI sampling, as torchvision's ``RoIHeads.select_training_samples``.

        The pseudo-label boxes are appended to the proposals (``add_gt_proposals``); every
        candidate is matched to the box it overlaps most (:class:`Matcher`, IoU >= 0.5 positive,
        below it background, no low-quality matches), and ``rois_per_image`` are drawn with at
        most ``positive_fraction`` positives (:class:`BalancedPositiveNegativeSampler`). So the
        positives are mostly proposals near a pseudo-label, whose regression targets are real
        offsets, and the pseudo-label boxes themselves compete for the same quota. Invalid
        pseudo-label slots are neither candidates nor matches.

        ``proposals`` ``B x K x 4``, ``gt_boxes`` ``B x R x 4`` (input pixels, ``x1, y1, x2, y2``),
        ``gt_valid`` ``B x R`` bool. Returns, with ``N`` slots per image:
        RoIs ``B x N x 4``, labels ``B x N`` (0 background, ``r + 1`` region ``r``, -1 an unused
        slot, when an image has fewer usable candidates), the matched pseudo-label box of each
        RoI ``B x N x 4``, and ``is_proposal`` ``B x N`` (False for pseudo-label boxes and unused slots);
        ``N = min(rois_per_image, K + R)``.
        """
        batch, num_proposals = proposals.shape[:2]
        candidates = torch.cat([proposals, gt_boxes], dim=1)  # B x (K + R) x 4
        iou = box_iou(gt_boxes, candidates)  # B x R x (K + R)
        iou = torch.where(gt_valid[..., None], iou, torch.full_like(iou, -1.0))
        is_invalid_gt = torch.cat([gt_valid.new_zeros(batch, num_proposals), ~gt_valid], dim=1)
        matches = torch.stack([self.matcher(iou[b]) for b in range(batch)])  # B x (K + R), -1 below 0.5
        labels = torch.where(matches >= 0, matches + 1, torch.zeros_like(matches))
        labels = torch.where(is_invalid_gt, torch.full_like(labels, -1), labels)

        positive, negative = self.sampler(list(labels))
        # sampled first (positives, then negatives), then the unused rest, in a fixed-size slot list
        sampled = torch.stack(positive).bool() | torch.stack(negative).bool()
        rank = torch.stack(positive).float() * 2 + torch.stack(negative).float()
        order = rank.argsort(dim=1, descending=True, stable=True)
        chosen = order[:, : self.rois_per_image]
        used = _gather(sampled, chosen)
        rois = _gather(candidates, chosen)
        chosen_labels = torch.where(used, _gather(labels, chosen), torch.full_like(chosen, -1))
        matched = _gather(_gather(gt_boxes, matches.clamp(min=0)), chosen)
        is_proposal = used & (chosen < num_proposals)
        return rois, chosen_labels, matched, is_proposal

    def _roi_losses(self, logits: Tensor, deltas: Tensor, rois: Tensor, labels: Tensor,
                    matched: Tensor) -> dict[str, Tensor]:
        used = labels >= 0
        normaliser = used.sum().clamp(min=1)
        cls_loss = focal_cross_entropy(logits[used], labels[used], self.gamma, reduction="sum") / normaliser
        positive = labels > 0
        class_deltas = deltas[positive].gather(1, labels[positive][:, None, None].expand(-1, 1, 4)).squeeze(1)
        targets = self.roi_coder.encode_single(matched[positive], rois[positive])
        box_loss = F.smooth_l1_loss(class_deltas.float(), targets, beta=SMOOTH_L1_BETA, reduction="sum") / normaliser
        return {"region_class": cls_loss, "region_box": self.box_loss_weight * box_loss}

    def _best_per_region(self, logits: Tensor, deltas: Tensor, rois: Tensor, image_size: tuple[int, int],
                         candidates: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Per region class the top-scoring RoI, refined by that class's deltas.

        -> refined boxes ``B x R x 4``, scores ``B x R``, the chosen RoIs before refinement ``B x R x 4``.
        ``candidates`` (``B x N`` bool) restricts the choice to some RoIs.
        """
        scores = logits.float().softmax(dim=-1)[..., 1:]  # B x N x R
        if candidates is not None:  # B x N
            scores = scores * candidates[..., None]
        best_scores, best = scores.max(dim=1)  # B x R
        region_deltas = deltas[:, :, 1:].float()  # B x N x R x 4
        chosen_deltas = region_deltas.gather(1, best[:, None, :, None].expand(-1, 1, -1, 4)).squeeze(1)
        chosen_rois = _gather(rois, best)  # B x R x 4
        boxes = self.roi_coder.decode_single(chosen_deltas.reshape(-1, 4), chosen_rois.reshape(-1, 4))
        return clip_boxes_to_image(boxes.reshape(best.shape + (4,)), image_size), best_scores, chosen_rois
