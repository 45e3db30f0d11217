"""The task interface shared by the training loop, evaluation and prediction."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.errors import MeddxError


@dataclass
class EvalRequest:
    """What a task's ``evaluate`` scores and where it writes: one split, its preprocessing and the run's outputs.

    ``runtime`` (optional) is the runtime that scores raw images (``meddx.runtimes``); tasks that need the
    network itself (sliding windows, box decoding) use ``model`` and ignore it. ``reference`` (optional) is
    the split decision thresholds are chosen on (the validation split; never the scored one);
    ``positive_class`` the finding's class id of a binary task (None: the last class).
    """

    split: Split
    normalize: Normalization
    class_names: list[str]
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    batch_size: int = 512
    n_bootstrap: int = 1000
    out_dir: Path | None = None
    split_name: str = "test"
    split_extra: dict[str, Any] = field(default_factory=dict)
    runtime: Any = None
    reference: Split | None = None
    positive_class: int | None = None


class Task(Protocol):
    """What the engine needs from a task; one small file per task implements all of it (no optional methods).

    Building: ``from_config(cfg, data)`` for training, ``from_meta(meta)`` from a checkpoint's metadata.
    Defaults: ``default_model`` (``None``: the registry's default classifier), ``default_batch_size``, and the
    automatic schedule's ``default_steps`` (optimiser steps planned) and ``default_minutes`` (its time budget);
    ``None`` for either: the recipe's rule (sample visits by set size; 15 min for volumes).
    Training: ``make_batch`` (images + targets of one batch, normalised and augmented together) and
    ``training_loss(model, x, y)``.
    Validation: ``validate`` (the metrics the loop monitors; ``monitor`` names the one to maximise).
    Testing: ``evaluate(model, request)`` scores a split and writes its outputs (predictions, masks, boxes),
    returning ``(metrics, report context)``; ``metrics["headline"]`` is its one-line summary.
    Report: ``report_sections(context)``. Prediction on files: ``predict_files(predictor, paths, out_dir)``.
    ``is_classifier``: outputs are class probabilities per image (ONNX export, int8, distillation apply); a
    classifier also offers ``loss(output, target)`` and ``probabilities(output)`` for batched inference.
    """

    name: str
    monitor: str  # metric used for early stopping / best checkpoint (higher is better)
    num_outputs: int
    is_classifier: bool
    default_model: str | None
    default_batch_size: int
    default_steps: int | None
    default_minutes: float | None

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> Task: ...

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Task: ...

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None, generator: torch.Generator | None) -> tuple[Any, Any]: ...

    def training_loss(self, model: nn.Module, x: Any, y: Any) -> torch.Tensor: ...

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, request: EvalRequest) -> tuple[dict[str, Any], dict[str, Any]]: ...

    def report_sections(self, context: dict[str, Any]) -> list[Any]: ...

    def predict_files(self, predictor: Any, paths: list[str | Path], out_dir: str | Path | None = None
                      ) -> list[dict[str, Any]]: ...


# name -> "module:factory"; factories take the data set's task string and class count.
_TASKS = {
    "classification": "classification:ClassificationTask",
    "segmentation": "segmentation:SegmentationTask",
    "detection": "detection:DetectionTask",
    "reconstruction": "reconstruction:ReconstructionTask",
    "registration": "registration:RegistrationTask",
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
