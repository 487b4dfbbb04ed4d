"""Inference backends: the emotion network behind :class:`msfer.inference.recognizer.EmotionRecognizer`.

A backend takes face crops (numpy, N x S x S x 3 uint8 RGB) and gives their class probabilities (N x 7,
with test-time augmentation if asked) and region boxes (N x R x 4, crop pixels; R = 0 for a plain classifier):
:meth:`probabilities`, numpy in and out, one crossing into the backend's framework and one back. Called with
a normalised batch (N x 3 x S x S float32) it gives the network's logits and boxes. It says what its model
expects (:class:`ModelSpec`), its name, balanced decision offsets, calibration summary and crop rule.
:class:`TorchBackend` runs a checkpoint of ``msfer train`` in PyTorch, with the functions ``msfer evaluate`` uses
(the only backend that imports torch); :class:`OnnxBackend` an ``msfer export`` file in ONNX Runtime, with
numpy only.
:func:`load_backend` picks one for a model file.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.transforms import class_probabilities_array, model_input_array
from ..errors import MsferError
from ..faces.crop import CropRule
from ..labels import EMOTIONS, check_classes
from .export import ONNX_METADATA_KEYS, ONNX_OPTIONAL_KEYS, onnx_bytes


@dataclass(frozen=True)
class ModelSpec:
    """What preprocessing a classifier expects; read from the checkpoint or the ONNX metadata."""

    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    region_names: tuple[str, ...]

    def normalise(self, crops: np.ndarray) -> np.ndarray:
        """N x S x S x 3 uint8 RGB -> N x 3 x S x S float32 (:func:`msfer.data.transforms.model_input_array`)."""
        return model_input_array(crops, self.mean, self.std)


class TorchBackend:
    """Inference backend: the emotion network (region network or plain classifier) in PyTorch, from a checkpoint
    of ``msfer train``."""

    kind = "torch"  # as --backend names it

    def __init__(self, weights: Path, device: str) -> None:
        import torch

        from ..engine.calibration import calibration_summary
        from ..model.checkpoint import load_model

        self.torch = torch
        self.device = torch.device(device)
        self.model, meta = load_model(weights, self.device)
        self.model.eval()  # load_model refused a model of other classes
        self.spec = ModelSpec(int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                              tuple(meta["region_names"]))
        self.balanced_offsets = self.model.balanced_offsets.float().cpu().numpy().astype(np.float64)
        self.calibration = calibration_summary(meta.get("calibration"))
        self.crop_rule = CropRule.recorded(meta.get("crop_rule"), str(weights))
        self.name = checkpoint_name(meta, weights)

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N x 7) and region boxes (N x R x 4, input pixels; R = 0 for a plain classifier) of a normalised
        batch."""
        with self.torch.inference_mode():
            output = self.model(self.torch.from_numpy(batch).to(self.device))
        return output["logits"].float().cpu().numpy(), output["boxes"].float().cpu().numpy()

    def probabilities(self, crops: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N x 7) and region boxes (N x R x 4, crop pixels) of N x S x S x 3 uint8 crops, by
        :func:`msfer.data.transforms.model_input` and :func:`msfer.engine.augment.predict_probs` (with ``tta``
        the mean over each crop and its mirror), as ``msfer evaluate`` computes them."""
        from ..data.transforms import model_input
        from ..engine.augment import predict_probs

        with self.torch.inference_mode():
            images = model_input(crops, self.spec.mean, self.spec.std).to(self.device)
            probs, output = predict_probs(self.model, images, tta)
        return probs.float().cpu().numpy(), output["boxes"].float().cpu().numpy()


class OnnxBackend:
    """Inference backend: the emotion network in ONNX Runtime, from a file of ``msfer export`` (or its bytes)."""

    kind = "onnx"  # as --backend names it

    def __init__(self, model: Path | bytes, source: str, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        try:
            self.session = ort.InferenceSession(model if isinstance(model, bytes) else str(model), options,
                                                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own exception types
            raise MsferError(f"cannot load ONNX model {source}: {error}") from error
        metadata = self.session.get_modelmeta().custom_metadata_map
        missing = [key for key in ONNX_METADATA_KEYS if key not in metadata]
        if missing:
            raise MsferError(f"{source} lacks msfer's metadata {missing}: export it with 'msfer export'")
        meta = {key: json.loads(metadata[key]) for key in ONNX_METADATA_KEYS}
        check_classes(meta["classes"], source)
        self.spec = ModelSpec(int(meta["input_size"]), tuple(meta["mean"]), tuple(meta["std"]),
                              tuple(meta["region_names"]))
        optional = {key: json.loads(metadata[key]) if key in metadata else None for key in ONNX_OPTIONAL_KEYS}
        offsets = optional["balanced_offsets"]
        self.balanced_offsets = np.zeros(len(EMOTIONS)) if offsets is None else np.asarray(offsets, dtype=np.float64)
        if self.balanced_offsets.shape != (len(EMOTIONS),):
            raise MsferError(f"{source}: balanced_offsets in its metadata must be {len(EMOTIONS)} numbers")
        self.calibration = optional["calibration"]
        self.crop_rule = CropRule.recorded(optional["crop_rule"], source)
        self.name = str(optional["name"] or Path(source).stem)  # not checkpoint_name: msfer.model imports PyTorch
        self.input_name = self._check_graph(source)

    def _check_graph(self, source: str) -> str:
        """The name of the graph's input, once the graph is what its metadata says: one input of N x 3 x S x S
        float32 (S its ``input_size``), and outputs ``logits`` (N x 7) and ``boxes`` (N x R x 4, R its regions),
        as declared and as a one-image run gives them. Else one :class:`MsferError` naming ``source``: a file
        that lies about itself fails at load, not image by image or with records of the wrong width."""
        size, regions = self.spec.input_size, len(self.spec.region_names)

        def refuse(why: str) -> MsferError:
            return MsferError(f"{source} is not a model msfer can run: {why} (export it with 'msfer export')")

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise refuse(f"its graph takes {len(inputs)} inputs, not one batch of images")
        declared = list(inputs[0].shape)
        expected = ["N", 3, size, size]
        if inputs[0].type != "tensor(float)" or len(declared) != 4 or any(
                isinstance(have, int) and have != want for have, want in zip(declared[1:], expected[1:])):
            raise refuse(f"its input is {inputs[0].type} {_shape_text(declared)}, but its metadata says "
                         f"float {_shape_text(expected)} (input_size {size})")
        outputs = {output.name: list(output.shape) for output in self.session.get_outputs()}
        wanted = {"logits": ["N", len(EMOTIONS)], "boxes": ["N", regions, 4]}
        for name, shape in wanted.items():
            if name not in outputs:
                raise refuse(f"its graph has no output {name!r} (its outputs: {', '.join(outputs) or 'none'})")
            have = outputs[name]
            if len(have) != len(shape) or any(isinstance(h, int) and h != w for h, w in zip(have[1:], shape[1:])):
                raise refuse(f"its output {name!r} is {_shape_text(have)}, not {_shape_text(shape)} "
                             f"({len(EMOTIONS)} emotions, {regions} regions)")
        try:  # what the declared shapes leave open (named or missing dimensions), one image tells
            logits, boxes = self.session.run(["logits", "boxes"],
                                             {inputs[0].name: np.zeros((1, 3, size, size), np.float32)})
        except Exception as error:  # onnxruntime raises its own exception types
            detail = f"{type(error).__name__}: {str(error)[:200]}"
            raise refuse(f"it fails on one {size} x {size} image ({detail})") from None
        for name, array, shape in (("logits", logits, (1, len(EMOTIONS))), ("boxes", boxes, (1, regions, 4))):
            if np.shape(array) != shape:
                raise refuse(f"its output {name!r} for one image is {_shape_text(list(np.shape(array)))}, not "
                             f"{_shape_text(list(shape))} ({len(EMOTIONS)} emotions, {regions} regions)")
        return inputs[0].name

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits (N x 7) and region boxes (N x R x 4, input pixels) of a normalised batch."""
        logits, boxes = self.session.run(["logits", "boxes"], {self.input_name: batch})
        return logits, boxes

    def probabilities(self, crops: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`TorchBackend.probabilities` in numpy (:mod:`msfer.data.transforms`' array functions)."""
        batch = self.spec.normalise(crops)
        logits, boxes = self(batch)
        mirrored = self(np.ascontiguousarray(batch[..., ::-1]))[0] if tta else None
        return class_probabilities_array(logits, mirrored), boxes


def checkpoint_name(meta: dict, weights: str | os.PathLike) -> str:
    """A model's name: the one ``msfer bundle`` gave it (its checkpoint's ``name``), else the name its path goes
    by (:func:`msfer.model.checkpoint.file_model_name`)."""
    from ..model.checkpoint import file_model_name

    return str(meta.get("name") or file_model_name(weights))


def _shape_text(shape: list) -> str:
    """``[N, 3, 112, 112]`` as ``N x 3 x 112 x 112`` (a named or unknown dimension as its name or ``?``)."""
    return " x ".join("?" if dim is None else str(dim) for dim in shape) or "a scalar"


def is_onnx_file(weights: str | os.PathLike | None) -> bool:
    """Whether ``weights`` names an ONNX file: by its extension (any case), else by its first byte, the tag of an
    ONNX model's first field (``ir_version``: 0x08); a PyTorch checkpoint begins with a zip (``PK``) or pickle
    (0x80) header."""
    if weights is None:
        return False
    if Path(weights).suffix.lower() == ".onnx":
        return True
    try:
        with open(weights, "rb") as handle:
            return handle.read(1) == b"\x08"
    except OSError:  # a folder (a run directory), a missing file: the loader says what it is
        return False


def backend_for(weights: str | os.PathLike | None, backend: str | None = None) -> str:
    """The backend that runs ``weights``: ``backend`` when given, else by the file (``"onnx"`` for an ``.onnx``
    file, ``"torch"`` for a checkpoint, a run directory or the bundled model). An ONNX file cannot run in PyTorch:
    ``backend="torch"`` with one is a :class:`MsferError`."""
    if backend is None:
        return "onnx" if is_onnx_file(weights) else "torch"
    if backend not in ("torch", "onnx"):
        raise MsferError(f"unknown backend {backend!r}: use 'torch' or 'onnx'")
    if backend == "torch" and is_onnx_file(weights):
        raise MsferError(f"{weights} is an ONNX model, which runs in ONNX Runtime, not PyTorch: drop --backend torch "
                         "(an .onnx file picks the onnx backend itself)")
    return backend


def load_backend(weights: str | os.PathLike | None, device: str = "cpu", backend: str | None = None):
    """The inference backend (:class:`TorchBackend` or :class:`OnnxBackend`) for ``weights``.

    ``weights`` defaults to the bundled model.

    ``weights`` is a ``.pt`` checkpoint, a run directory of ``msfer train`` (its best.pt) or an ``.onnx`` export.

    ``backend`` None picks it by the file (:func:`backend_for`); ``backend="onnx"`` with a ``.pt`` checkpoint
    exports it to ONNX in memory first.
    """
    from ..weights import default_weights_path

    path = Path(weights) if weights is not None else default_weights_path()
    if not path.exists():
        raise MsferError(f"model file {path} does not exist")
    backend = backend_for(path, backend)
    if is_onnx_file(path):
        return OnnxBackend(path, str(path))
    if backend == "onnx":
        torch_backend = TorchBackend(path, "cpu")
        return OnnxBackend(onnx_bytes(torch_backend.model, path, calibration=torch_backend.calibration,
                                      crop_rule=torch_backend.crop_rule.to_dict(), name=torch_backend.name),
                           f"{path} (exported to ONNX)")
    return TorchBackend(path, device)
