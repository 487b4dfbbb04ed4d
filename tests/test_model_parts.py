"""Backbones, FPN, anchors, RoI pooling and the focal loss."""
import math

import pytest
import torch
import torch.nn.functional as F

from msfer.errors import MsferError
from msfer.model.anchors import ANCHORS_PER_LOCATION, cell_anchors, level_anchors
from msfer.model.backbones import BACKBONES, build_backbone
from msfer.model.boxes import box_iou
from msfer.model.emotionnet import _TEMPLATE
from msfer.model.fpn import LEVELS, STRIDES, FeaturePyramid
from msfer.model.layers import LevelRoIAlign
from msfer.model.losses import binary_focal_loss, focal_cross_entropy
from msfer.model.multiscale import MultiScaleHead


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_and_fpn_shapes(name):
    size = 64
    backbone = build_backbone(name, pretrained=False).eval()
    fpn = FeaturePyramid(backbone.out_channels, 16).eval()
    with torch.no_grad():
        c = backbone(torch.randn(2, 3, size, size))
        p = fpn(c)
    # mobilefacenet has no stride-32 layer: its C5 is at stride 16 (the learned region detector refuses it)
    assert backbone.strides == ((8, 16, 16) if name == "mobilefacenet" else (8, 16, 32))
    assert [tuple(f.shape) for f in c.values()] == [(2, ch, size // s, size // s)
                                                    for ch, s in zip(backbone.out_channels, backbone.strides)]
    assert list(p) == list(LEVELS)
    p5 = size // backbone.strides[2]
    expected = {"p3": 8, "p4": 4, "p5": p5, "p6": (p5 + 1) // 2, "p7": (p5 + 3) // 4}
    assert {k: tuple(v.shape) for k, v in p.items()} == {k: (2, 16, n, n) for k, n in expected.items()}


def test_fpn_p3_only_computes_p3():
    fpn = FeaturePyramid([8, 16, 32], 8, ("p3",))
    features = {"c3": torch.randn(1, 8, 8, 8), "c4": torch.randn(1, 16, 4, 4), "c5": torch.randn(1, 32, 2, 2)}
    assert list(fpn(features)) == ["p3"]
    assert fpn.p6 is None and len(fpn.output) == 1


def test_pretrained_resnet_without_weights_says_how_to_supply_them(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MsferError, match="pretrained=false"):
        build_backbone("resnet18", pretrained=True)


def test_unknown_backbone():
    with pytest.raises(MsferError, match="mobilenet_v2"):
        build_backbone("vgg16", pretrained=False)


def test_cell_anchors_ratios_and_scales():
    anchors = cell_anchors(16.0)
    w, h = anchors[:, 2] - anchors[:, 0], anchors[:, 3] - anchors[:, 1]
    assert anchors.shape == (9, 4)
    torch.testing.assert_close(anchors[:, :2] + anchors[:, 2:], torch.zeros(9, 2))  # centred
    torch.testing.assert_close((h / w).reshape(3, 3), torch.tensor([1.0, 2.0, 0.5])[:, None].expand(3, 3))
    sizes = (w * h).sqrt().reshape(3, 3)
    torch.testing.assert_close(sizes, 16.0 * torch.tensor([1.0, 2 ** (1 / 3), 2 ** (2 / 3)]).expand(3, 3))


def test_anchor_count_and_positions():
    sizes = {"p3": (14, 14), "p4": (7, 7), "p5": (4, 4), "p6": (2, 2), "p7": (1, 1)}
    per_level = [level_anchors(h, w, STRIDES[name], 2.0 * STRIDES[name], torch.device("cpu"))
                 for name, (h, w) in sizes.items()]
    assert sum(len(a) for a in per_level) == ANCHORS_PER_LOCATION * sum(h * w for h, w in sizes.values()) == 2394
    assert all(a.shape[1] == 4 for a in per_level)
    p3 = per_level[0].reshape(14, 14, 9, 4)
    centre = (p3[..., :2] + p3[..., 2:]) / 2
    torch.testing.assert_close(centre[0, 1, 0], torch.tensor([12.0, 4.0]))  # (x, y) of row 0, column 1
    torch.testing.assert_close(centre[2, 0, 5], torch.tensor([4.0, 20.0]))


def test_default_anchor_size_covers_organs_at_112px():
    """The multiplier-2 anchors reach IoU > 0.5 with every template region of a 112 px face crop."""
    face = torch.tensor([4.0, 4.0, 108.0, 108.0])
    size = face[2:] - face[:2]
    regions = torch.stack([torch.cat([face[:2] + torch.tensor(r[:2]) * size, face[:2] + torch.tensor(r[2:]) * size])
                           for r in _TEMPLATE.values()])
    grid = {"p3": 14, "p4": 7, "p5": 4, "p6": 2, "p7": 1}
    anchors = torch.cat([level_anchors(n, n, STRIDES[k], 2.0 * STRIDES[k], torch.device("cpu"))
                         for k, n in grid.items()])
    assert box_iou(regions, anchors).max(dim=1).values.min() > 0.5


def test_batched_box_iou_and_clipping_are_torchvisions():
    import torchvision.ops

    torch.manual_seed(0)
    corners = torch.rand(3, 6, 2, 2) * 60 - 10
    boxes = torch.cat([corners.amin(dim=2), corners.amax(dim=2)], dim=-1)  # B x N x 4, some past the edges
    others = boxes.flip(1)[:, :4] + torch.rand(3, 4, 4)
    iou = box_iou(boxes, others)
    assert iou.shape == (3, 6, 4)
    for b in range(3):
        torch.testing.assert_close(iou[b], torchvision.ops.box_iou(boxes[b], others[b]))
    degenerate = torch.tensor([[[5.0, 5.0, 5.0, 5.0]]])
    assert box_iou(degenerate, degenerate).item() == 0.0  # torchvision: NaN
    clipped = torchvision.ops.clip_boxes_to_image(boxes, (32, 48))  # batched: (H, W)
    assert clipped.shape == boxes.shape
    assert (clipped[..., 0::2] >= 0).all() and (clipped[..., 0::2] <= 48).all()
    assert (clipped[..., 1::2] >= 0).all() and (clipped[..., 1::2] <= 32).all()
    inside = ((boxes[..., :2] >= 0) & (boxes[..., 2:3] <= 48) & (boxes[..., 3:] <= 32)).all(dim=-1)
    assert torch.equal(clipped[inside], boxes[inside])


def test_level_roi_align_follows_the_level_formula():
    channels, size = 4, 224
    features = {f"p{k}": torch.full((2, channels, size // 2 ** k, size // 2 ** k), float(k)) for k in (3, 4, 5)}
    pool = LevelRoIAlign(("p3", "p4", "p5"), 5)
    # k = floor(4 + log2(sqrt(wh) / 224)): 40 px -> 1.5 -> 3 (clamped), 112 -> 3, 224 -> 4, 448 -> 5
    boxes = torch.tensor([[[0, 0, 40, 40], [0, 0, 112, 112]], [[0, 0, 224, 224], [-112, -112, 336, 336]]],
                         dtype=torch.float)
    pooled = pool(features, boxes)
    assert pooled.shape == (4, channels, 5, 5)
    assert pooled[:, 0, 2, 2].tolist() == [3.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("scales, per_scale", [((1, 2, 3), 4 + 1 + 1), ((1,), 4), ((2, 3), 2), ((3,), 1)])
def test_multiscale_head_feature_size(scales, per_scale):
    head = MultiScaleHead(8, 6, num_organs=4, scales=scales, organ_pool=3, face_pool=5, organ_levels=("p3",))
    features = {"p3": torch.randn(2, 8, 8, 8)}
    boxes = torch.tensor([[0, 0, 64, 64], [10, 20, 25, 30], [35, 20, 50, 30], [25, 30, 40, 45], [20, 45, 45, 58]],
                         dtype=torch.float).expand(2, 5, 4)
    assert head(features, boxes).shape == (2, 6 * per_scale) == (2, head.out_features)


def test_head_pools_regions_to_the_configured_sizes():
    head = MultiScaleHead(8, 6, num_organs=4, scales=(1, 2), organ_pool=3, face_pool=5, organ_levels=("p3",))
    features = {"p3": torch.randn(2, 8, 8, 8)}
    boxes = torch.tensor([[0, 0, 64, 64], [10, 20, 25, 30], [35, 20, 50, 30], [25, 30, 40, 45], [20, 45, 45, 58]],
                         dtype=torch.float).expand(2, 5, 4)
    assert head.organ_pool(features, boxes[:, 1:]).shape == (8, 8, 3, 3)
    assert head.face_pool(features, boxes[:, :1]).shape == (2, 8, 5, 5)


# -- focal loss ----------------------------------------------------------------------------

def test_focal_cross_entropy_hand_computed():
    logits = torch.tensor([[math.log(0.7), math.log(0.2), math.log(0.1)],
                           [math.log(0.25), math.log(0.25), math.log(0.5)]])
    target = torch.tensor([0, 2])
    gamma = 2.0
    expected = [-(0.3 ** 2) * math.log(0.7), -(0.5 ** 2) * math.log(0.5)]
    torch.testing.assert_close(focal_cross_entropy(logits, target, gamma, reduction="none"), torch.tensor(expected))
    torch.testing.assert_close(focal_cross_entropy(logits, target, gamma), torch.tensor(sum(expected) / 2))
    soft = torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 1.0]])
    expected_soft = -0.5 * 0.3 ** 2 * math.log(0.7) - 0.5 * 0.8 ** 2 * math.log(0.2)
    torch.testing.assert_close(focal_cross_entropy(logits, soft, gamma, reduction="none")[0],
                               torch.tensor(expected_soft))


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_cross_entropy_is_cross_entropy_at_gamma_0(smoothing, weighted, reduction):
    torch.manual_seed(0)
    logits, hard = torch.randn(6, 7), torch.randint(0, 7, (6,))
    soft = torch.rand(6, 7).softmax(dim=1)
    weight = torch.rand(7) + 0.5 if weighted else None
    for target in (hard, soft):
        expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=smoothing, reduction=reduction)
        got = focal_cross_entropy(logits, target, 0.0, label_smoothing=smoothing, weight=weight, reduction=reduction)
        torch.testing.assert_close(got, expected)


def test_focal_term_down_weights_easy_examples():
    easy, hard = torch.tensor([[4.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    target = torch.tensor([0])
    ratio_ce = (focal_cross_entropy(easy, target, 0.0) / focal_cross_entropy(hard, target, 0.0)).item()
    ratio_focal = (focal_cross_entropy(easy, target, 2.0) / focal_cross_entropy(hard, target, 2.0)).item()
    assert ratio_focal < ratio_ce / 10


def test_binary_focal_loss_is_the_papers_formula():
    p = torch.tensor([0.9, 0.2, 0.6])
    label = torch.tensor([1.0, 0.0, 0.0])
    p_t = p * label + (1 - p) * (1 - label)  # the paper's p p* + (1 - p*)(1 - p)
    expected = (-(1 - p_t) ** 2 * p_t.log()).sum()
    torch.testing.assert_close(binary_focal_loss(torch.logit(p), label, gamma=2.0), expected)
    torch.testing.assert_close(binary_focal_loss(torch.logit(p), label, gamma=0.0),
                               F.binary_cross_entropy(p, label, reduction="sum"))
