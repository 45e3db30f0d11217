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
from typing import Any, NamedTuple

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    multilabel_confusion_matrix,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from meddx.errors import MeddxError
from meddx.kinds import BINARY, KINDS, MULTI_CLASS, MULTI_LABEL, ORDINAL
from meddx.metrics.bootstrap import bootstrap_ci

ROC_MAX_POINTS = 200


class Checked(NamedTuple):
    """Validated inputs: ``y_true`` int ``(N,)`` or ``(N, C)``; ``y_score`` float ``(N, k)``; class count."""

    y_true: np.ndarray
    y_score: np.ndarray
    n_classes: int


def _to_numpy(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch
        x = x.detach().cpu()
        if x.is_floating_point() and x.element_size() < 4:  # float16/bfloat16 have no numpy twin
            x = x.float()
        x = x.numpy()
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise MeddxError(f"{name} cannot be read as an array: {e}") from None


def check_task(task: str) -> str:
    """Return ``task`` if it is one of :data:`meddx.kinds.KINDS`, else raise ``MeddxError``."""
    if task not in KINDS:
        expected = ", ".join(repr(t) for t in KINDS)
        raise MeddxError(f"unknown task {task!r}; expected one of {expected}")
    return task


def check_inputs(y_true: Any, y_score: Any, task: str, *, require_prob: bool = False) -> Checked:
    """Validate and normalise ``y_true``/``y_score`` for ``task``; every problem is a one-line MeddxError."""
    check_task(task)
    yt = _to_numpy(y_true, "y_true")
    ys = _to_numpy(y_score, "y_score")

    if ys.dtype.kind not in "biuf":
        raise MeddxError(f"y_score must be numeric, got dtype {ys.dtype}")
    if ys.ndim == 1 and task == BINARY:
        ys = ys[:, None]
    if ys.ndim != 2:
        want = "(N,) or (N, C)" if task == BINARY else "(N, C)"
        raise MeddxError(f"y_score must have shape {want} for task {task!r}, got shape {ys.shape}")
    if yt.ndim == 0:
        raise MeddxError(f"y_true must be an array, got a scalar ({yt.item()!r})")
    if len(yt) != len(ys):
        raise MeddxError(f"y_true has {len(yt)} rows but y_score has {len(ys)}")
    if len(ys) == 0:
        raise MeddxError("y_true and y_score are empty (0 rows)")
    ys = ys.astype(np.float64, copy=False)
    bad = ~np.isfinite(ys)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise MeddxError(f"y_score contains {int(bad.sum())} NaN/inf value(s) (first in row {row})")
    if require_prob:
        lo, hi = float(ys.min()), float(ys.max())
        if lo < -1e-6 or hi > 1 + 1e-6:
            worst = lo if lo < -1e-6 else hi
            raise MeddxError(
                f"y_score must be probabilities in [0, 1], found {worst:.4g}; apply softmax/sigmoid to logits"
            )

    n_cols = ys.shape[1]
    if task == BINARY and n_cols > 2:
        raise MeddxError(f"binary-class y_score must have 1 or 2 columns, got {n_cols}")
    if task in (MULTI_CLASS, ORDINAL) and n_cols < 2:
        raise MeddxError(f"{task} y_score needs one column per class (>= 2), got {n_cols}")

    if yt.dtype.kind not in "biuf":
        raise MeddxError(f"y_true must be numeric, got dtype {yt.dtype}")
    if yt.dtype.kind == "f":
        if not np.isfinite(yt).all():
            raise MeddxError("y_true contains NaN/inf")
        frac = yt[yt != np.round(yt)]
        if frac.size:
            raise MeddxError(f"y_true must hold integer labels, found {frac.flat[0]:g}")
    yt = yt.astype(np.int64)

    if task == MULTI_LABEL:
        if yt.ndim != 2 or yt.shape[1] != n_cols:
            raise MeddxError(
                f"multi-label y_true must have shape (N, {n_cols}) to match y_score, got {yt.shape}"
            )
        odd = yt[(yt != 0) & (yt != 1)]
        if odd.size:
            raise MeddxError(f"multi-label y_true must be 0/1, found {odd.flat[0]}")
        return Checked(yt, ys, n_cols)

    if yt.ndim == 2 and yt.shape[1] == 1:
        yt = yt[:, 0]
    if yt.ndim != 1:
        raise MeddxError(
            f"y_true must be (N,) or (N, 1) class ids for task {task!r}, got shape {yt.shape} "
            "(one-hot labels? pass class ids)"
        )
    n_classes = 2 if task == BINARY else n_cols
    out = yt[(yt < 0) | (yt >= n_classes)]
    if out.size:
        raise MeddxError(f"label {out.flat[0]} out of range for {n_classes} classes")
    return Checked(yt, ys, n_classes)


def check_class_names(class_names: Sequence[str] | None, n_classes: int) -> list[str]:
    """Default names ``"0"..`` when None; else check the count and uniqueness."""
    if class_names is None:
        return [str(i) for i in range(n_classes)]
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        raise MeddxError(f"{len(names)} class names given but the data has {n_classes} classes")
    dup = sorted({c for c in names if names.count(c) > 1})
    if dup:
        raise MeddxError(f"class names must be unique, {dup[0]!r} appears more than once")
    return names


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
    ys = _to_numpy(y_score, "y_score").astype(np.float64)
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
    """Per class: name, precision, recall, f1, sensitivity, specificity, support, auc, tp, fp, fn, tn.

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
                "support": int(s[i]),
                "auc": float(aucs[i]),
                "tp": int(tp),
                "fp": int(fp),
                "fn": int(fn),
                "tn": int(tn),
            }
        )
    return rows


# --- batched versions for the bootstrap ---------------------------------------------------------------------


def _weighted_auc(y01: np.ndarray, score: np.ndarray, counts_t: np.ndarray) -> np.ndarray:
    """AUC of each resample from row-draw counts ``counts_t`` (N, b); equals ``roc_auc_score`` on it.

    Mann-Whitney with ties counted 1/2: each drawn positive scores the drawn negatives strictly below it plus
    half of those tied with it. Negatives are sorted once; cumulative negative weights are then read at each
    positive's ``searchsorted`` position, so a resample costs O(N) with integer (exact) arithmetic.
    """
    pos = y01.astype(bool)
    neg_idx = np.flatnonzero(~pos)
    neg_idx = neg_idx[np.argsort(score[neg_idx], kind="stable")]
    neg_sorted = score[neg_idx]
    pos_scores = score[pos]
    lo = np.searchsorted(neg_sorted, pos_scores, side="left")
    hi = np.searchsorted(neg_sorted, pos_scores, side="right")
    b = counts_t.shape[1]
    cum = np.zeros((len(neg_idx) + 1, b), dtype=np.int64)
    np.cumsum(counts_t[neg_idx], axis=0, out=cum[1:])
    w_pos = counts_t[pos]
    below = cum[lo] if np.array_equal(lo, hi) else (cum[lo] + cum[hi]) / 2
    num = (w_pos * below).sum(axis=0)
    den = w_pos.sum(axis=0) * cum[-1]
    out = np.full(b, np.nan)
    ok = den > 0
    out[ok] = num[ok] / den[ok]
    return out


def _rowwise_nanmean(x: np.ndarray) -> np.ndarray:
    fin = np.isfinite(x)
    n = fin.sum(axis=1)
    tot = np.where(fin, x, 0.0).sum(axis=1)
    out = np.full(len(x), np.nan)
    out[n > 0] = tot[n > 0] / n[n > 0]
    return out


class _TaskMetric:
    """``metric(y_true, y_score) -> float`` with a fast ``batched`` form for :func:`bootstrap_ci`."""

    def __init__(self, kind: str, task: str, threshold: float = 0.5) -> None:
        self.kind, self.task, self.threshold = kind, check_task(task), threshold

    def __call__(self, y_true: Any, y_score: Any) -> float:
        if self.kind == "auc":
            return compute_auc(y_true, y_score, self.task)
        return compute_acc(y_true, y_score, self.task, self.threshold)

    def batched(self, y_true: Any, y_score: Any, counts: np.ndarray) -> np.ndarray:
        c = check_inputs(y_true, y_score, self.task)
        if self.kind == "acc":
            pred = predict_labels(c.y_score, self.task, self.threshold)
            correct = (pred == c.y_true).astype(np.float64)
            if correct.ndim == 2:  # multi-label: mean of per-column accuracies == mean over rows of row means
                correct = correct.mean(axis=1)
            return counts @ correct / counts.sum(axis=1)
        counts_t = np.ascontiguousarray(counts.T)  # row gathers are much faster than column gathers
        if self.task == BINARY:
            return _weighted_auc(c.y_true, c.y_score[:, -1], counts_t)
        cols = np.stack([_weighted_auc(t, s, counts_t) for t, s in _ovr(c, self.task)], axis=1)
        return _rowwise_nanmean(cols)


def auc_metric(task: str) -> _TaskMetric:
    """``compute_auc`` for ``task`` as a bootstrap-ready callable (fast batched path)."""
    return _TaskMetric("auc", task)


def acc_metric(task: str, threshold: float = 0.5) -> _TaskMetric:
    """``compute_acc`` for ``task`` as a bootstrap-ready callable (fast batched path)."""
    return _TaskMetric("acc", task, threshold)


# --- full evaluation ----------------------------------------------------------------------------------------


def _json_float(x: Any) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


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
    (precision/recall/f1/specificity averaged over classes where defined), roc, reliability.
    ``y_score`` must hold probabilities (calibration needs them).
    """
    from meddx.metrics.calibration import compute_ece, reliability_bins

    c = check_inputs(y_true, y_score, task, require_prob=True)
    names = check_class_names(class_names, c.n_classes)
    yt, ys = c.y_true, c.y_score

    acc = compute_acc(yt, ys, task, threshold)
    auc = compute_auc(yt, ys, task)
    aucs = auc_per_class(yt, ys, task)
    if task == BINARY:  # the task AUC only uses the positive column
        undefined = [] if _defined(yt) else list(names)
    else:
        undefined = [names[i] for i in range(c.n_classes) if not np.isfinite(aucs[i])]

    acc_ci = auc_ci = None
    if n_bootstrap and n_bootstrap > 0:
        acc_ci = [
            _json_float(v)
            for v in bootstrap_ci(yt, ys, acc_metric(task, threshold), n_bootstrap, alpha, seed)
        ]
        auc_ci = [_json_float(v) for v in bootstrap_ci(yt, ys, auc_metric(task), n_bootstrap, alpha, seed)]

    rows = per_class_metrics(yt, ys, task, names, threshold)
    macro = {
        k: _json_float(_nanmean([r[k] for r in rows])) for k in ("precision", "recall", "f1", "specificity")
    }
    per_class = [{k: (_json_float(v) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    rel = reliability_bins(yt, ys, task)

    return {
        "task": task,
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
    }


class ClassificationMetric:
    """Accumulate batches of labels and scores, then :meth:`compute` the full evaluation.

    Example::

        metric = ClassificationMetric(MULTI_CLASS, class_names)
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
        yt = np.array(_to_numpy(y_true, "y_true"), copy=True)
        ys = np.array(_to_numpy(y_score, "y_score"), copy=True)
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
