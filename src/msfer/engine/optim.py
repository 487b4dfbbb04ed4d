"""Optimisation of a run: the optimizer's parameter groups, the learning-rate schedules, the weight average.

Library parts where they are equivalent: the weight average is torch's ``AveragedModel``, the
schedules are torch's, joined by ``SequentialLR``.
"""
from __future__ import annotations

import warnings
from typing import Any

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    OneCycleLR,
    SequentialLR,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from ..errors import MsferError
from .config import Config


def build_optimizer(model: torch.nn.Module, train: Config) -> torch.optim.Optimizer:
    """The optimizer of ``train`` (the config section) over ``model``'s trainable parameters.

    No weight decay on biases and normalisation parameters (as timm and torchvision's recipes).
    """
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": train["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if train["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=train["lr"], momentum=train["momentum"], nesterov=True)
    optimizer_class = torch.optim.AdamW if train["optimizer"] == "adamw" else torch.optim.Adam
    return optimizer_class(groups, lr=train["lr"])


def ema_model(model: torch.nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of ``model``'s weights and floating-point buffers, kept as a model.

    torch's :class:`~torch.optim.swa_utils.AveragedModel` with :func:`~torch.optim.swa_utils.get_ema_multi_avg_fn`:
    after each ``update_parameters(model)``, ``average = decay * average + (1 - decay) * model``. It starts
    as a copy of ``model`` (AveragedModel copies at its first update, which is done here). Integer buffers
    (BatchNorm's step counters) are copied, not averaged. ``.module`` is the averaged network.
    """
    average = get_ema_multi_avg_fn(decay)

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        if averaged[0].is_floating_point():
            average(averaged, current, count)
        else:  # torch's EMA would average the counters and truncate them
            for target, value in zip(averaged, current):
                target.copy_(value)

    ema = AveragedModel(model, multi_avg_fn=update, use_buffers=True)
    ema.update_parameters(model)
    return ema.requires_grad_(False)


def build_scheduler(optimizer: torch.optim.Optimizer, train: Config, steps_per_epoch: int) -> LRScheduler:
    """The learning-rate schedule of ``train`` (the config section), stepped once per batch.

    ``onecycle``: :class:`~torch.optim.lr_scheduler.OneCycleLR` with ``warmup_epochs`` as its rising phase.
    ``cosine`` and ``none``: a linear warm-up from 1% to 100% of ``train.lr`` over ``warmup_epochs``
    (:class:`~torch.optim.lr_scheduler.LinearLR`), then cosine decay to 0 by the last step
    (:class:`~torch.optim.lr_scheduler.CosineAnnealingLR`) or constant, joined by
    :class:`~torch.optim.lr_scheduler.SequentialLR`.
    """
    total = train["epochs"] * steps_per_epoch
    warmup = int(train["warmup_epochs"] * steps_per_epoch)
    if train["schedule"] == "onecycle":
        # At least 1% of the steps and at least 2: OneCycleLR divides by (pct_start * total - 1), zero for
        # exactly one rising step (a short run, or 1% of 100 steps without warm-up)
        return OneCycleLR(optimizer, max_lr=train["lr"], total_steps=total,
                          pct_start=min(max(warmup, round(0.01 * total), 2) / total, 0.99))
    if train["schedule"] == "cosine":
        after = CosineAnnealingLR(optimizer, T_max=max(total - warmup, 1))
    else:
        after = ConstantLR(optimizer, factor=1.0, total_iters=0)
    if warmup == 0:
        return after
    ramp = LinearLR(optimizer, start_factor=0.01, end_factor=1.0, total_iters=warmup)
    return SequentialLR(optimizer, [ramp, after], milestones=[warmup])


def restore_scheduler(scheduler: LRScheduler, train: Config, steps_per_epoch: int,
                      state: dict[str, Any]) -> LRScheduler:
    """``scheduler`` (of :func:`build_scheduler`) moved to the step a checkpoint's ``state`` was saved at.

    Call it after the optimizer's state is loaded: the optimizer holds the current rate, which the
    chained schedulers (warm-up, cosine) step from. ``state`` is the scheduler's ``state_dict()``. The
    cosine and constant schedules were once a ``LambdaLR``; such a state is replayed step by step from
    the start, which gives the same rates. Returns the scheduler to use from now on.
    """
    if "lr_lambdas" not in state or isinstance(scheduler, LambdaLR):
        scheduler.load_state_dict(state)
        return scheduler
    optimizer = scheduler.optimizer
    for group in optimizer.param_groups:  # back to the start of the schedule, then forward
        group["lr"] = group["initial_lr"]
    scheduler = build_scheduler(optimizer, train, steps_per_epoch)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "lr_scheduler.step() before optimizer.step()": no training step is due
        for _ in range(state["last_epoch"]):
            scheduler.step()
    return scheduler


# What fixes the shape of the learning-rate schedule: a resumed run must keep it (the saved scheduler
# state holds the old shape). train.epochs only matters when the schedule ends somewhere.
SCHEDULE_KEYS = ("schedule", "warmup_epochs", "epochs")


def check_schedule_unchanged(train: Config, saved: Config) -> None:
    """Refuse a resumed run whose ``train`` section changes the shape of the schedule ``saved`` planned."""
    for key in SCHEDULE_KEYS:
        if key == "epochs" and train["schedule"] == "none":
            continue  # a constant rate after the warm-up may run for more epochs
        if train[key] != saved.get(key, train[key]):
            raise MsferError(f"train.{key}={train[key]!r}: the learning-rate schedule cannot change in a resumed "
                             f"run, which was planned with train.{key}={saved[key]!r}")
