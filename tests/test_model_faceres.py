"""The face-pretrained backbone ``faceres``: TensorFlow's SAME padding, the weight-manifest reader, the
registry's input-scale rule, and (when the converted file exists) the port against the original's output."""
import importlib.util
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from msfer.data.images import load_rgb_array
from msfer.data.transforms import model_input, resize_square
from msfer.errors import MsferError
from msfer.model import build_model
from msfer.model.backbones import build_backbone
from msfer.model.mobilenet_v1 import FACERES_MEAN, FACERES_STD, MobileNetV1, SamePad
from msfer.model.pretrained import face_weights_path

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).parent / "data" / "faceres_reference.json"


def converter():
    script = ROOT / "scripts" / "convert_face_backbone.py"
    spec = importlib.util.spec_from_file_location("convert_face_backbone", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("side, stride, expected", [(8, 2, (0, 1)), (7, 2, (1, 1)), (8, 1, (1, 1)), (1, 2, (1, 1))])
def test_same_pad_is_tensorflows(side, stride, expected):
    # TensorFlow: out = ceil(side / stride), total = (out - 1) * stride + 3 - side, the odd pixel after
    assert SamePad(3, stride)._pads(side) == expected
    x = torch.randn(1, 1, side, side)
    y = F.conv2d(SamePad(3, stride)(x), torch.ones(1, 1, 3, 3), stride=stride)
    assert y.shape[-1] == -(-side // stride)


def test_stride_two_pads_only_bottom_right_on_even_sides():
    # a delta at the top-left pixel: with TensorFlow's padding the first output sees it at kernel tap (0, 0)
    x = torch.zeros(1, 1, 4, 4)
    x[..., 0, 0] = 1
    kernel = torch.arange(9.0).reshape(1, 1, 3, 3)
    y = F.conv2d(SamePad(3, 2)(x), kernel, stride=2)
    assert y[0, 0, 0, 0] == 0  # PyTorch's symmetric padding=1 would give kernel[1, 1] = 4
    assert F.conv2d(x, kernel, stride=2, padding=1)[0, 0, 0, 0] == 4


def test_tfjs_manifest_reader_dequantises(tmp_path):
    values = np.array([0.5, -1.25, 3.0], np.float32)
    quantised = np.array([0, 128, 255], np.uint8)
    (tmp_path / "w.bin").write_bytes(values.astype(np.float16).tobytes() + quantised.tobytes()
                                     + np.array([7], np.float32).tobytes())
    manifest = {"weightsManifest": [{"paths": ["w.bin"], "weights": [
        {"name": "half", "shape": [3], "dtype": "float32", "quantization": {"dtype": "float16"}},
        {"name": "byte", "shape": [3, 1], "dtype": "float32", "quantization": {"dtype": "uint8", "scale": 0.5,
                                                                                "min": -1.0}},
        {"name": "plain", "shape": [], "dtype": "float32"}]}]}
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    weights = converter().read_tfjs_weights(tmp_path / "m.json")
    np.testing.assert_array_equal(weights["half"], values)
    np.testing.assert_array_equal(weights["byte"], [[-1.0], [63.0], [126.5]])
    assert weights["plain"] == 7 and weights["byte"].dtype == np.float32


def test_backbone_taps_at_112_px():
    backbone = build_backbone("faceres", pretrained=False).eval()
    with torch.no_grad():
        c = backbone(torch.randn(1, 3, 112, 112))
    assert {k: tuple(v.shape) for k, v in c.items()} == {"c3": (1, 256, 14, 14), "c4": (1, 512, 7, 7),
                                                        "c5": (1, 1024, 4, 4)}


def test_pretrained_faceres_needs_its_input_scale():
    with pytest.raises(MsferError, match="msfer_faceres"):
        build_model({"name": "msfer_mobilenetv2", "backbone": "faceres"})
    with pytest.raises(MsferError, match="ImageNet"):
        build_model({"name": "msfer_faceres", "backbone": "mobilenet_v2"})
    # without pretrained weights any scale is the user's choice
    build_model({"name": "msfer_mobilenetv2", "backbone": "faceres", "pretrained": False, "input_size": 64})


def test_missing_converted_file_names_it_and_the_command(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(MsferError, match=r"msfer_faceres_mobilenetv1\.pth.*convert_face_backbone\.py"):
        build_backbone("faceres", pretrained=True)


def test_a_file_that_is_not_the_state_dict_is_named(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = face_weights_path("faceres", must_exist=False)
    path.parent.mkdir(parents=True)
    torch.save({"something": torch.zeros(1)}, path)
    with pytest.raises(MsferError, match="not a converted faceres state dict"):
        build_backbone("faceres", pretrained=True)


def converted_or_skip() -> Path:
    path = face_weights_path("faceres", must_exist=False)
    if not path.is_file():
        pytest.skip(f"{path} is absent: make it with 'python scripts/convert_face_backbone.py' (needs node and npm)")
    return path


def test_port_reproduces_the_originals_embedding():
    """The converted file through MobileNetV1 gives the embedding TensorFlow.js gave on the same face."""
    path = converted_or_skip()
    reference = json.loads(REFERENCE.read_text())
    x1, y1, x2, y2 = reference["box"]
    crop = resize_square(load_rgb_array(ROOT / "src" / "msfer" / reference["image"].split("src/msfer/")[1])
                         [y1:y2, x1:x2].copy(), reference["size"])
    net = MobileNetV1().eval()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    with torch.no_grad():  # msfer's own preprocessing with the model's mean/std: the original's input scale
        got = net.embedding(model_input(crop[None], FACERES_MEAN, FACERES_STD))[0].numpy()
    expected = np.array(reference["embedding"], np.float32)
    assert np.abs(got - expected).max() / np.abs(expected).max() < 1e-4


@pytest.mark.parametrize("name", ["msfer_faceres", "classifier_faceres"])
def test_faceres_models_train_and_export_to_onnx(name):
    """Batch 2 forward/backward and an ONNX export that matches; with the converted weights when present.
    56 px makes a stride-2 layer meet an odd side (7 px), where TensorFlow's padding is uneven."""
    ort = pytest.importorskip("onnxruntime")
    pretrained = face_weights_path("faceres", must_exist=False).is_file()
    torch.manual_seed(0)
    model = build_model({"name": name, "pretrained": pretrained, "input_size": 56} if name.startswith("classifier")
                        else {"name": name, "pretrained": pretrained, "input_size": 56, "proposals_per_level": 8})
    model.train()
    regions = len(model.region_names)
    rel = torch.tensor([[0.05, 0.05, 0.95, 0.95], [0.22, 0.35, 0.45, 0.52], [0.55, 0.35, 0.78, 0.52],
                        [0.38, 0.48, 0.62, 0.72], [0.3, 0.72, 0.7, 0.9]])
    targets = {"labels": torch.tensor([3, 6]), "boxes": (rel[:regions] * 56).expand(2, regions, 4).clone(),
               "box_valid": torch.ones(2, regions, dtype=torch.bool)}
    out = model(torch.randn(2, 3, 56, 56) * 60, targets)
    sum(out["losses"].values()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert model.backbone.stem[0].conv.weight.grad.abs().sum() > 0

    model.eval()
    if regions:  # spread the untrained region scores: near-ties would let rounding flip a region's argmax
        torch.nn.init.normal_(model.detector.class_logits.weight, std=3.0)
    names = ["logits", "boxes", "box_scores", "fallback"]
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.randn(2, 3, 56, 56),), buffer, input_names=["images"], output_names=names,
                      dynamic_axes={"images": {0: "batch"}}, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue())
    images = torch.randn(3, 3, 56, 56) * 60
    with torch.no_grad():
        expected = model(images)
    for key, got in zip(names, session.run(None, {"images": images.numpy()})):
        torch.testing.assert_close(torch.from_numpy(got), expected[key], atol=1e-3, rtol=1e-3)
