"""Self-describing checkpoints: everything needed to rebuild, use or resume a model is in the file.

Contents (see DEVELOPING.md): ``model`` (state dict), ``config`` (the run's full merged
config; ``config["model"]`` rebuilds the network), ``classes``, ``input_size``, ``mean``,
``std``, ``region_names``, ``metrics``, ``msfer_version``; a training checkpoint adds
``optimizer``, ``scheduler``, ``scaler``, ``ema``, ``epoch`` and ``rng``.

When the run kept an exponential moving average of the weights, ``ema`` holds it and it is
the set that was validated and selected, so :func:`model_state` (and therefore
:func:`load_model` and :func:`export_weights`) use it.

Files are written to a temporary name in the same folder and moved into place with
``os.replace``: an interrupted write never leaves a truncated ``last.pt`` behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._version import __version__
from ..errors import MsferError
from ..labels import EMOTIONS


def describe(model: torch.nn.Module, config: dict, metrics: dict | None = None) -> dict[str, Any]:
    """The metadata every checkpoint carries, taken from the model itself."""
    return {
        "config": config,
        "classes": list(EMOTIONS),
        "input_size": int(model.input_size),
        "mean": list(model.mean),
        "std": list(model.std),
        "region_names": list(model.region_names),
        "metrics": metrics or {},
        "msfer_version": __version__,
    }


def save_checkpoint(checkpoint: dict[str, Any], path: str | Path) -> Path:
    """Write ``checkpoint`` to ``path`` atomically (temporary file, then ``os.replace``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, path)
    return path


def resolve_checkpoint(path: str | Path, prefer: str = "last.pt") -> Path:
    """``path`` itself if it is a file, else ``path/prefer`` (a run directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / prefer
    if not path.is_file():
        raise MsferError(f"checkpoint {path} does not exist")
    return path


def load_checkpoint(path: str | Path, prefer: str = "last.pt") -> dict[str, Any]:
    """Read a checkpoint (a file, or a run directory's ``prefer`` file) onto the CPU."""
    path = resolve_checkpoint(path, prefer)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise MsferError(f"cannot read checkpoint {path}: {error}") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint or "config" not in checkpoint:
        raise MsferError(f"{path} is not an msfer checkpoint (no model state and config inside)")
    return checkpoint


def model_state(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The weights that were validated: the EMA if the run kept one, else the model's."""
    return checkpoint.get("ema") or checkpoint["model"]


def load_model(path: str | Path, device: str | torch.device = "cpu", model_overrides: dict | None = None) -> tuple[torch.nn.Module, dict]:
    """Rebuild the model from the file alone; return ``(model in eval mode, metadata)``.

    Half-precision weights (an exported file) are upcast to float32. ``model_overrides``
    changes model config keys that alter no weight, e.g. ``{"region_source": "pseudo"}``
    to run a learned-detector model on pseudo-label regions: weights the rebuilt model
    has no place for (the detector's) are then dropped, but a missing weight is an error.
    """
    from ..model import build_model

    checkpoint = load_checkpoint(path, prefer="best.pt")
    model_config = {**checkpoint["config"]["model"], **(model_overrides or {})}
    model = build_model({**model_config, "pretrained": False})  # the file's weights replace any initialisation
    state = {k: v.float() if v.is_floating_point() else v for k, v in model_state(checkpoint).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=not model_overrides)
    except RuntimeError as error:  # shapes or names differ: a file from another msfer version or a damaged one
        raise MsferError(f"checkpoint {path} does not match the model its config describes: {str(error)[:300]}") from None
    if missing:
        raise MsferError(f"checkpoint {path} lacks weights the model needs: {', '.join(missing[:5])}")
    metadata = {key: value for key, value in checkpoint.items() if key not in ("model", "ema", "optimizer", "scheduler", "scaler", "rng")}
    return model.to(device).eval(), metadata


def export_weights(checkpoint_path: str | Path, out: str | Path, half: bool = True) -> Path:
    """Write a slim inference file: the selected weights (fp16 if ``half``) and the metadata, no training state."""
    checkpoint = load_checkpoint(checkpoint_path, prefer="best.pt")
    state = {k: v.half() if half and v.is_floating_point() else v for k, v in model_state(checkpoint).items()}
    slim = {key: value for key, value in checkpoint.items() if key not in ("ema", "optimizer", "scheduler", "scaler", "rng", "epoch")}
    slim["model"] = state
    return save_checkpoint(slim, out)
