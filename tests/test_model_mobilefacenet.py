"""The face-pretrained backbone ``mobilefacenet``: its taps and strides, the embedding, the registry's input-scale
rule, the region network's refusal, ONNX export, and (when the converted file exists) the port against the
original's output."""
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from msfer.data.images import load_rgb_array
from msfer.data.transforms import model_input
from msfer.errors import MsferError
from msfer.faces.crop import CropRule, crop_face
from msfer.labels import EMOTIONS
from msfer.model import build_model
from msfer.model.backbones import build_backbone
from msfer.model.mobilefacenet import MOBILEFACENET_MEAN, MOBILEFACENET_STD, MobileFaceNet
from msfer.model.pretrained import face_weights_path
from msfer.model.registry import IMAGENET_MEAN, IMAGENET_STD

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "mobilefacenet_reference.json"


@pytest.mark.parametrize("side, sides", [(112, (14, 7, 7)), (100, (13, 7, 7)), (64, (8, 4, 4))])
def test_backbone_taps_and_strides(side, sides):
    backbone = build_backbone("mobilefacenet", pretrained=False).eval()
    with torch.no_grad():
        c = backbone(torch.randn(1, 3, side, side))
    assert backbone.out_channels == [128, 128, 512] and backbone.strides == (8, 16, 16)
    assert {k: tuple(v.shape) for k, v in c.items()} == {"c3": (1, 128, sides[0], sides[0]),
                                                        "c4": (1, 128, sides[1], sides[1]),
                                                        "c5": (1, 512, sides[2], sides[2])}


def test_backbone_taps_are_the_networks():
    """The backbone's stem and stages are slices of MobileFaceNet.features and its pool the head's GDConv: same
    module names, same taps, the same pooled C5."""
    torch.manual_seed(0)
    assert build_backbone("mobilefacenet", pretrained=False).pool is None  # kept only when asked for
    backbone = build_backbone("mobilefacenet", pretrained=False, own_pool=True).eval()
    state = {re.sub(r"^(stem|stages\.\d)\.", "features.", re.sub(r"^pool\.", "head.gdconv.", key)): value
             for key, value in backbone.state_dict().items()}
    net = MobileFaceNet().eval()
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert not unexpected and missing and all(key.startswith(("head.conv.", "head.linear.")) for key in missing)
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected, got = net.taps(x), backbone(x)
        pooled = backbone.pool(got["c5"])
    assert list(got) == list(expected) == ["c3", "c4", "c5"]
    for key in expected:
        torch.testing.assert_close(got[key], expected[key])
    torch.testing.assert_close(pooled, net.head.gdconv(expected["c5"]))
    assert pooled.shape == (2, 512, 1, 1) and build_backbone("mobilenet_v2", pretrained=False).pool is None


def test_embedding_is_unit_length_and_needs_a_seven_by_seven_map():
    net = MobileFaceNet().eval()
    with torch.no_grad():
        embedding = net.embedding(torch.randn(3, 3, 112, 112))
        assert net.embedding(torch.randn(1, 3, 97, 97)).shape == (1, 192)
        with pytest.raises(MsferError, match="97 to 112"):
            net.embedding(torch.randn(1, 3, 128, 128))
    assert embedding.shape == (3, 192)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))


def test_prelu_slope_is_twice_the_graphs_multiplier():
    # the graph's PReLU: relu(x) + m * (x - |x|); the port's nn.PReLU with weight 2 m
    m = torch.tensor([-1.19, 0.4, 0.09])
    x = torch.randn(5, 3, 4, 4) * 3
    prelu = torch.nn.PReLU(3)
    prelu.weight.data = 2 * m
    graph = torch.relu(x) + m.view(1, 3, 1, 1) * (x - x.abs())
    torch.testing.assert_close(prelu(x), graph)


def test_pretrained_mobilefacenet_needs_its_input_scale():
    with pytest.raises(MsferError, match="classifier_mobilefacenet"):
        build_model({"name": "classifier_mobilefacenet", "mean": IMAGENET_MEAN, "std": IMAGENET_STD})
    with pytest.raises(MsferError, match="mobilefacenet's input scale.*ImageNet"):
        build_model({"name": "classifier_mobilenetv2", "mean": MOBILEFACENET_MEAN, "std": MOBILEFACENET_STD})
    with pytest.raises(MsferError, match="faceres"):
        build_model({"name": "classifier_faceres", "mean": MOBILEFACENET_MEAN, "std": MOBILEFACENET_STD})
    # without pretrained weights any scale is the user's choice
    build_model({"name": "classifier_mobilefacenet", "pretrained": False, "mean": IMAGENET_MEAN,
                 "std": IMAGENET_STD, "input_size": 100})


def test_the_mobilefacenet_classifier_pools_with_its_gdconv_so_needs_a_seven_by_seven_map():
    with pytest.raises(MsferError, match=r"model.input_size must be 97 to 112, got 64"):
        build_model({"name": "classifier_mobilefacenet", "pretrained": False, "input_size": 64})
    model = build_model({"name": "classifier_mobilefacenet", "pretrained": False}).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 112, 112))["logits"].shape == (2, 7)
        with pytest.raises(MsferError, match="7 x 7 C5.*got 8 x 8"):
            model(torch.randn(1, 3, 128, 128))


def test_the_learned_region_detector_refuses_a_stride_16_c5():
    with pytest.raises(MsferError, match=r"strides \(8, 16, 16\).*region_source=pseudo or none"):
        build_model({"name": "msfer_mobilenetv2", "backbone": "mobilefacenet", "pretrained": False})
    model = build_model({"name": "msfer_mobilenetv2", "backbone": "mobilefacenet", "pretrained": False,
                         "region_source": "none", "input_size": 64}).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64))["logits"].shape == (2, 7)


def test_missing_converted_file_names_it_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MsferError, match=r"msfer_mobilefacenet\.pth.*convert_face_backbone\.py --model mobilefacenet"):
        build_backbone("mobilefacenet", pretrained=True)


def test_a_file_that_is_not_the_state_dict_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = face_weights_path("mobilefacenet", must_exist=False)
    path.parent.mkdir(parents=True)
    torch.save(MobileFaceNet().features.state_dict(), path)  # the features alone are not the file
    with pytest.raises(MsferError, match=r"(?s)not a converted mobilefacenet state dict.*--model mobilefacenet"):
        build_backbone("mobilefacenet", pretrained=True)


def converted_or_skip() -> Path:
    path = face_weights_path("mobilefacenet", must_exist=False)
    if not path.is_file():
        pytest.skip(f"{path} is absent: make it with 'python scripts/convert_face_backbone.py --model mobilefacenet' "
                    "(needs node and npm)")
    return path


def test_port_reproduces_the_originals_embedding():
    """The converted file through MobileFaceNet gives the embedding TensorFlow.js gave on the same aligned face,
    before and after its L2 normalisation."""
    path = converted_or_skip()
    reference = json.loads(REFERENCE.read_text())
    image = load_rgb_array(ROOT / "src" / "msfer" / reference["image"].split("src/msfer/")[1])
    crop, _ = crop_face(image, np.array(reference["detection"]), np.array(reference["landmarks"]),
                        CropRule.from_dict(reference["crop_rule"]), reference["size"])
    net = MobileFaceNet().eval()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with torch.no_grad():  # msfer's own preprocessing with the model's mean/std: the original's input scale
        x = model_input(crop[None], MOBILEFACENET_MEAN, MOBILEFACENET_STD)
        got = {"linear": net.embedding(x, normalise=False)[0].numpy(), "embedding": net.embedding(x)[0].numpy()}
    for key, values in got.items():
        expected = np.array(reference[key], np.float32)
        assert np.abs(values - expected).max() / np.abs(expected).max() < 1e-4, key


@pytest.mark.parametrize("size", [112, 100])
def test_classifier_trains_and_exports_to_onnx(size):
    """classifier_mobilefacenet with random weights: batch 2 forward/backward, and an ONNX export whose outputs
    match. 100 px makes the stride-2 layers meet odd sides (25, 13), where TensorFlow's padding is even."""
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build_model({"name": "classifier_mobilefacenet", "pretrained": False, "input_size": size}).train()
    out = model(torch.randn(2, 3, size, size), {"labels": torch.tensor([3, 6])})
    assert out["logits"].shape == (2, 7) and out["boxes"].shape == (2, 0, 4)
    out["losses"]["emotion"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.backbone.stem[0].conv.weight.grad.abs().sum() > 0

    model.eval()
    names = ["logits", "boxes", "box_scores", "fallback"]
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(2, 3, size, size),), buffer, input_names=["images"], output_names=names,
                      dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue())
    images = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = model(images)
    got = session.run(None, {"images": images.numpy()})
    assert [tuple(g.shape) for g in got] == [(3, 7), (3, 0, 4), (3, 0), (3,)]
    for key, value in zip(names, got):
        torch.testing.assert_close(torch.from_numpy(value), expected[key], atol=1e-3, rtol=1e-3)


def test_the_mobilefacenet_classifier_normalises_its_pooled_features_so_a_fresh_head_starts_near_uniform():
    """Pretrained MobileFaceNet's pooled C5 (its GDConv output) is ~600x MobileNetV2's in scale; without feature_norm
    a fresh linear head starts with logits of std ~10 or more, with it near uniform probabilities."""
    torch.manual_seed(0)
    images = torch.randn(8, 3, 112, 112)
    spread = {}
    for norm in (True, False):
        # batch statistics in the backbone (not frozen), so that random weights give features of unit scale
        model = build_model({"name": "classifier_mobilefacenet", "pretrained": False, "feature_norm": norm,
                             "frozen_bn": False})
        last = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)][-1]
        with torch.no_grad():
            last.weight.mul_(600.0)  # the scale of the pretrained network's pooled features
            model.train()
            spread[norm] = model(images)["logits"].std().item()
    assert isinstance(build_model({"name": "classifier_mobilefacenet", "pretrained": False}).feature_norm,
                      torch.nn.BatchNorm1d)
    assert isinstance(build_model({"name": "classifier_mobilenetv2", "pretrained": False}).feature_norm,
                      torch.nn.Identity)
    assert spread[True] < 2.0 < 10 * spread[True] < spread[False]


@pytest.mark.parametrize("frozen", [True, False])
def test_frozen_bn_keeps_the_backbones_statistics_through_training_steps(frozen):
    """MobileFaceNet's batch-norm statistics are recovered from its folded graph; frozen (its registry default) they
    stay as converted while the head's own BatchNorm1d and every weight still learn."""
    torch.manual_seed(0)
    model = build_model({"name": "classifier_mobilefacenet", "pretrained": False, "frozen_bn": frozen})
    assert build_model({"name": "classifier_mobilefacenet", "pretrained": False}).frozen_bn
    assert not build_model({"name": "classifier_mobilenetv2", "pretrained": False}).frozen_bn
    norms = [m for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    before = [m.running_mean.clone() for m in norms]
    head_before = model.feature_norm.running_mean.clone()
    weight_before = norms[0].weight.detach().clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):
        loss = model(torch.randn(4, 3, 112, 112), {"labels": torch.tensor([0, 1, 2, 3])})["losses"]["emotion"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    unchanged = [torch.equal(m.running_mean, b) for m, b in zip(norms, before)]
    assert all(unchanged) if frozen else not any(unchanged)
    assert all(not m.training for m in norms) == frozen and model.training and model.feature_norm.training
    assert not torch.equal(model.feature_norm.running_mean, head_before)
    assert not torch.equal(norms[0].weight, weight_before)  # the scale and shift still learn


def test_c5_pool_is_a_model_key_and_only_mobilefacenet_has_a_pool_of_its_own():
    pooled = build_model({"name": "classifier_mobilefacenet", "pretrained": False})
    assert isinstance(pooled.backbone.pool, torch.nn.Module)
    averaged = build_model({"name": "classifier_mobilefacenet", "pretrained": False, "c5_pool": "average",
                            "input_size": 64})
    assert averaged.backbone.pool is None and not any(k.startswith("backbone.pool.") for k in averaged.state_dict())
    with pytest.raises(MsferError, match="c5_pool='max': expected one of average, gdconv"):
        build_model({"name": "classifier_mobilefacenet", "pretrained": False, "c5_pool": "max"})
    with pytest.raises(MsferError, match="mobilenet_v2 backbone has no pooling of its own"):
        build_model({"name": "classifier_mobilenetv2", "pretrained": False, "c5_pool": "gdconv"})
    # the region network never pools C5 with it: no weight without a gradient
    region = build_model({"name": "msfer_mobilenetv2", "backbone": "mobilefacenet", "pretrained": False,
                          "region_source": "none", "input_size": 64})
    assert region.backbone.pool is None


def test_a_checkpoint_saved_before_a_model_key_existed_rebuilds_its_own_network(tmp_path):
    """A saved config spells out every key of its time: one written before c5_pool, frozen_bn and feature_norm
    rebuilds the averaged, unfrozen, unnormalised classifier it was trained as, not today's registry entry."""
    from msfer.model.checkpoint import load_model, save_checkpoint
    from msfer.model.registry import model_config, saved_config

    old = {key: value for key, value in model_config("classifier_mobilefacenet").items()
           if key not in ("c5_pool", "frozen_bn", "feature_norm")}
    trained = build_model({**old, "pretrained": False, "c5_pool": "average", "frozen_bn": False,
                           "feature_norm": False})
    assert saved_config(old) == {**old, "c5_pool": "average", "frozen_bn": False, "feature_norm": False}
    path = tmp_path / "old.pt"
    save_checkpoint({"model": trained.state_dict(), "config": {"model": old}, "classes": list(EMOTIONS)}, path)
    model, _ = load_model(path)
    assert model.backbone.pool is None and not model.frozen_bn and isinstance(model.feature_norm, torch.nn.Identity)
    region = {key: value for key, value in model_config("msfer_mobilenetv2").items() if key != "frozen_bn"}
    assert saved_config(region) == {**region, "frozen_bn": False}  # a region network has no c5_pool
