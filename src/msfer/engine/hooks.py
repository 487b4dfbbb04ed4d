"""What the training loop does around its epochs, as hooks (after detectron2's ``engine/hooks.py``).

:class:`msfer.engine.trainer.Trainer` calls each hook's :meth:`~Hook.before_train` once, its
:meth:`~Hook.after_epoch` after every epoch's training and validation, and its :meth:`~Hook.after_train`
at the end, in the order of ``trainer.hooks``. ``after_epoch`` gets the epoch's ``record`` (``stats``:
training loss, accuracy, learning rate and throughput; ``metrics``: the validation split's metrics, {}
when not due; ``started``: when the epoch began, ``time.monotonic()``), which a hook may add to for the
hooks after it:

* :class:`PhotoValidationHook` (every rank: each scores its share of the photos) adds ``photo``, the
  whole-pipeline metrics on ``data.photo_val`` when due;
* :class:`CommitHook` (rank 0) writes the epoch: TensorBoard, then ``metrics.csv``, ``best.pt`` if the
  epoch improved and ``last.pt``, the commit marker (the protocol of :mod:`msfer.engine.trainer`).
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from ..faces.crop import CropRule
from ..model.checkpoint import describe, save_checkpoint
from .config import save_config
from .photos import PhotoValidation
from .run_dir import committed_rows, reconcile_best, remove_interrupted_writes, write_rows
from .runtime import rng_states

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)


class Hook:
    """A no-op at each moment of the loop; subclasses override what they need."""

    def before_train(self, trainer: Trainer) -> None:
        pass

    def after_epoch(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """After epoch ``epoch`` (0-based) has been trained and validated."""

    def after_train(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """At the end, with the run's summary, which the hook may add to."""


class PhotoValidationHook(Hook):
    """Scores the model on whole photos (``data.photo_val``: detect, crop by the run's rule, classify) every
    ``eval.photo_val_every`` epochs and after the last; adds ``record["photo"]`` and the run summary's
    ``photo_validation``. Detection and cropping wait for the first scoring."""

    def __init__(self, samples: list, trainer: Trainer) -> None:
        config = trainer.config
        self.scorer = PhotoValidation(samples, CropRule.from_dict(config["data"]["crop_rule"]),
                                      trainer.model.input_size, info=trainer.info)
        self.summary: dict = {}

    def after_epoch(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        # Every rank scores its share of the photos and all gather them, as validate_model() does. Rank 0 alone
        # would leave the others blocked in the next epoch's first gradient all-reduce while it detects
        # every photo: a first scoring of a few hundred photos on CPU can outlast the collective timeout
        # (30 min gloo, 10 min NCCL) and kill the run, and a barrier after it would wait under the same
        # timeout. Sharded, each rank does 1/N of the work, and the one gather is reached by all ranks
        # under the same condition (epoch and config, identical everywhere), so they cannot fall out of step.
        config = trainer.config
        every, last = config["eval"]["photo_val_every"], epoch + 1 == config["train"]["epochs"]
        if not (last or (every and (epoch + 1) % every == 0)):
            return
        metrics = self.scorer.score(trainer.eval_model, trainer.device, tta=config["eval"]["tta"])
        entry = config["data"]["photo_val"]
        self.summary = {"epoch": epoch + 1, "set": f"{entry['root']} split {entry['split']}", "n": metrics["n"],
                        "overall_accuracy": metrics["overall_accuracy"],
                        "mean_class_accuracy": metrics["mean_class_accuracy"],
                        "faces_missed": metrics["detection"]["faces_missed"]}
        if trainer.info.is_main:
            log.info("epoch %d: photo validation overall %.4f mean-class %.4f (%d of %d photos without a face)",
                     epoch + 1, metrics["overall_accuracy"], metrics["mean_class_accuracy"],
                     metrics["detection"]["faces_missed"], metrics["n"])
        record["photo"] = metrics

    def after_train(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.summary:
            summary["photo_validation"] = self.summary


class CommitHook(Hook):
    """Rank 0: the run's files. Before the first epoch ``config.yaml``, ``metrics.csv`` cut back to the resumed
    epoch and ``best.pt`` checked against it; after each epoch TensorBoard, then the commit: ``metrics.csv``,
    ``best.pt`` (if the epoch improved ``train.select_metric``), ``last.pt``."""

    def __init__(self) -> None:
        self.rows: list[dict] = []  # metrics.csv, one row per committed epoch
        self.writer = None

    def before_train(self, trainer: Trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        out = trainer.output_dir
        save_config(trainer.config, out)
        remove_interrupted_writes(out)
        if trainer.resuming:
            self.rows = committed_rows(out / "metrics.csv", trainer.start_epoch)
            trainer.best = reconcile_best(out, trainer.start_epoch, trainer.best, trainer.resumed_checkpoint)
        self._write_rows(trainer)
        # A resumed run hides the events of epochs that are being run again.
        self.writer = SummaryWriter(out / "tensorboard",
                                    purge_step=trainer.start_epoch + 1 if trainer.resuming else None)

    def _write_rows(self, trainer: Trainer) -> None:
        write_rows(trainer.output_dir, self.rows, f"{trainer.output_dir.name}: {trainer.config['model'].get('name')}")

    def after_epoch(self, trainer: Trainer, epoch: int, record: dict[str, Any]) -> None:
        """Each file is replaced atomically, and last.pt comes last: a kill at any point leaves the previous commit
        whole, and resuming from it repeats this epoch and rewrites the same files."""
        stats, metrics, photo = record["stats"], record["metrics"], record.get("photo")
        select = trainer.config["train"]["select_metric"]
        improved = bool(metrics) and metrics[select] > trainer.best["value"]
        if improved:
            trainer.best = {"epoch": epoch + 1, "value": metrics[select], "metrics": metrics}
        row = {"epoch": epoch + 1, "train_loss": stats["loss"], "train_accuracy": stats["accuracy"],
               "val_overall_accuracy": metrics.get("overall_accuracy", ""),
               "val_mean_class_accuracy": metrics.get("mean_class_accuracy", ""), "lr": stats["lr"],
               "epoch_seconds": round(time.monotonic() - record["started"], 2),
               "train_images_per_second": round(stats["images_per_second"], 1)}
        if photo:
            row.update({"photo_val_overall_accuracy": photo["overall_accuracy"],
                        "photo_val_mean_class_accuracy": photo["mean_class_accuracy"],
                        "photo_val_faces_missed": photo["detection"]["faces_missed"]})
        for key, value in row.items():
            if key != "epoch" and value != "":
                self.writer.add_scalar(key.replace("_", "/", 1), value, epoch + 1)
        self.writer.flush()
        self.rows.append(row)
        self._write_rows(trainer)
        checkpoint = {
            "model": trainer.model.state_dict(), "ema": trainer.ema.module.state_dict() if trainer.ema else None,
            "optimizer": trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "scaler": trainer.scaler.state_dict(), "epoch": epoch + 1, "best": trainer.best, "rng": rng_states(),
            **describe(trainer.model, trainer.config, metrics),
        }
        if photo:
            checkpoint["photo_val"] = photo  # the epoch's whole-pipeline metrics on data.photo_val
        if improved:
            save_checkpoint(checkpoint, trainer.output_dir / "best.pt")
        save_checkpoint(checkpoint, trainer.output_dir / "last.pt")  # the commit
        if metrics:
            log.info("epoch %d: train loss %.4f acc %.4f | validation overall %.4f mean-class %.4f%s", epoch + 1,
                     stats["loss"], stats["accuracy"], metrics["overall_accuracy"], metrics["mean_class_accuracy"],
                     " (best)" if improved else "")

    def after_train(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if self.writer is not None:
            self.writer.close()
