"""The plain training loop: ``train_one_epoch`` and ``predict``, like torchvision's reference scripts.

Batches are slices of in-memory tensors (no DataLoader, no per-sample Python), normalised and
augmented on the device in one call per batch. The loop is the same for every task: the task
builds the batch (``task.make_batch``: images and targets, augmented together) and computes the
loss (``task.training_loss(model, x, y)``), so classification, segmentation and detection share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn as nn

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.tasks import Task


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Shuffled index batches (sequential when ``generator`` is None)."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for i in range(0, stop, batch_size):
        yield order[i:i + batch_size]


def autocast_for(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA (no loss scaling needed); a no-op elsewhere."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def train_one_epoch(model: nn.Module, split: Split, task: Task, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None, normalize: Normalization,
                    *, batch_size: int, device: torch.device, policy: AugmentPolicy | None = None,
                    generator: torch.Generator | None = None, amp: bool = False,
                    on_step: Callable[[int, float], None] | None = None,
                    ema: torch.optim.swa_utils.AveragedModel | None = None) -> dict[str, float]:
    """One pass over ``split``; returns the mean training loss. ``on_step(i, loss)`` drives progress bars."""
    model.train()
    total, count = 0.0, 0
    for step, idx in enumerate(batches(len(split), batch_size, generator, drop_last=True)):
        x, y = task.make_batch(split, idx, normalize, device, policy, generator)
        with autocast_for(device, amp):
            loss = task.training_loss(model, x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if ema is not None:
            ema.update_parameters(model)
        value = float(loss.detach())
        total += value * len(idx)
        count += len(idx)
        if on_step is not None:
            on_step(step, value)
    return {"train_loss": total / max(count, 1)}


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, task: Task, normalize: Normalization, *,
            batch_size: int = 512, device: torch.device | str = "cpu", amp: bool = False,
            labels: torch.Tensor | None = None) -> tuple[np.ndarray, float | None]:
    """Probabilities for ``images`` (and the mean loss when ``labels`` are given)."""
    device = torch.device(device)
    model.eval()
    probs, total = [], 0.0
    for idx in batches(len(images), batch_size):
        x = normalize(images[idx].to(device))
        with autocast_for(device, amp):
            out = model(x).float()
        if labels is not None:
            total += float(task.loss(out, labels[idx].to(device))) * len(idx)
        probs.append(task.probabilities(out).cpu())
    y_score = torch.cat(probs).numpy() if probs else np.zeros((0, 0), dtype=np.float32)
    return y_score, (total / max(len(images), 1) if labels is not None else None)
