"""The task interface shared by the training loop, evaluation and prediction."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn as nn

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.errors import MeddxError


class Task(Protocol):
    """What the engine needs from a task; one small file per task implements it.

    Training: ``make_batch`` (images + targets of one batch, normalised and augmented together) and
    ``training_loss(model, x, y)``. Validation and testing: ``validate`` (the metrics the loop monitors)
    and ``full_metrics``. Classification also offers ``probabilities`` for ``engine.loop.predict``.
    """

    name: str
    monitor: str  # metric used for early stopping / best checkpoint (higher is better)
    num_outputs: int

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None, generator: torch.Generator | None) -> tuple[Any, Any]: ...

    def training_loss(self, model: nn.Module, x: Any, y: Any) -> torch.Tensor: ...

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]: ...

    def probabilities(self, output: torch.Tensor) -> torch.Tensor: ...

    def quick_metrics(self, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]: ...

    def full_metrics(self, y_true: np.ndarray, y_score: np.ndarray, class_names: list[str],
                     n_bootstrap: int = 1000) -> dict[str, Any]: ...


# name -> "module:factory"; factories take the data set's task string and class count.
_TASKS = {
    "classification": "classification:ClassificationTask",
    "segmentation": "segmentation:SegmentationTask",
    "detection": "detection:DetectionTask",
}


def task_class(name: str) -> type:
    if name not in _TASKS:
        raise MeddxError(f"unknown task {name!r}; available: {', '.join(_TASKS)}")
    module, cls = _TASKS[name].split(":")
    return getattr(importlib.import_module(f"meddx.tasks.{module}"), cls)


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task ``name`` (``classification``, ...) from keyword arguments."""
    return task_class(name)(**kwargs)


def task_for_training(cfg: Any, data: Any) -> Task:
    """The task a ``TrainConfig`` asks for, sized to ``data`` (``cls.from_config(cfg, data)``)."""
    return task_class(cfg.task).from_config(cfg, data)


def task_from_meta(meta: dict[str, Any]) -> Task:
    """The task stored in a checkpoint's metadata (``cls.from_meta(meta)``)."""
    return task_class(meta["task"]).from_meta(meta)


def axis_flips(spatial_dims: int) -> list[list[int]]:
    """Every non-empty set of spatial axes of an (N, C, *S) tensor, for ``tensor.flip``: the mirror images that
    test-time augmentation averages besides the original (3 in 2D, 7 in 3D)."""
    from itertools import combinations

    axes = range(2, 2 + spatial_dims)
    return [list(f) for r in range(1, spatial_dims + 1) for f in combinations(axes, r)]
