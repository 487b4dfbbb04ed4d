"""The training's weight average and learning-rate schedules are torch's, and give what the hand-written ones gave."""
import copy
import math

import pytest
import torch

from msfer.engine.optim import build_scheduler, ema_model, restore_scheduler

STEPS_PER_EPOCH = 10


def closed_form(step: int, warmup: int, total: int, cosine: bool) -> float:
    """msfer's former hand-written factor: linear warm-up from 1% to 100%, then cosine to 0 or constant."""
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    if not cosine:
        return 1.0
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def optimizer(lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr)


def train_section(schedule: str, warmup_epochs: float, epochs: int = 4) -> dict:
    return {"schedule": schedule, "warmup_epochs": warmup_epochs, "epochs": epochs, "lr": 0.1}


def rates(opt, scheduler, steps: int) -> list[float]:
    """The rate each of ``steps`` optimizer steps uses."""
    used = []
    for _ in range(steps):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    return used


@pytest.mark.parametrize("schedule", ["cosine", "none"])
@pytest.mark.parametrize("warmup_epochs", [0.0, 1.5])
def test_warmup_then_cosine_or_constant_follow_the_closed_form(schedule, warmup_epochs):
    train = train_section(schedule, warmup_epochs)
    opt = optimizer()
    total = train["epochs"] * STEPS_PER_EPOCH
    used = rates(opt, build_scheduler(opt, train, STEPS_PER_EPOCH), total)
    warmup = int(warmup_epochs * STEPS_PER_EPOCH)
    expected = [0.1 * closed_form(step, warmup, total, schedule == "cosine") for step in range(total)]
    assert used == pytest.approx(expected, rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("epochs, steps_per_epoch, warmup_epochs", [(1, 2, 0.5), (1, 1, 0.0), (10, 10, 0.0),
                                                                   (2, 3, 1.0)])
def test_onecycle_runs_on_short_schedules(epochs, steps_per_epoch, warmup_epochs):
    """A tiny dataset (few steps) or no warm-up must not make OneCycleLR divide by zero."""
    opt = optimizer()
    train = {**train_section("onecycle", warmup_epochs, epochs)}
    used = rates(opt, build_scheduler(opt, train, steps_per_epoch), epochs * steps_per_epoch)
    assert all(math.isfinite(rate) and 0 < rate <= 0.1 + 1e-12 for rate in used)


@pytest.mark.parametrize("schedule", ["onecycle", "cosine", "none"])
def test_a_restored_schedule_continues_exactly(schedule):
    train = train_section(schedule, 1.0)
    total = train["epochs"] * STEPS_PER_EPOCH
    opt = optimizer()
    whole = rates(opt, build_scheduler(opt, train, STEPS_PER_EPOCH), total)
    opt = optimizer()
    scheduler = build_scheduler(opt, train, STEPS_PER_EPOCH)
    first = rates(opt, scheduler, 17)
    saved_optimizer, saved_scheduler = copy.deepcopy(opt.state_dict()), copy.deepcopy(scheduler.state_dict())
    opt = optimizer(lr=0.5)  # a new run: its own rate until the state is loaded
    scheduler = build_scheduler(opt, train, STEPS_PER_EPOCH)
    opt.load_state_dict(saved_optimizer)
    scheduler = restore_scheduler(scheduler, train, STEPS_PER_EPOCH, saved_scheduler)
    assert first + rates(opt, scheduler, total - 17) == whole


@pytest.mark.parametrize("schedule", ["cosine", "none"])
def test_a_lambda_schedule_of_an_older_checkpoint_is_replayed(schedule):
    train = train_section(schedule, 1.0)
    total, warmup = train["epochs"] * STEPS_PER_EPOCH, STEPS_PER_EPOCH
    opt = optimizer()
    old = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: closed_form(s, warmup, total, schedule == "cosine"))
    rates(opt, old, 23)
    saved_optimizer, saved_scheduler = copy.deepcopy(opt.state_dict()), old.state_dict()
    opt = optimizer()
    scheduler = build_scheduler(opt, train, STEPS_PER_EPOCH)
    opt.load_state_dict(saved_optimizer)
    scheduler = restore_scheduler(scheduler, train, STEPS_PER_EPOCH, saved_scheduler)
    expected = [0.1 * closed_form(step, warmup, total, schedule == "cosine") for step in range(23, total)]
    assert rates(opt, scheduler, total - 23) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def small_network() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 7))


def train_steps(model, ema, reference, steps: int, decay: float) -> None:
    """SGD steps on random data; after each, ``ema`` is updated and ``reference`` (a state dict) by hand."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        loss = model(torch.randn(8, 3, 9, 9)).logsumexp(dim=1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        ema.update_parameters(model)
        with torch.no_grad():  # msfer's former hand-written average: floats lerp, counters copy
            for name, value in model.state_dict().items():
                if value.is_floating_point():
                    reference[name].lerp_(value, 1 - decay)
                else:
                    reference[name].copy_(value)


def test_the_weight_average_is_the_hand_written_one_and_survives_a_checkpoint():
    model, decay = small_network(), 0.9
    ema = ema_model(model, decay)
    reference = copy.deepcopy(model.state_dict())
    train_steps(model, ema, reference, 5, decay)
    averaged = ema.module.state_dict()
    assert averaged.keys() == reference.keys()
    for name in reference:
        assert torch.equal(averaged[name], reference[name]), name
    assert averaged["1.num_batches_tracked"] == 5  # counters follow the model, not averaged
    assert not torch.equal(averaged["5.weight"], model.state_dict()["5.weight"])  # an average, not a copy

    # resume: a new average that loads the saved one goes on exactly as the first one does
    model_copy = copy.deepcopy(model)
    resumed = ema_model(model_copy, decay)
    resumed.module.load_state_dict(averaged)
    for network, average in ((model, ema), (model_copy, resumed)):
        torch.manual_seed(1)
        train_steps(network, average, copy.deepcopy(reference), 3, decay)
    for name, value in resumed.module.state_dict().items():
        assert torch.equal(value, ema.module.state_dict()[name]), name
    assert all(not p.requires_grad for p in ema.module.parameters())
