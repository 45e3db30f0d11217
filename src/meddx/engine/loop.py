"""The plain training loop: ``train_one_epoch`` and ``predict``, like torchvision's reference scripts.

Batches are slices of in-memory tensors (no DataLoader, no per-sample Python), normalised and
augmented on the device in one call per batch. The loop is the same for every task: the task
builds the batch (``task.make_batch``: images and targets, augmented together) and computes the
loss (``task.training_loss(model, x, y)``), so classification, segmentation and detection share it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.models.inference import autocast_for, batches, predict
from meddx.tasks import Task

__all__ = ["EpochSettings", "autocast_for", "batches", "predict", "run_epoch", "train_one_epoch"]


@dataclass
class EpochSettings:
    """How one epoch trains and validates: preprocessing, batch sizes, device, augmentation, progress, EMA."""

    norm: Normalization
    batch_size: int
    eval_batch_size: int
    device: torch.device
    policy: AugmentPolicy | None = None
    amp: bool = False
    on_step: Callable[[int, float], None] | None = None
    ema: torch.optim.swa_utils.AveragedModel | None = None


def train_one_epoch(model: nn.Module, split: Split, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, settings: EpochSettings,
                    generator: torch.Generator | None = None) -> dict[str, float]:
    """One pass over ``split``; returns the mean training loss. ``settings.on_step(i, loss)`` drives progress."""
    model.train()
    total, count = 0.0, 0
    for step, idx in enumerate(batches(len(split), settings.batch_size, generator, drop_last=True)):
        x, y = task.make_batch(split, idx, settings.norm, settings.device, settings.policy, generator)
        with autocast_for(settings.device, settings.amp):
            loss = task.training_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if settings.ema is not None:
            settings.ema.update_parameters(model)
        value = float(loss.detach())
        total += value * len(idx)
        count += len(idx)
        if settings.on_step is not None:
            settings.on_step(step, value)
    return {"train_loss": total / max(count, 1)}


def run_epoch(model: nn.Module, task: Task, splits: tuple[Split, Split], optimizer: torch.optim.Optimizer,
              scheduler: Any, settings: EpochSettings, generator: torch.Generator,
              after_train: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train one epoch on ``splits[0]``, run ``after_train`` (e.g. BatchNorm re-estimation), validate on
    ``splits[1]`` (the EMA model when there is one); the history row without its epoch number.

    The one epoch runner of :func:`meddx.engine.fit.fit` and of compression fine-tunes.
    """
    train, val = splits
    tic = time.time()
    stats = train_one_epoch(model, train, task, optimizer, scheduler, settings, generator)
    if after_train is not None:
        after_train()
    eval_model = settings.ema.module if settings.ema is not None else model
    metrics = task.validate(eval_model, val, settings.norm, device=settings.device,
                            batch_size=settings.eval_batch_size, amp=settings.amp)
    return {**stats, **{f"val_{k}": v for k, v in metrics.items()}, "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.time() - tic, 3)}
