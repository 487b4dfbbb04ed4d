"""Where and how a run computes: the device, mixed precision, and the random number generators.

The RNG states are saved in every checkpoint and restored on resume (:func:`rng_states`,
:func:`restore_rng_states`), so a resumed run draws the same numbers as one that never stopped.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from ..errors import MsferError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MsferError(f"device {name!r} asked for, but CUDA is not available here (use --device cpu)")
    return torch.device(name)


def autocast(device: torch.device, amp: str | bool):
    """bf16/fp16 autocast on CUDA when ``amp`` names one; a no-op context otherwise."""
    enabled = bool(amp) and device.type == "cuda"
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=enabled)


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_states() -> dict[str, Any]:
    """The global RNG states, in the plain types a weights-only checkpoint holds (lists, ints, tensors)."""
    version, internal, gauss = random.getstate()
    _, key, position, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    return {
        "python": [version, list(internal), gauss],
        # The Mersenne Twister key is uint32: int64 holds every value exactly.
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss),
                  "gauss": float(cached_gaussian)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_states(states: dict[str, Any]) -> None:
    """Set the states :func:`rng_states` saved (also the tuple-and-array form of older checkpoints)."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = states["numpy"]
    if isinstance(numpy_state, dict):
        numpy_state = ("MT19937", numpy_state["key"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["gauss"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def epoch_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. seed, epoch, rank)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(2, np.uint64)[0] >> np.uint64(1))
