"""Self-describing checkpoints: everything needed to rebuild, use or resume a model is in the file.

Contents (see DEVELOPING.md): ``model`` (state dict), ``config`` (the run's full merged
config; ``config["model"]`` rebuilds the network), ``classes``, ``input_size``, ``mean``,
``std``, ``region_names``, ``crop_rule`` (how faces are cropped from photos for this model,
:class:`msfer.faces.crop.CropRule` as ``{"method", "scale"}``; files without it are read as
box at scale 1.0, :func:`crop_rule`), ``metrics``, ``msfer_version``; a training checkpoint adds
``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``epoch`` and ``rng``.

When the run kept an exponential moving average of the weights, ``ema`` holds it and it is
the set that was validated and selected, so :func:`model_state` (and therefore
:func:`load_model` and :func:`export_weights`) use it.

Files are written to a temporary name in the same folder and moved into place with
``os.replace``: an interrupted write never leaves a truncated ``last.pt`` behind.

Checkpoints hold only tensors and plain data (dicts, lists, tuples, str, int, float, bool,
None) and are read with ``torch.load(weights_only=True)``: a file carrying any other pickled
object (which could run code while it is read) is refused with an :class:`MsferError` naming
it. :func:`load_checkpoint` is the one reader every command uses; :func:`save_checkpoint`
refuses to write what it could not read back.
"""
from __future__ import annotations

import contextlib
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..errors import MsferError
from ..faces.crop import CropRule
from ..files import write_atomic
from ..labels import EMOTIONS, check_classes


def describe(model: torch.nn.Module, config: dict, metrics: dict | None = None) -> dict[str, Any]:
    """The metadata every checkpoint carries, taken from the model itself (and its crop rule from the
    config's ``data.crop_rule``; default box at scale 1.0)."""
    return {
        "config": config,
        "classes": list(EMOTIONS),
        "input_size": int(model.input_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "region_names": list(model.region_names),
        "crop_rule": CropRule.from_dict((config.get("data") or {}).get("crop_rule")).to_dict(),
        "metrics": metrics or {},
        "msfer_version": __version__,
    }


def crop_rule(metadata: dict[str, Any]) -> CropRule:
    """The crop rule a checkpoint's metadata records; checkpoints written before v2 recorded none and
    were trained on crops framed as box at scale 1.0, which is what they get."""
    return CropRule.from_dict(metadata.get("crop_rule"))


def plain(value: Any, where: str = "checkpoint") -> Any:
    """``value`` with numpy scalars and arrays turned into Python numbers and lists.

    What remains must be what ``torch.load(weights_only=True)`` reads back: tensors, dicts,
    lists, tuples, str, int, float, bool, None (plus torch dtypes and sizes). Anything else
    raises ``TypeError`` naming where it is (a programming error, never a user's). Containers
    with nothing to convert are returned as they are (a state dict keeps its ``_metadata``).
    """
    if isinstance(value, np.ndarray | np.generic):  # first: numpy.float64 is also a float
        return value.tolist()
    if isinstance(value, torch.Tensor | str | bytes | bool | int | float | type(None) | torch.dtype | torch.Size):
        return value
    if isinstance(value, dict):
        items = {key: plain(item, f"{where}[{key!r}]") for key, item in value.items()}
        return value if all(items[key] is item for key, item in value.items()) else type(value)(items)
    if isinstance(value, list | tuple):
        converted = [plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
        return value if all(a is b for a, b in zip(converted, value)) else type(value)(converted)
    raise TypeError(f"{where} is a {type(value).__name__}: a checkpoint holds only tensors and plain data")


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then ``os.replace``).

    Numpy values become plain numbers (:func:`plain`), so the file always loads with
    ``weights_only=True``. Raises :class:`MsferError` naming ``path`` when it cannot be written.
    """
    checkpoint = plain(checkpoint)
    return write_atomic(path, lambda handle: torch.save(checkpoint, handle))


def file_model_name(path: str | Path) -> str:
    """The name a model file goes by where none was given: a folder's own name (a run's or a bundle's), its run
    folder's for ``best.pt``/``last.pt`` (``runs/v3/last.pt`` -> ``v3``), else the file's stem."""
    path = Path(path)
    if path.is_dir():
        return path.resolve().name or str(path)
    if path.stem in ("best", "last"):
        return path.resolve().parent.name or path.stem
    return path.stem


def resolve_checkpoint(path: str | Path, prefer: str = "last.pt") -> Path:
    """``path`` itself if it is a file, else ``path/prefer`` (a run directory), or the model a folder written by
    ``msfer bundle`` holds (``msfer_fer2013.pt``) where it has no ``prefer``."""
    from ..weights import BUNDLED_MODEL

    path = Path(path)
    if path.is_dir() and not (path / prefer).is_file() and (path / BUNDLED_MODEL.name).is_file():
        return path / BUNDLED_MODEL.name  # a folder msfer bundle wrote
    if path.is_dir():
        run_dir, path = path, path / prefer
        if not path.is_file() and prefer == "last.pt":
            raise MsferError(f"{run_dir} holds no last.pt: no epoch of a run there was saved, so there is nothing "
                             f"to resume; start the run again with --config FILE --output-dir {run_dir} --overwrite")
        if not path.is_file():
            raise MsferError(f"{run_dir} holds no {prefer}: no validated epoch of a run there has been saved yet")
    if not path.is_file():
        raise MsferError(f"checkpoint {path} does not exist")
    return path


# What the numpy RNG state of checkpoints written before msfer stored it as a tensor needs
# (a uint32 array). Only array reconstruction: its elements still go through the
# weights-only unpickler, so no other object can come in through it.
_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
_LEGACY_NUMPY_GLOBALS = [_multiarray._reconstruct, (_multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
                         np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _allow_legacy_numpy():
    # torch.serialization.safe_globals exists from torch 2.5; before it, such old files are refused.
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals(_LEGACY_NUMPY_GLOBALS) if safe_globals else contextlib.nullcontext()


def load_checkpoint(path: str | Path, prefer: str = "last.pt") -> dict[str, Any]:
    """Read a checkpoint (a file, or a run directory's ``prefer`` file) onto the CPU.

    Only tensors and plain data are read (``torch.load(weights_only=True)``). Raises
    :class:`MsferError` naming the file when it is missing, damaged, not an msfer
    checkpoint, or carries other pickled objects ("not a safe msfer checkpoint"): their
    code is never run. Model config keys younger than the file get the values that rebuild the network it
    was saved with (:func:`msfer.model.registry.saved_config`).
    """
    path = resolve_checkpoint(path, prefer)
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except OSError as error:
        raise MsferError(f"cannot read checkpoint {path}: {error.strerror or error}") from None
    if head[:1] == b"\x08":  # an ONNX model's first field
        raise MsferError(f"{path} is an ONNX export: this needs the .pt checkpoint it was exported from")
    if head[:2] != b"PK" and head[:1] != b"\x80":  # neither a zip (torch.save) nor a pickle (older files)
        raise MsferError(f"{path} is not an msfer model: a .pt checkpoint of msfer train or msfer bundle, or an "
                         ".onnx file of msfer export, is wanted, and this file is neither"
                         + (" (it is empty)" if not head else ""))
    try:
        with _allow_legacy_numpy():
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # the weights-only unpickler refused something, or the file is damaged
        message = str(error).split("WeightsUnpickler error:")[-1].strip()
        reason = message.splitlines()[0].split(" was not an allowed global")[0][:200] if message else ""
        # Its refusals of an object name the GLOBAL (the class or function) it would have had to import.
        what = ("it holds pickled Python objects besides tensors and plain data" if "GLOBAL" in message or "allowlisted"
                in message else "it is not made of tensors and plain data alone, or it is damaged")
        raise MsferError(f"{path} is not a safe msfer checkpoint: {what} ({reason}); msfer reads no other objects "
                         "from a model file, because reading them can run code") from None
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise MsferError(f"cannot read checkpoint {path}: it is damaged or not a PyTorch file "
                         f"({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise MsferError(f"{path} is not an msfer checkpoint (no model state and config inside)")
    if isinstance(checkpoint["config"].get("model"), dict):
        from .registry import saved_config

        checkpoint["config"]["model"] = saved_config(checkpoint["config"]["model"])
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights that were validated: the EMA if the run kept one, else the model's."""
    return checkpoint.get("ema") or checkpoint["model"]


def load_model(path: str | Path, device: str | torch.device = "cpu",
               model_overrides: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the file alone; return ``(model in eval mode, metadata)``.

    Raises :class:`MsferError` naming the file when its ``classes`` are not msfer's seven emotions in their order
    (:func:`msfer.labels.check_classes`). Half-precision weights (an exported file) are upcast to float32.
    ``model_overrides``
    changes model config keys that alter no weight, e.g. ``{"region_source": "pseudo"}``
    to run a learned-detector model on pseudo-label regions: weights the rebuilt model
    has no place for (the detector's) are then dropped, but a missing weight is an error.
    """
    from .registry import build_model

    checkpoint = load_checkpoint(path, prefer="best.pt")
    # Every command that runs a model reads it here: one that predicts other classes is refused by all alike.
    check_classes(checkpoint.get("classes"), str(resolve_checkpoint(path, prefer="best.pt")))
    model_config = {**checkpoint["config"]["model"], **(model_overrides or {})}
    model = build_model({**model_config, "pretrained": False})  # the file's weights replace any initialisation
    state = {k: v.float() if v.is_floating_point() else v for k, v in model_state(checkpoint).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=not model_overrides)
    except RuntimeError as error:  # shapes or names differ: a file from another msfer version or a damaged one
        raise MsferError(f"checkpoint {path} does not match the model its config describes: "
                         f"{str(error)[:300]}") from None
    if missing:
        raise MsferError(f"checkpoint {path} lacks weights the model needs: {', '.join(missing[:5])}")
    training_state = ("model", "ema", "optimizer", "scheduler", "scaler", "rng")
    metadata = {key: value for key, value in checkpoint.items() if key not in training_state}
    return model.to(device).eval(), metadata


def export_weights(checkpoint_path: str | Path, out: str | Path, half: bool = True) -> Path:
    """Write a slim inference file: the selected weights (fp16 if ``half``) and the metadata, no training state."""
    checkpoint = load_checkpoint(checkpoint_path, prefer="best.pt")
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in model_state(checkpoint).items()}
    training_state = ("ema", "optimizer", "scheduler", "scaler", "rng", "epoch")
    slim = {key: value for key, value in checkpoint.items() if key not in training_state}
    slim["model"] = state
    return save_checkpoint(slim, out)


def random_checkpoint(path: str | Path, name: str = "msfer_mobilenetv2", seed: int | None = None) -> Path:
    """Save the registered model ``name`` with untrained weights (drawn from ``seed`` when given) as a checkpoint
    at ``path``, as training saves one: what benchmarks measure where no trained model is at hand."""
    from .registry import build_model, resolve_config

    if seed is not None:
        torch.manual_seed(seed)
    # the registered config in full, as training saves it: a key missing from a saved config reads as a checkpoint
    # older than the key (registry.ADDED_KEYS)
    config = {"name": name, **resolve_config({"name": name, "pretrained": False})}
    model = build_model(config)
    return save_checkpoint({"model": model.state_dict(), **describe(model, {"model": config})}, path)
