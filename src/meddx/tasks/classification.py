"""Image classification: binary, multi-class, multi-label and ordinal (MedMNIST's four task types)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.data.augment import AugmentPolicy, Normalization, augment_batch
from meddx.data.dataset import Split
from meddx.data.mixup import MixedTargets, mix_batch
from meddx.errors import MeddxError
from meddx.kinds import BINARY, MULTI_LABEL, ORDINAL
from meddx.tasks.base import EvalRequest


class ClassificationTask:
    """Softmax + cross-entropy for single-label tasks, sigmoid + BCE per column for multi-label.

    Ordinal regression is trained as multi-class, exactly as in the MedMNIST v2 benchmark.
    """

    name = "classification"
    monitor = "auc"
    is_classifier = True
    default_model = None  # the registry's default network
    default_steps = None  # the recipe's schedule (meddx.engine.recipe)
    default_minutes = None
    default_batch_size = 128

    def __init__(self, kind: str, num_classes: int, class_weights: torch.Tensor | None = None,
                 label_smoothing: float = 0.0, ordinal_loss: str = "ce", mixup: float = 0.0) -> None:
        from meddx.kinds import KINDS as TASKS

        if kind not in TASKS:
            raise MeddxError(f"unknown classification type {kind!r}; expected one of {', '.join(TASKS)}")
        self.kind = kind
        self.num_classes = num_classes
        self.class_weights = class_weights
        self.label_smoothing = label_smoothing
        self.ordinal_loss = ordinal_loss if kind == ORDINAL else "ce"
        self.mixup = mixup  # Beta(alpha, alpha) of training batches' mixup; 0: off (meddx.data.mixup)

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> ClassificationTask:
        weights = balanced_class_weights(data.train.labels, data.task, data.num_classes) if cfg.class_weights else None
        return cls(data.task, data.num_classes, class_weights=weights, label_smoothing=cfg.label_smoothing or 0.0,
                   ordinal_loss=getattr(cfg, "ordinal_loss", "ce"), mixup=getattr(cfg, "mixup", 0.0))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ClassificationTask:
        return cls(meta["kind"], meta["num_outputs"], label_smoothing=meta.get("label_smoothing") or 0.0)

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | MixedTargets]:
        """Images normalised and (if ``policy``) transformed per sample (colour, then affine), then mixed in
        pairs when the task trains with mixup (targets: :class:`~meddx.data.mixup.MixedTargets`)."""
        x = augment_batch(split.images[idx].to(device, non_blocking=True), normalize, policy, generator)
        y = split.labels[idx].to(device, non_blocking=True)
        if self.mixup > 0:
            return mix_batch(x, y, self.mixup, generator)
        return x, y

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | MixedTargets) -> torch.Tensor:
        output = model(x)
        return y.loss(self.loss, output) if isinstance(y, MixedTargets) else self.loss(output, y)

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]:
        """Validation loss, AUC and ACC (the monitored metric is AUC)."""
        from meddx.models.inference import predict

        y_score, loss = predict(model, split.images, self, normalize, batch_size=batch_size, device=device, amp=amp,
                                labels=split.labels)
        return {"loss": float(loss or 0.0), **self.quick_metrics(split.labels.numpy(), y_score)}

    def evaluate(self, model: nn.Module, request: EvalRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """Metrics with bootstrap CIs on the request's split, scored by its runtime (the PyTorch model when
        none or ``torch``: then the loss too); binary tasks get their finding's operating points, thresholds
        chosen on ``request.reference``. Writes ``predictions_<split>.npz`` (y_true, y_score)."""
        from meddx.utils.io import atomic_path

        y_score, loss, label = self._scores(model, request.split, request)
        y_true = request.split.labels.numpy()
        reference = None
        if request.reference is not None and self.kind in (BINARY, MULTI_LABEL):
            reference = (request.reference.labels.numpy(), self._scores(model, request.reference, request)[0])
        metrics = self.full_metrics(y_true, y_score, request.class_names, n_bootstrap=request.n_bootstrap,
                                    positive_class=request.positive_class, reference=reference)
        if self.kind == MULTI_LABEL and reference is not None:
            metrics |= validation_thresholds(y_true, y_score, *reference)
        metrics["loss"], metrics["runtime"] = loss, label
        metrics["headline"] = headline(metrics)
        if request.out_dir is not None:
            with atomic_path(Path(request.out_dir) / f"predictions_{request.split_name}.npz") as tmp:
                with open(tmp, "wb") as f:
                    np.savez_compressed(f, y_true=y_true, y_score=y_score)
        return metrics, {"y_true": y_true, "y_score": y_score}

    def _scores(self, model: nn.Module, split: Split, request: EvalRequest) -> tuple[np.ndarray, float | None, str]:
        """(probabilities, loss or None, runtime label) of ``split`` scored by the request's runtime."""
        from meddx.models.inference import predict

        runtime = request.runtime
        if runtime is not None and runtime.name != "torch":  # e.g. an int8 run is scored on its int8 ONNX model
            return runtime.predict(split.images), None, runtime.label
        y_score, loss = predict(model, split.images, self, request.normalize, batch_size=request.batch_size,
                                device=request.device, labels=split.labels)
        return y_score, loss, "torch"

    def report_sections(self, context: dict[str, Any]) -> list[Any]:
        """Extra report sections: Grad-CAM heat maps of example test images."""
        from meddx.explain.report_section import heatmap_section

        return [s for s in (heatmap_section(context),) if s is not None]

    def predict_files(self, predictor: Any, paths: list[str | Path], out_dir: str | Path | None = None
                      ) -> list[dict[str, Any]]:
        """One dict per file: the probabilities, and the predicted label (labels above 0.5 for multi-label)."""
        from meddx.tasks.classification_files import classify_files

        return classify_files(predictor, paths, self.kind)

    def describe(self, name: str, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
        from meddx.tasks.classification_files import describe

        return describe(name, probs, classes, self.kind)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        w = self.class_weights.to(output.device) if self.class_weights is not None else None
        if self.kind == MULTI_LABEL:
            return F.binary_cross_entropy_with_logits(output, target.float(), pos_weight=w)
        ce = F.cross_entropy(output, target, weight=w, label_smoothing=self.label_smoothing)
        return ce + squared_emd(output, target) if self.ordinal_loss == "emd" else ce

    def probabilities(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(output) if self.kind == MULTI_LABEL else torch.softmax(output, dim=1)

    def quick_metrics(self, y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
        from meddx.metrics.classification import compute_acc, compute_auc

        return {"auc": float(compute_auc(y_true, y_score, self.kind)),
                "acc": float(compute_acc(y_true, y_score, self.kind))}

    def full_metrics(self, y_true: np.ndarray, y_score: np.ndarray, class_names: list[str],
                     n_bootstrap: int = 1000, positive_class: int | None = None,
                     reference: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, Any]:
        """:func:`~meddx.metrics.evaluate_classification`; binary tasks: sensitivity, PPV, NPV and ROC for
        ``positive_class`` (the finding), thresholds chosen on ``reference`` ``(y_true, y_score)``."""
        from meddx.metrics.classification import evaluate_classification
        from meddx.metrics.operating import operating_points

        metrics = evaluate_classification(y_true, y_score, self.kind, class_names, n_bootstrap=n_bootstrap)
        if self.kind == BINARY:
            metrics |= operating_points(y_true, y_score, class_names, positive_class, reference)
        return metrics


def per_label_thresholds(y_val: np.ndarray, s_val: np.ndarray, min_gain: float = 0.005) -> np.ndarray:
    """Per label, the threshold (0.05..0.95) with the best validation accuracy; 0.5 unless it gains >=
    ``min_gain`` (ties and noise keep MedMNIST's 0.5)."""
    grid = np.round(np.linspace(0.05, 0.95, 19), 2)
    out = np.full(y_val.shape[1], 0.5)
    for j in range(y_val.shape[1]):
        accs = [((s_val[:, j] > t).astype(int) == y_val[:, j]).mean() for t in grid]
        base = ((s_val[:, j] > 0.5).astype(int) == y_val[:, j]).mean()
        if max(accs) >= base + min_gain:
            out[j] = grid[int(np.argmax(accs))]
    return out


def validation_thresholds(y_true: np.ndarray, y_score: np.ndarray, y_val: np.ndarray,
                          s_val: np.ndarray) -> dict[str, Any]:
    """Multi-label: thresholds chosen per label on validation and the test ACC they give, reported beside the
    official ACC (MedMNIST's, at 0.5), which stays the headline."""
    from meddx.metrics.classification import compute_acc

    thresholds = per_label_thresholds(y_val, s_val)
    return {"val_thresholds": [float(t) for t in thresholds],
            "acc_val_thresholds": float(compute_acc(y_true, y_score, MULTI_LABEL, thresholds))}


def squared_emd(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Ordinal penalty on softmax outputs: the squared earth mover's distance between the predicted and the true
    cumulative distributions over grades (Hou et al. 2016), mean over the batch. Predicting grade 1 for a grade-4
    image costs more than predicting 3; the outputs stay a softmax, so MedMNIST's ACC/AUC, ONNX export and
    explanations treat the model like any multi-class one (a CORN/CORAL head would change what outputs mean)."""
    cdf = torch.cumsum(torch.softmax(output.float(), 1), 1)
    true_cdf = (torch.arange(output.shape[1], device=output.device)[None] >= target[:, None]).float()
    return ((cdf - true_cdf) ** 2).sum(1).mean()


def balanced_class_weights(labels: torch.Tensor, kind: str, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (``n / (k * count)``); for multi-label, BCE ``pos_weight = neg / pos``."""
    if kind == MULTI_LABEL:
        pos = labels.float().sum(0).clamp_min(1)
        return (labels.shape[0] - pos) / pos
    counts = torch.bincount(labels, minlength=num_classes).float().clamp_min(1)
    return labels.numel() / (num_classes * counts)


def headline(m: dict[str, Any]) -> str:
    """``ACC 0.9103 (95% CI 0.885-0.933)  AUC 0.9561 (95% CI ...)  n=624`` (no CI part without a bootstrap)."""
    def part(name: str, key: str) -> str:
        value, ci = m.get(key), m.get(f"{key}_ci")
        text = f"{name} {value:.4f}" if value is not None else f"{name} undefined"
        return text + (f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci and value is not None else "")

    return f"{part('ACC', 'acc')}  {part('AUC', 'auc')}  n={m.get('n')}"
