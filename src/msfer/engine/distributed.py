"""Data-parallel training with torch.distributed, launched by ``torchrun``.

``torchrun --nproc_per_node N -m msfer.cli train ...`` (or ``--nnodes``/``--rdzv-endpoint``
for several machines) sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous
variables; :func:`init_distributed` reads them (``env://``) and picks NCCL on CUDA and
gloo otherwise, so the same code runs as 2 CPU processes in a test. Without those
variables everything here degrades to one process.

Rules the engine follows: every rank sees a disjoint share of each epoch
(:class:`EpochSampler`); evaluation predictions are gathered from all ranks so metrics
are over the whole split; only rank 0 writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> DistInfo:
    """Join the process group described by torchrun's environment variables (no-op without them)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, init_method="env://")
    return info


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_gather_objects(value: Any, info: DistInfo) -> list[Any]:
    """``[value of rank 0, value of rank 1, ...]`` on every rank (``[value]`` without DDP)."""
    if not info.enabled:
        return [value]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def mean_over_ranks(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Element-wise mean of a tensor across ranks (for logged training statistics)."""
    if info.enabled:
        values = values.clone()
        dist.all_reduce(values)
        values /= info.world_size
    return values


class EpochSampler(Sampler[int]):
    """The training order of one epoch, split across ranks; one sampler for every case.

    Each epoch draws, from a generator seeded with ``seed + epoch`` (identical on all
    ranks), either a permutation of the dataset or, with ``weights``, ``len(weights)``
    indices with replacement in proportion to them (class-balanced sampling). Rank ``r``
    takes every ``world_size``-th index starting at ``r``, the list padded by wrapping so
    that all ranks run the same number of steps. Because the order depends only on the
    seed and the epoch, a run resumed at an epoch boundary sees exactly the same batches.

    With ``groups`` (several training sets concatenated: ``[(size, share), ...]`` in dataset
    order, the sizes summing to ``size``) each epoch still has ``size`` draws, of which group
    ``g`` gets exactly ``share_g * size`` (rounded by largest remainder): a group smaller than
    its count repeats whole shuffled passes over itself and then part of one, a larger one gives
    a random part of itself, or with ``weights`` its count is drawn with replacement in
    proportion to its weights (class-balanced within the group). The draws are then shuffled.
    """

    def __init__(self, size: int, seed: int, info: DistInfo = DistInfo(), weights: np.ndarray | None = None,
                 groups: list[tuple[int, float]] | None = None) -> None:
        self.size = size
        self.seed = seed
        self.info = info
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.double)
        self.epoch = 0
        self.groups = groups
        if groups is not None:
            if sum(n for n, _ in groups) != size or any(n < 1 for n, _ in groups):
                raise ValueError(f"groups {groups} must be non-empty and add up to the size {size}")
            if abs(sum(share for _, share in groups) - 1) > 1e-9:
                raise ValueError(f"the shares of groups {groups} must sum to 1")

    def group_counts(self) -> list[int]:
        """How many of an epoch's draws each group gets (exact shares, largest remainder)."""
        assert self.groups is not None
        exact = np.array([share * self.size for _, share in self.groups])
        counts = np.floor(exact).astype(int)
        for g in np.argsort(-(exact - counts), kind="stable")[: self.size - counts.sum()]:
            counts[g] += 1
        return counts.tolist()

    def _mixture(self, generator: torch.Generator) -> torch.Tensor:
        parts, start = [], 0
        for (group_size, _), count in zip(self.groups, self.group_counts()):
            if self.weights is not None:
                drawn = torch.multinomial(self.weights[start : start + group_size], count, replacement=True,
                                          generator=generator)
            else:
                passes = [torch.randperm(group_size, generator=generator) for _ in range(-(-count // group_size))]
                drawn = torch.cat(passes)[:count] if passes else torch.zeros(0, dtype=torch.long)
            parts.append(drawn + start)
            start += group_size
        order = torch.cat(parts)
        return order[torch.randperm(len(order), generator=generator)]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return -(-self.size // self.info.world_size)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.groups is not None:
            order = self._mixture(generator)
        elif self.weights is None:
            order = torch.randperm(self.size, generator=generator)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
        total = len(self) * self.info.world_size
        order = torch.cat([order, order[: total - self.size]])
        return iter(order[self.info.rank :: self.info.world_size].tolist())


def shard_indices(size: int, info: DistInfo) -> list[int]:
    """This rank's share of an evaluation split: every ``world_size``-th sample.

    No padding, so no sample is counted twice in the metrics.
    """
    return list(range(info.rank, size, info.world_size))
