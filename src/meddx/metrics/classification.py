"""Full classification evaluation: every metric, interval and curve for ``metrics.json`` and the HTML report.

The metrics themselves (MedMNIST's ACC and AUC, per-class scores, ROC curves) live in
:mod:`meddx.metrics.scores`, their bootstrap-ready forms in :mod:`meddx.metrics.batched`, calibration in
:mod:`meddx.metrics.calibration` and input checking in :mod:`meddx.metrics._inputs`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meddx.errors import MeddxError
from meddx.kinds import BINARY
from meddx.metrics._inputs import check_class_names, check_inputs, check_task, to_numpy
from meddx.metrics.batched import acc_metric, auc_metric
from meddx.metrics.bootstrap import bootstrap_ci
from meddx.metrics.calibration import compute_ece, reliability_bins
from meddx.metrics.operating import majority_baseline, never_predicted, operating_points
from meddx.metrics.scores import (
    _defined,
    _nanmean,
    auc_per_class,
    compute_acc,
    compute_auc,
    confusion,
    per_class_metrics,
    roc_curves,
)

__all__ = ["ClassificationMetric", "compute_acc", "compute_auc", "evaluate_classification"]


def _json_float(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


def _ci(yt: np.ndarray, ys: np.ndarray, metric: Any, n_bootstrap: int, alpha: float, seed: int) -> list | None:
    """JSON-safe bootstrap interval of ``metric``; None when ``n_bootstrap`` is 0."""
    if not (n_bootstrap and n_bootstrap > 0):
        return None
    return [_json_float(v) for v in bootstrap_ci(yt, ys, metric, n_bootstrap, alpha, seed)]


def _per_class(yt: np.ndarray, ys: np.ndarray, task: str, names: list[str], threshold: float
               ) -> tuple[list[dict[str, Any]], dict[str, float | None]]:
    """JSON-safe per-class rows and their macro averages (over the classes where each is defined)."""
    rows = per_class_metrics(yt, ys, task, names, threshold)
    keys = ("precision", "recall", "f1", "specificity", "npv")
    macro = {k: _json_float(_nanmean([r[k] for r in rows])) for k in keys}
    return [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows], macro


def evaluate_classification(
    y_true: Any,
    y_score: Any,
    task: str,
    class_names: Sequence[str] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    threshold: float = 0.5,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Everything for ``metrics.json`` and the HTML report, JSON-safe (undefined values are ``None``).

    Keys: task, n, n_classes, class_names, threshold, acc, auc, acc_ci, auc_ci ([lo, hi], or None when
    ``n_bootstrap`` is 0), ci_level, n_bootstrap, auc_undefined_classes, ece, per_class, confusion, macro
    (precision/recall/f1/specificity/npv averaged over classes where defined), roc, reliability, baseline
    (always the most frequent class), never_predicted (classes no hard prediction names).
    Binary tasks add :func:`~meddx.metrics.operating.operating_points` for the last class (positive_class,
    positive_name, sensitivity, specificity, ppv, npv, thresholds); pass the finding and a validation split
    to that function to get them for the real finding and the validation-chosen thresholds.
    ``y_score`` must hold probabilities (calibration needs them).
    """
    c = check_inputs(y_true, y_score, task, require_prob=True)
    names = check_class_names(class_names, c.n_classes)
    yt, ys = c.y_true, c.y_score

    acc = compute_acc(yt, ys, task, threshold)
    auc = compute_auc(yt, ys, task)
    undefined = _auc_undefined(yt, ys, task, names)
    acc_ci = _ci(yt, ys, acc_metric(task, threshold), n_bootstrap, alpha, seed)
    auc_ci = _ci(yt, ys, auc_metric(task), n_bootstrap, alpha, seed)

    per_class, macro = _per_class(yt, ys, task, names, threshold)
    rel = reliability_bins(yt, ys, task)

    out = {
        "task": "classification",
        "kind": task,
        "n": int(len(yt)),
        "n_classes": int(c.n_classes),
        "class_names": names,
        "threshold": float(threshold),
        "acc": _json_float(acc),
        "auc": _json_float(auc),
        "acc_ci": acc_ci,
        "auc_ci": auc_ci,
        "ci_level": 1.0 - alpha,
        "n_bootstrap": int(n_bootstrap or 0),
        "auc_undefined_classes": undefined,
        "ece": _json_float(compute_ece(yt, ys, task)),
        "per_class": per_class,
        "confusion": confusion(yt, ys, task, threshold).tolist(),
        "macro": macro,
        "roc": roc_curves(yt, ys, task, names),
        "reliability": rel,
        "baseline": majority_baseline(yt, ys, task, names),
        "never_predicted": never_predicted(ys, task, names, threshold),
    }
    if task == BINARY:
        out |= operating_points(yt, ys, names, threshold=threshold)
    return out


def _auc_undefined(yt: np.ndarray, ys: np.ndarray, task: str, names: list[str]) -> list[str]:
    """Classes whose AUC is undefined (no positives or no negatives in the scored set)."""
    if task == BINARY:  # the task AUC only uses the positive column
        return [] if _defined(yt) else list(names)
    aucs = auc_per_class(yt, ys, task)
    return [names[i] for i in range(len(names)) if not np.isfinite(aucs[i])]


class ClassificationMetric:
    """Accumulate batches of labels and scores, then :meth:`compute` the full evaluation.

    Example::

        metric = ClassificationMetric(MULTI_CLASS, class_names)  # kinds from meddx.kinds
        for x, y in loader:
            metric.update(y, model(x).softmax(-1))
        result = metric.compute(n_bootstrap=1000)
    """

    def __init__(self, task: str, class_names: Sequence[str] | None = None, threshold: float = 0.5) -> None:
        self.task = check_task(task)
        self.class_names = list(class_names) if class_names is not None else None
        self.threshold = threshold
        self._true: list[np.ndarray] = []
        self._score: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(t) for t in self._true)

    def update(self, y_true: Any, y_score: Any) -> None:
        """Add a batch (numpy arrays or torch tensors, any device)."""
        yt = np.array(to_numpy(y_true, "y_true"), copy=True)
        ys = np.array(to_numpy(y_score, "y_score"), copy=True)
        if yt.ndim == 0 or ys.ndim == 0:
            raise MeddxError(
                f"update() needs batches, got y_true shape {yt.shape} and y_score shape {ys.shape}"
            )
        if len(yt) != len(ys):
            raise MeddxError(f"y_true has {len(yt)} rows but y_score has {len(ys)}")
        if self._score and ys.shape[1:] != self._score[0].shape[1:]:
            raise MeddxError(
                f"y_score batch has shape {ys.shape}, earlier batches had {self._score[0].shape}"
            )
        if self._true and yt.shape[1:] != self._true[0].shape[1:]:
            raise MeddxError(f"y_true batch has shape {yt.shape}, earlier batches had {self._true[0].shape}")
        self._true.append(yt)
        self._score.append(ys)

    def compute(self, n_bootstrap: int = 0, seed: int = 0) -> dict[str, Any]:
        """:func:`evaluate_classification` on everything seen since the last :meth:`reset`."""
        if not self._true:
            raise MeddxError("no data: call update() before compute()")
        return evaluate_classification(
            np.concatenate(self._true),
            np.concatenate(self._score),
            self.task,
            self.class_names,
            n_bootstrap=n_bootstrap,
            seed=seed,
            threshold=self.threshold,
        )

    def reset(self) -> None:
        """Forget all batches."""
        self._true.clear()
        self._score.clear()
