"""The region detector's Fast R-CNN RoI sampling: positives are real proposals near
the pseudo-labels, with non-zero regression targets, within the quota of every registered model."""
import pytest
import torch

from msfer.model import MODELS, model_config
from msfer.model.region_detector import RegionDetector

SIZE = 112
# face, left eye, right eye, nose, mouth of a centred face (input pixels)
PSEUDO = torch.tensor([[6.0, 6.0, 106.0, 106.0], [25.0, 40.0, 50.0, 58.0], [62.0, 40.0, 87.0, 58.0],
                       [42.0, 54.0, 70.0, 80.0], [34.0, 80.0, 78.0, 100.0]])


def detector_for(name: str) -> RegionDetector:
    cfg = model_config(name)
    return RegionDetector(
        8, len(PSEUDO), anchor_size_multiplier=cfg["anchor_size_multiplier"],
        proposals_per_level=cfg["proposals_per_level"], rois_per_image=cfg["rois_per_image"],
        positive_fraction=cfg["positive_fraction"], pool_size=cfg["detector_pool"], head_channels=8,
        gamma=cfg["detector_gamma"], box_loss_weight=cfg["box_loss_weight"])


def proposals_around(boxes: torch.Tensor, per_box: int, background: int, generator: torch.Generator,
                     spread: float = 0.12) -> torch.Tensor:
    """``per_box`` jittered copies of each box (IoU above 0.5 at the default ``spread``, never equal)
    plus small background boxes in a corner; region-major order."""
    size = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    jitter = (torch.rand(len(boxes), per_box, 4, generator=generator) - 0.5) * spread + 0.02
    near = (boxes[:, None] + jitter * size[:, None]).reshape(-1, 4)
    corner = torch.rand(background, 2, generator=generator) * 8
    far = torch.cat([corner, corner + 4], dim=1)
    return torch.cat([near, far])


EMOTIONNETS = [name for name, cfg in MODELS.items() if cfg.get("type", "emotionnet") == "emotionnet"]


@pytest.mark.parametrize("name", EMOTIONNETS)
def test_positives_are_proposals_with_real_offsets_within_the_quota(name):
    torch.manual_seed(0)
    detector = detector_for(name)
    generator = torch.Generator().manual_seed(1)
    batch = 3
    proposals = torch.stack([proposals_around(PSEUDO, 10, detector.rois_per_image, generator) for _ in range(batch)])
    gt = PSEUDO.expand(batch, -1, -1).clone()
    valid = torch.ones(batch, len(PSEUDO), dtype=torch.bool)
    valid[2, 3] = False  # an image whose nose the annotator rejected

    rois, labels, matched, is_proposal = detector._sample_rois(proposals, gt, valid)

    quota = int(detector.rois_per_image * detector.positive_fraction)
    assert rois.shape == (batch, detector.rois_per_image, 4)
    positive = labels > 0
    assert (positive.sum(1) == quota).all()  # more positives on offer than the quota: exactly the quota
    assert ((labels >= 0).sum(1) == detector.rois_per_image).all()  # negatives fill the rest
    assert (positive & is_proposal).any(1).all()  # proposals, not only the pseudo-label boxes, are positives
    assert not (labels[2] == 4).any()  # the rejected nose is no class of that image...
    assert not (rois[2] == gt[2, 3]).all(-1).any()  # ...and its slot is no candidate

    targets = detector.roi_coder.encode_single(matched[positive & is_proposal], rois[positive & is_proposal])
    assert targets.abs().sum(1).min() > 0  # the second stage regresses real offsets
    # each positive overlaps the pseudo-label of its own class by at least 0.5
    from torchvision.ops import box_iou
    for b, s in positive.nonzero().tolist():
        region = labels[b, s] - 1
        assert box_iou(rois[b, s][None], gt[b, region][None]).item() >= 0.5
        assert torch.equal(matched[b, s], gt[b, region])


def test_without_positive_proposals_the_pseudo_label_boxes_are_the_positives():
    detector = detector_for("msfer_mobilenetv2")
    generator = torch.Generator().manual_seed(2)
    proposals = proposals_around(PSEUDO, 0, 60, generator)[None]  # background only
    rois, labels, _, is_proposal = detector._sample_rois(proposals, PSEUDO[None], torch.ones(1, 5, dtype=torch.bool))
    positives = labels[0] > 0
    assert 0 < positives.sum() <= int(detector.rois_per_image * detector.positive_fraction)
    assert not (positives & is_proposal[0]).any()
