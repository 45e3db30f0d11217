"""Image classification: binary, multi-class, multi-label and ordinal (MedMNIST's four task types)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.data.augment import AugmentPolicy, Normalization, random_affine
from meddx.data.dataset import Split
from meddx.errors import MeddxError
from meddx.kinds import MULTI_LABEL


class ClassificationTask:
    """Softmax + cross-entropy for single-label tasks, sigmoid + BCE per column for multi-label.

    Ordinal regression is trained as multi-class, exactly as in the MedMNIST v2 benchmark.
    """

    name = "classification"
    monitor = "auc"

    def __init__(self, kind: str, num_classes: int, class_weights: torch.Tensor | None = None,
                 label_smoothing: float = 0.0) -> None:
        from meddx.kinds import KINDS as TASKS

        if kind not in TASKS:
            raise MeddxError(f"unknown classification type {kind!r}; expected one of {', '.join(TASKS)}")
        self.kind = kind
        self.num_classes = num_classes
        self.class_weights = class_weights
        self.label_smoothing = label_smoothing

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> ClassificationTask:
        weights = balanced_class_weights(data.train.labels, data.task, data.num_classes) if cfg.class_weights else None
        return cls(data.task, data.num_classes, class_weights=weights, label_smoothing=cfg.label_smoothing)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ClassificationTask:
        return cls(meta["task_kind"], meta["num_outputs"])

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Images normalised and (if ``policy``) randomly transformed per sample; labels unchanged."""
        x = normalize(split.images[idx].to(device, non_blocking=True))
        if policy is not None:
            x = random_affine(x, policy, generator)
        return x, split.labels[idx].to(device, non_blocking=True)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(model(x), y)

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]:
        """Validation loss, AUC and ACC (the monitored metric is AUC)."""
        from meddx.engine.loop import predict

        y_score, loss = predict(model, split.images, self, normalize, batch_size=batch_size, device=device, amp=amp,
                                labels=split.labels)
        return {"loss": float(loss or 0.0), **self.quick_metrics(split.labels.numpy(), y_score)}

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(output.device) if self.class_weights is not None else None
        if self.kind == MULTI_LABEL:
            return F.binary_cross_entropy_with_logits(output, target.float(), pos_weight=w)
        return F.cross_entropy(output, target, weight=w, label_smoothing=self.label_smoothing)

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output) if self.kind == MULTI_LABEL else torch.softmax(output, dim=1)

    def quick_metrics(self, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
        from meddx.metrics.classification import compute_acc, compute_auc

        return {"auc": float(compute_auc(y_true, y_score, self.kind)),
                "acc": float(compute_acc(y_true, y_score, self.kind))}

    def full_metrics(self, y_true: np.ndarray, y_score: np.ndarray, class_names: list[str],
                     n_bootstrap: int = 1000) -> dict[str, Any]:
        from meddx.metrics.classification import evaluate_classification

        return evaluate_classification(y_true, y_score, self.kind, class_names, n_bootstrap=n_bootstrap)


def balanced_class_weights(labels: torch.Tensor, kind: str, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (``n / (k * count)``); for multi-label, BCE ``pos_weight = neg / pos``."""
    if kind == MULTI_LABEL:
        pos = labels.float().sum(0).clamp_min(1)
        return (labels.shape[0] - pos) / pos
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    return labels.numel() / (num_classes * counts)
