"""Inference helpers shared by every task and the engine: index batches, autocast, batched probabilities.

They sit below the tasks (tasks call them for validation and sliding windows) and know a task only as an
object with ``probabilities(output)`` and ``loss(output, target)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from meddx.data.augment import Normalization


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


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, task: Any, normalize: Normalization, *,
            batch_size: int = 512, device: torch.device | str = "cpu", amp: bool = False,
            labels: torch.Tensor | None = None,
            memory_format: torch.memory_format = torch.contiguous_format) -> tuple[np.ndarray, float | None]:
    """Probabilities for ``images`` (and the mean loss when ``labels`` are given); ``memory_format``: the
    layout the normalised batch is given to the model in (that of its weights)."""
    device = torch.device(device)
    model.eval()
    probs, total = [], 0.0
    for idx in batches(len(images), batch_size):
        x = normalize(images[idx].to(device)).contiguous(memory_format=memory_format)
        with autocast_for(device, amp):
            out = model(x).float()
        if labels is not None:
            total += float(task.loss(out, labels[idx].to(device))) * len(idx)
        probs.append(task.probabilities(out).cpu())
    y_score = torch.cat(probs).numpy() if probs else np.zeros((0, 0), dtype=np.float32)
    return y_score, (total / max(len(images), 1) if labels is not None else None)
