"""Classification metrics with MedMNIST's definitions of ACC and AUC, plus per-class and summary metrics.

Task types are MedMNIST's strings (see :data:`meddx.kinds.KINDS`). Inputs:

* ``y_true``: ``(N,)`` int class ids (``(N, 1)`` is squeezed), or ``(N, C)`` 0/1 for multi-label;
* ``y_score``: ``(N, C)`` probabilities: softmax rows for binary/multi-class/ordinal, one sigmoid per column
  for multi-label. For binary-class, ``(N,)`` or ``(N, 1)`` positive-class probabilities are also accepted,
  and the last column is the positive class (as in ``medmnist/evaluator.py``).

Undefined AUC: a class whose one-vs-rest labels hold a single value (no positives, or no negatives) has no
AUC. Such a class gets ``nan`` in :func:`auc_per_class` (no sklearn warning or exception is raised) and the
task AUC is the mean over the classes where it is defined (``nan`` if none).
:func:`evaluate_classification` lists those classes as ``"auc_undefined_classes"``.

Numpy arrays or torch tensors are accepted everywhere (tensors are moved to CPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from meddx.kinds import BINARY, MULTI_LABEL
from meddx.metrics._inputs import Checked, check_class_names, check_inputs, check_task, to_numpy

ROC_MAX_POINTS = 200


# --- one-vs-rest views -------------------------------------------------------------------------------------


def _ovr(c: Checked, task: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (0/1 targets, scores) for one-vs-rest metrics (AUC, ROC)."""
    yt, ys = c.y_true, c.y_score
    if task == MULTI_LABEL:
        return [(yt[:, i], ys[:, i]) for i in range(c.n_classes)]
    if task == BINARY:
        pos = ys[:, -1]
        neg = ys[:, 0] if ys.shape[1] == 2 else 1.0 - pos
        return [((yt == 0).astype(np.int64), neg), ((yt == 1).astype(np.int64), pos)]
    return [((yt == i).astype(np.int64), ys[:, i]) for i in range(c.n_classes)]


def _defined(y01: np.ndarray) -> bool:
    s = int(y01.sum())
    return 0 < s < len(y01)


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=float)
    x = x[np.isfinite(x)]
    return float(x.mean()) if x.size else float("nan")


def auc_per_class(y_true: Any, y_score: Any, task: str) -> np.ndarray:
    """One-vs-rest ROC AUC per class; ``nan`` where undefined (class absent, or every sample in it)."""
    c = check_inputs(y_true, y_score, task)
    return np.array([roc_auc_score(t, s) if _defined(t) else np.nan for t, s in _ovr(c, task)], dtype=float)


def compute_auc(y_true: Any, y_score: Any, task: str) -> float:
    """ROC AUC as ``medmnist/evaluator.py`` ``getAUC``.

    Multi-label: mean of per-column AUCs. Binary: AUC of the last score column. Multi-class/ordinal: mean
    of one-vs-rest AUCs. Classes with undefined AUC are left out of the mean (``nan`` if none is defined).
    """
    c = check_inputs(y_true, y_score, task)
    if task == BINARY:
        return float(roc_auc_score(c.y_true, c.y_score[:, -1])) if _defined(c.y_true) else float("nan")
    return _nanmean(auc_per_class(c.y_true, c.y_score, task))


def predict_labels(y_score: Any, task: str, threshold: float = 0.5) -> np.ndarray:
    """Hard labels: argmax; binary ``y_score[:, -1] > threshold``; multi-label ``> threshold`` per column."""
    check_task(task)
    ys = to_numpy(y_score, "y_score").astype(np.float64)
    if task == BINARY:
        return ((ys[:, -1] if ys.ndim == 2 else ys) > threshold).astype(np.int64)
    if task == MULTI_LABEL:
        return (ys > threshold).astype(np.int64)
    return np.argmax(ys, axis=-1).astype(np.int64)


def compute_acc(y_true: Any, y_score: Any, task: str, threshold: float = 0.5) -> float:
    """Accuracy as ``medmnist/evaluator.py`` ``getACC`` (multi-label: mean of per-column accuracies)."""
    c = check_inputs(y_true, y_score, task)
    pred = predict_labels(c.y_score, task, threshold)
    if task == MULTI_LABEL:
        return float(np.mean([accuracy_score(c.y_true[:, i], pred[:, i]) for i in range(c.n_classes)]))
    return float(accuracy_score(c.y_true, pred))


def confusion(y_true: Any, y_score: Any, task: str, threshold: float = 0.5) -> np.ndarray:
    """``(C, C)`` confusion matrix (rows true, columns predicted); multi-label: ``(C, 2, 2)`` per label."""
    c = check_inputs(y_true, y_score, task)
    pred = predict_labels(c.y_score, task, threshold)
    if task == MULTI_LABEL:
        return multilabel_confusion_matrix(c.y_true, pred, labels=list(range(c.n_classes)))
    return confusion_matrix(c.y_true, pred, labels=list(range(c.n_classes)))


def _safe_div(a: float, b: float) -> float:
    return float(a / b) if b > 0 else float("nan")


def per_class_metrics(
    y_true: Any, y_score: Any, task: str, class_names: Sequence[str] | None = None, threshold: float = 0.5
) -> list[dict[str, Any]]:
    """Per class: name, precision, recall, f1, sensitivity, specificity, npv, support, auc, tp, fp, fn, tn.

    Undefined values (e.g. precision of a class never predicted, AUC of a class absent from ``y_true``) are
    ``nan``; no warnings are raised. ``support`` is the number of samples of (or positive for) the class.
    """
    c = check_inputs(y_true, y_score, task)
    names = check_class_names(class_names, c.n_classes)
    pred = predict_labels(c.y_score, task, threshold)
    labels = list(range(c.n_classes))
    p, r, f, s = precision_recall_fscore_support(
        c.y_true, pred, labels=labels, average=None, zero_division=np.nan
    )
    mcm = multilabel_confusion_matrix(c.y_true, pred, labels=labels)  # per class [[tn, fp], [fn, tp]]
    aucs = auc_per_class(c.y_true, c.y_score, task)
    rows = []
    for i, name in enumerate(names):
        (tn, fp), (fn, tp) = mcm[i]
        rows.append(
            {
                "name": name,
                "precision": float(p[i]),
                "recall": float(r[i]),
                "f1": float(f[i]),
                "sensitivity": _safe_div(tp, tp + fn),
                "specificity": _safe_div(tn, tn + fp),
                "npv": _safe_div(tn, tn + fn),
                "support": int(s[i]),
                "auc": float(aucs[i]),
                "tp": int(tp),
                "fp": int(fp),
                "fn": int(fn),
                "tn": int(tn),
            }
        )
    return rows


def _downsample(fpr: np.ndarray, tpr: np.ndarray, max_points: int = ROC_MAX_POINTS) -> tuple[list, list]:
    if len(fpr) > max_points:
        keep = np.unique(np.round(np.linspace(0, len(fpr) - 1, max_points)).astype(int))
        fpr, tpr = fpr[keep], tpr[keep]
    return [round(float(v), 5) for v in fpr], [round(float(v), 5) for v in tpr]


def roc_curves(
    y_true: Any, y_score: Any, task: str, class_names: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """One-vs-rest ROC curves ``{class: {"fpr", "tpr", "auc"}}``, at most 200 points each.

    Binary-class gives only the positive (last) class; classes with undefined AUC are left out.
    """
    c = check_inputs(y_true, y_score, task)
    names = check_class_names(class_names, c.n_classes)
    out: dict[str, dict[str, Any]] = {}
    for i, (t, s) in enumerate(_ovr(c, task)):
        if (task == BINARY and i == 0) or not _defined(t):
            continue
        fpr, tpr, _ = roc_curve(t, s, drop_intermediate=True)
        fl, tl = _downsample(fpr, tpr)
        out[names[i]] = {"fpr": fl, "tpr": tl, "auc": float(roc_auc_score(t, s))}
    return out
