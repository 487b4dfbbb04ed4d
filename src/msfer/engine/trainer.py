"""Training a model from a YAML config (``msfer train``; after torchvision's references/detection/train.py).

    msfer train --config configs/cpu.yaml [key.sub=value ...] [--output-dir DIR]
    msfer train --resume runs/cpu [key.sub=value ...]          # continue exactly where it stopped
    msfer train --resume runs/cpu/best.pt --test-only           # evaluate a checkpoint on the validation split
    torchrun --nproc_per_node 4 -m msfer.cli train --config configs/gpu.yaml   # data-parallel

Outputs in ``output_dir``: ``config.yaml`` (the full merged config), ``last.pt`` (every
epoch) and ``best.pt`` (best ``train.select_metric`` on the validation split: ``data.val_split``,
or with ``data.holdout`` a seeded, class-stratified part of the training split), ``metrics.csv``,
``curves.png`` (its learning curves, redrawn every epoch), TensorBoard events in ``tensorboard/``.

Design choices:

* **Validation, not test.** ``data.val_split`` selects the checkpoint; it is called the
  validation split everywhere in the outputs. Report test numbers with ``msfer evaluate``
  on a split the run never saw.
* **Exact resume.** The batch order of an epoch depends only on ``(seed, epoch)``
  (:class:`~msfer.engine.distributed.EpochSampler`), the augmentation generator is
  re-seeded from ``(seed, epoch, rank)`` at each epoch, and the global RNG states
  (dropout) are saved with the model, optimizer, scheduler, scaler and EMA at every epoch
  end, so a resumed run computes the same losses as one that never stopped.
* **Time budget.** With ``train.max_minutes``, an epoch is started only if the mean epoch
  time so far says it will end within the budget (the first epoch always runs). The run
  then stops at an epoch boundary with ``last.pt`` written; ``--resume`` continues it
  (pass ``train.max_minutes=null`` or a new budget). The learning-rate schedule is not
  shortened: choose ``train.epochs`` to fit the budget for a complete schedule. A resumed run
  keeps its schedule: ``train.schedule``, ``train.warmup_epochs`` and (unless the schedule is
  ``none``, constant after the warm-up) ``train.epochs`` cannot change.
* **Hooks.** Around the loop of :meth:`Trainer.fit` (train an epoch, validate it), the hooks of
  :mod:`msfer.engine.hooks` score the photo validation and commit the epoch.
* **Crash-safe epochs.** Each epoch ends with one commit: ``metrics.csv``, then
  ``best.pt`` (if the epoch improved), then ``last.pt``, each written to a temporary file
  and moved into place. ``last.pt`` is the commit marker: a run killed anywhere resumes
  from the last committed epoch, ``metrics.csv`` is cut back to it (the rerun epoch is
  not listed twice), and a ``best.pt`` written for the interrupted epoch stays the best
  (an exact resume writes the same one again). A kill before the first commit leaves no
  ``last.pt``: start again with ``--overwrite``, which removes the old run's files.
* **Batch size** is the global batch: with N processes each takes ``batch_size / N``.
* **Losses** are the model's own (``out["losses"]``, summed). Label smoothing and the
  focal ``emotion_gamma`` are model config keys; ``train.class_weights=balanced`` writes
  inverse-frequency weights of the training labels into ``model.class_weights``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..errors import MsferError
from ..faces.crop import DEFAULT_CROP_RULE, CropRule
from ..labels import EMOTIONS, NUM_EMOTIONS
from ..model.checkpoint import crop_rule, load_model
from . import hooks
from .augment import BatchAugment
from .config import Config, validation_name
from .datasets import ConcatFaceDataset, FaceDataset, build_datasets
from .distributed import (
    DistInfo,
    EpochSampler,
    all_gather_objects,
    cleanup_distributed,
    init_distributed,
    mean_over_ranks,
)
from .evaluate import predict_split, split_metrics
from .hooks import Hook
from .metrics import format_table, write_report
from .optim import build_optimizer, build_scheduler, check_schedule_unchanged, ema_model, restore_scheduler
from .photos import PhotoValidation, photo_samples
from .run_dir import claim_output_dir
from .runtime import autocast, epoch_seed, resolve_device, restore_rng_states, seed_everything

log = logging.getLogger(__name__)

def train(config: Config, output_dir: Path, checkpoint: dict | None = None, overwrite: bool = False,
          test_checkpoint: Path | None = None) -> dict[str, Any]:
    """Train a run into ``output_dir`` (continuing ``checkpoint``, a loaded ``last.pt``, when given; ``overwrite``
    removes an earlier run's files first), or with ``test_checkpoint`` only evaluate that checkpoint. Starts and
    ends the process group when launched by torchrun. Returns the summary (best epoch and its validation metrics).
    """
    device = resolve_device(config["train"]["device"])
    info = init_distributed(str(device))
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    try:
        if test_checkpoint is not None:
            return test_only(config, test_checkpoint, Path(output_dir), device, info)
        trainer = Trainer(config, Path(output_dir), device, info, checkpoint)
        if checkpoint is None and info.is_main:
            trainer.claim_output_dir(overwrite)
        return trainer.fit()
    finally:
        cleanup_distributed()


def test_only(config: Config, checkpoint_path: Path, output_dir: Path, device: torch.device, info: DistInfo) -> dict:
    """Evaluate a checkpoint on the validation split; write the report under ``output_dir/eval_<split>``
    (and with ``data.photo_val`` its whole-pipeline metrics under ``output_dir/eval_photo_val``, also
    returned as ``photo_val``)."""
    model, meta = load_model(checkpoint_path, device)
    val_set = build_datasets(config, model, ("val_split",), info)["val_split"]
    metrics = validate_model(model, val_set, config, device, info)
    if info.is_main:
        write_report(metrics, output_dir / f"eval_{validation_name(config)}", EMOTIONS)
    if config["data"]["photo_val"]:  # sharded over the ranks like validate_model(): every rank takes part
        photo = PhotoValidation(photo_samples(config["data"]["photo_val"]), crop_rule(meta), model.input_size,
                                info=info).score(model, device, tta=config["eval"]["tta"])
        if info.is_main:
            write_report(photo, output_dir / "eval_photo_val", EMOTIONS)
        metrics = {**metrics, "photo_val": photo}
    return metrics


def validate_model(model: torch.nn.Module, dataset: FaceDataset, config: Config, device: torch.device,
             info: DistInfo) -> dict:
    """Metrics of ``model`` on the validation ``dataset`` (gathered over all ranks).

    With ``eval.region_source=pseudo`` a learned-detector model is validated through a copy of its
    weights whose head takes the pseudo-label regions (``model.region_source=pseudo``).
    """
    pseudo_regions = config["eval"]["region_source"] == "pseudo" and bool(model.region_names)  # a classifier has none
    if pseudo_regions and model.region_source != "pseudo":
        from ..model import build_model

        pseudo = build_model({**config["model"], "region_source": "pseudo", "pretrained": False})
        pseudo.load_state_dict(model.state_dict(), strict=False)  # the detector's weights have no place in it
        model = pseudo.to(device)
    predictions = predict_split(model, dataset, device, config["eval"]["batch_size"], tta=config["eval"]["tta"],
                                pseudo_regions=pseudo_regions,
                                num_workers=config["data"]["num_workers"], info=info, amp=config["train"]["amp"])
    return split_metrics(predictions, model.region_names, score_regions=getattr(model, "detector", None) is not None)


def warn_unused_crop_rule(data: Config) -> None:
    """Log a warning when ``data.crop_rule`` is not the default (box, 1.0) but no training set is cropped by it.

    The checkpoint records the rule all the same: inference and photo validation crop detected faces by
    it, so a model trained on face crops (FER2013) can be measured with another inference crop.
    """
    rule = CropRule.from_dict(data["crop_rule"])
    if rule != DEFAULT_CROP_RULE and not (data["crop"] or any(entry["crop"] for entry in data["extra_train"])):
        log.warning("data.crop_rule is %s at scale %g, but no training set is cropped by it (data.crop and every "
                    "data.extra_train crop are false): the training images are used with their own framing, and "
                    "the rule is used only at inference and in the photo validation (it is saved in the "
                    "checkpoint)", rule.method, rule.scale)


class Trainer:
    """One training run: data, model, optimisation state, and the epoch loop."""

    def __init__(self, config: Config, output_dir: Path, device: torch.device, info: DistInfo,
                 checkpoint: dict | None) -> None:
        from ..model import build_model, model_config

        self.config, self.output_dir, self.device, self.info = config, output_dir, device, info
        data, train = config["data"], config["train"]
        if "name" in config["model"]:
            # Spell out every key of the named entry: checkpoints must rebuild the same network even
            # after the registry's defaults change.
            config["model"] = {**model_config(config["model"]["name"]), **config["model"]}
        if config["model"].get("frozen_bn") and not config["model"].get("pretrained"):
            raise MsferError("model.frozen_bn keeps the backbone's batch-norm statistics as they start, which "
                             "without pretrained weights are mean 0 and variance 1: set model.frozen_bn=false, or "
                             "model.pretrained=true")
        seed_everything(train["seed"])
        torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input sizes: let cuDNN pick its fastest kernels
        if train["batch_size"] % info.world_size:
            raise MsferError(f"train.batch_size={train['batch_size']} is the global batch: it must divide by the "
                             f"{info.world_size} processes")
        if info.is_main:
            warn_unused_crop_rule(data)
        model = build_model(config["model"])
        photo_val = photo_samples(data["photo_val"]) if data["photo_val"] else None
        datasets = build_datasets(config, model, ("train_split", "val_split"), info, photo_val=photo_val)
        self.train_set, self.val_set = datasets["train_split"], datasets["val_split"]
        if train["class_weights"] == "balanced":
            if isinstance(self.train_set, ConcatFaceDataset):  # inverse of what an epoch draws, not of the sizes
                drawn = self.train_set.drawn_class_frequencies(NUM_EMOTIONS)
                weights = [round(float(w), 6) for w in 1.0 / (NUM_EMOTIONS * np.maximum(drawn, 1e-12))]
            else:
                counts = np.bincount(self.train_set.labels, minlength=NUM_EMOTIONS)
                weights = [round(float(w), 6) for w in len(self.train_set) / (NUM_EMOTIONS * np.maximum(counts, 1))]
            config["model"]["class_weights"] = weights  # recorded, so the saved config rebuilds the same loss
            model.class_weights = torch.tensor(weights)
        model = model.to(device)
        if train["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = ema_model(model, train["ema"]) if train["ema"] else None
        self.ddp_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None) if info.enabled else model

        weights = None
        if data["balanced_sampling"]:
            counts = np.bincount(self.train_set.labels, minlength=NUM_EMOTIONS)
            weights = 1.0 / counts[self.train_set.labels]
        if isinstance(self.train_set, ConcatFaceDataset) and weights is not None:
            # class-balanced within each set; the sets' shares come from their weights (EpochSampler groups)
            weights = np.concatenate([1.0 / np.maximum(np.bincount(part.labels, minlength=NUM_EMOTIONS), 1)[part.labels]
                                      for part in self.train_set.datasets])
        groups = list(zip(self.train_set.sizes, self.train_set.shares)) \
            if isinstance(self.train_set, ConcatFaceDataset) else None
        self.sampler = EpochSampler(len(self.train_set), train["seed"], info, weights, groups)
        per_rank_batch = train["batch_size"] // info.world_size
        if len(self.sampler) < per_rank_batch:
            raise MsferError(f"the training split has {len(self.train_set)} samples, fewer than one batch "
                             f"(train.batch_size={train['batch_size']})")
        self.train_loader = DataLoader(
            self.train_set, batch_size=per_rank_batch, sampler=self.sampler, drop_last=True,
            num_workers=data["num_workers"], persistent_workers=data["num_workers"] > 0,
            pin_memory=device.type == "cuda", generator=torch.Generator())
        self.augment = BatchAugment(data["augment"], model.input_size, model.mean, model.std, model.region_names,
                                    torch.Generator(device))

        self.optimizer = build_optimizer(self.model, train)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = build_scheduler(self.optimizer, train, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler(device.type, enabled=train["amp"] == "fp16" and device.type == "cuda")
        self.start_epoch, self.best = 0, {"epoch": None, "value": -1.0, "metrics": {}}
        self.resuming = checkpoint is not None
        self.resumed_checkpoint = checkpoint  # kept until the run's files are checked against it (hooks.CommitHook)
        if checkpoint is not None:
            self._restore(checkpoint)
        # In this order: the commit writes the photo validation's metrics with the epoch.
        self.hooks: list[Hook] = [hooks.PhotoValidationHook(photo_val, self)] if photo_val else []
        if info.is_main:
            self.hooks.append(hooks.CommitHook())

    def _restore(self, checkpoint: dict) -> None:
        train = self.config["train"]
        check_schedule_unchanged(train, checkpoint["config"]["train"])
        self.model.load_state_dict(checkpoint["model"])
        if self.ema is not None and checkpoint.get("ema"):
            self.ema.module.load_state_dict(checkpoint["ema"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler = restore_scheduler(self.scheduler, train, self.steps_per_epoch, checkpoint["scheduler"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        self.start_epoch = checkpoint["epoch"]
        self.best = checkpoint["best"]
        restore_rng_states(checkpoint["rng"])

    def claim_output_dir(self, overwrite: bool) -> None:
        """Create the run directory; refuse one that already holds files, unless ``overwrite``
        (:func:`msfer.engine.run_dir.claim_output_dir`)."""
        claim_output_dir(self.output_dir, overwrite)

    @property
    def eval_model(self) -> torch.nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def fit(self) -> dict[str, Any]:
        train, info = self.config["train"], self.info
        for hook in self.hooks:
            hook.before_train(self)
        if info.is_main:
            log.info("training %s for epochs %d..%d on %s (%d process%s); %d train / %d validation (%s) images",
                     self.config["model"].get("name", "model"), self.start_epoch + 1, train["epochs"], self.device,
                     info.world_size, "es" if info.enabled else "", len(self.train_set), len(self.val_set),
                     validation_name(self.config))
        self.resumed_checkpoint = None  # no need to hold its optimizer state and weights twice
        started, epoch_times = time.monotonic(), []
        stopped_early = False
        for epoch in range(self.start_epoch, train["epochs"]):
            if train["max_minutes"] and epoch_times:
                projected = time.monotonic() - started + float(np.mean(epoch_times))
                # Rank 0 decides for all: ranks that disagreed would wait on each other forever.
                if all_gather_objects(projected > train["max_minutes"] * 60, info)[0]:
                    stopped_early = True
                    if info.is_main:
                        log.info("time budget of %s min reached: stopping before epoch %d (resume with --resume %s)",
                                 train["max_minutes"], epoch + 1, self.output_dir)
                    break
            record = {"started": time.monotonic(), "stats": self.train_one_epoch(epoch)}
            validation_due = (epoch + 1) % train["val_every"] == 0 or epoch + 1 == train["epochs"]
            record["metrics"] = validate_model(self.eval_model, self.val_set, self.config, self.device,
                                               info) if validation_due else {}
            for hook in self.hooks:
                hook.after_epoch(self, epoch, record)
            epoch_times.append(time.monotonic() - record["started"])
        summary = {"best_epoch": self.best["epoch"], "select_metric": train["select_metric"],
                   "best_validation": self.best["metrics"], "stopped_by_time_budget": stopped_early,
                   "minutes": (time.monotonic() - started) / 60, "output_dir": str(self.output_dir)}
        for hook in self.hooks:
            hook.after_train(self, summary)
        if info.is_main and self.best["metrics"]:
            print(f"best epoch {self.best['epoch']} on validation split {validation_name(self.config)!r}:")
            print(format_table(self.best["metrics"]))
            print(f"checkpoints: {self.output_dir / 'best.pt'} (best), {self.output_dir / 'last.pt'} (last)")
        if info.is_main and "photo_validation" in summary:
            photo = summary["photo_validation"]
            print(f"photo validation ({photo['set']}, whole pipeline) after epoch {photo['epoch']}: overall accuracy "
                  f"{photo['overall_accuracy']:.4f}, mean class accuracy {photo['mean_class_accuracy']:.4f}, "
                  f"{photo['faces_missed']} of {photo['n']} photos without a detected face")
        return summary

    def train_one_epoch(self, epoch: int) -> dict[str, float]:
        train, info = self.config["train"], self.info
        self.ddp_model.train()
        self.sampler.set_epoch(epoch)
        self.augment.generator.manual_seed(epoch_seed(train["seed"], epoch, info.rank))
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss sum, correct, count (no per-step sync)
        started = time.monotonic()
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{train['epochs']}", unit="batch", leave=False,
                   disable=not info.is_main)
        for step, batch in enumerate(bar):
            images, boxes, box_valid = self.augment(
                batch["image"].to(self.device, non_blocking=True), batch["boxes"].to(self.device, non_blocking=True),
                batch["box_valid"].to(self.device, non_blocking=True), grey=batch["grey"])
            if train["channels_last"]:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = batch["label"].to(self.device, non_blocking=True)
            targets = {"labels": batch["soft_label"].to(self.device) if "soft_label" in batch else labels,
                       "boxes": boxes, "box_valid": box_valid}
            with autocast(self.device, train["amp"]):
                output = self.ddp_model(images, targets)
                loss = sum(output["losses"].values())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if train["grad_clip"]:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), train["grad_clip"])
            lr = self.optimizer.param_groups[0]["lr"]  # this step's (the schedule ends past the last step)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            correct = (output["logits"].argmax(dim=1) == labels).sum()
            count = totals.new_tensor(len(labels))
            totals += torch.stack([loss.detach().double() * len(labels), correct.double(), count])
            if step % 10 == 0:
                bar.set_postfix(loss=f"{totals[0] / totals[2]:.4f}", acc=f"{totals[1] / totals[2]:.3f}", lr=f"{lr:.2e}")
        seconds = time.monotonic() - started
        totals = mean_over_ranks(totals, info).cpu()
        return {"loss": float(totals[0] / totals[2]), "accuracy": float(totals[1] / totals[2]),
                "lr": lr,  # the epoch's last step's
                "images_per_second": float(totals[2]) * info.world_size / seconds}
