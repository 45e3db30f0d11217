"""In-memory datasets: whole splits as tensors, so training needs no per-sample Python work.

Every loader in ``meddx.data`` returns a :class:`DataBundle`; the engine, the report and the
predictor only ever see this one shape of data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meddx.data.split import Split
from meddx.data.validate import VALIDATORS, check_class_coverage, validate_split
from meddx.errors import MeddxError
from meddx.kinds import DETECTION, KINDS, MULTI_LABEL, REGISTRATION, SEGMENTATION


@dataclass
class DataBundle:
    """Train/val/test splits plus what a model needs to know about them."""

    name: str
    task: str
    class_names: list[str]
    train: Split
    val: Split
    test: Split
    modality: str = "generic"
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    class_source: str = "declared"  # where class names came from: medmnist, npz, sidecar, folder, csv, generic

    def __post_init__(self) -> None:
        if self.task not in KINDS + (SEGMENTATION, DETECTION, REGISTRATION):
            raise MeddxError(f"unknown task {self.task!r}; expected one of "
                             f"{', '.join(KINDS + (SEGMENTATION, DETECTION, REGISTRATION))}", self.source)
        for split_name in ("train", "val", "test"):
            check = VALIDATORS.get(self.task, validate_split)
            check(getattr(self, split_name), self.task, len(self.class_names),
                  f"{self.source or self.name} [{split_name}]")
        if self.task in KINDS:  # the label contract: every class in training, nothing in val/test it lacks
            check_class_coverage(self.train, {"val": self.val, "test": self.test}, self.task, self.class_names,
                                 self.source or self.name)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def spatial_dims(self) -> int:
        return self.train.images.ndim - 2

    @property
    def image_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.train.images.shape[2:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.task, "classes": self.class_names, "modality": self.modality,
            "num_classes": self.num_classes, "label_kind": _label_kind(self.task),
            "class_names_from": self.class_source,
            "source": self.source, "in_channels": self.in_channels, "image_size": list(self.image_size),
            "n_train": len(self.train), "n_val": len(self.val), "n_test": len(self.test),
        }


def _label_kind(task: str) -> str:
    if task == MULTI_LABEL:
        return "0/1 matrix (one column per label)"
    return "class id per image" if task in KINDS else task


def labels_from_array(labels: np.ndarray, task: str) -> torch.Tensor:
    """MedMNIST-style (N, 1) or (N, K) label arrays to the engine's label tensor."""
    labels = np.asarray(labels)
    if task == MULTI_LABEL:
        return torch.as_tensor(labels.reshape(labels.shape[0], -1), dtype=torch.float32)
    return torch.as_tensor(labels.reshape(labels.shape[0]), dtype=torch.long)


def stratified_split(labels: np.ndarray, fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Deterministic stratified train/val/test indices (scikit-learn's splitter, twice)."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    strat = labels if labels.ndim == 1 else None
    idx = np.arange(len(labels))
    if len(idx) < 3:
        raise MeddxError(f"need at least 3 images to split into train/val/test, got {len(idx)}")
    counts = np.bincount(labels) if strat is not None else np.array([len(idx)])
    if strat is not None and counts[counts > 0].min() < 3:
        strat = None  # too few samples in some class to stratify; fall back to a plain shuffle
    n_val, n_test = max(1, round(len(idx) * fractions[1])), max(1, round(len(idx) * fractions[2]))
    train_idx, rest = train_test_split(idx, test_size=n_val + n_test, random_state=seed, stratify=strat)
    strat_rest = labels[rest] if strat is not None else None
    if strat_rest is not None and np.bincount(strat_rest)[np.bincount(strat_rest) > 0].min() < 2:
        strat_rest = None
    val_idx, test_idx = train_test_split(rest, test_size=n_test, random_state=seed, stratify=strat_rest)
    return np.sort(train_idx), np.sort(val_idx), np.sort(test_idx)
