"""The task interface shared by the training loop, evaluation and prediction."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import torch

from meddx.errors import MeddxError


class Task(Protocol):
    """What the engine needs from a task; one small file per task implements it."""

    name: str
    monitor: str  # metric used for early stopping / best checkpoint (higher is better)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor: ...

    def probabilities(self, output: torch.Tensor) -> torch.Tensor: ...

    def quick_metrics(self, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]: ...

    def full_metrics(self, y_true: np.ndarray, y_score: np.ndarray, class_names: list[str],
                     n_bootstrap: int = 1000) -> dict[str, Any]: ...


# name -> "module:factory"; factories take the data set's task string and class count.
_TASKS = {
    "classification": "classification:ClassificationTask",
}


def get_task(name: str, **kwargs: Any) -> Task:
    """Build the task ``name`` (``classification``, ...)."""
    if name not in _TASKS:
        raise MeddxError(f"unknown task {name!r}; available: {', '.join(_TASKS)}")
    module, cls = _TASKS[name].split(":")
    return getattr(importlib.import_module(f"meddx.tasks.{module}"), cls)(**kwargs)
