"""Classification metrics in a bootstrap-ready form: ``metric(y_true, y_score)`` plus a fast ``batched`` path.

:func:`meddx.metrics.bootstrap.bootstrap_replicates` calls ``metric.batched(y_true, y_score, counts)`` with a
``(b, N)`` matrix of row-draw counts and so scores ``b`` resamples at once, with the same values as calling the
metric on each resample.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddx.kinds import BINARY
from meddx.metrics._inputs import check_inputs, check_task
from meddx.metrics.scores import _ovr, compute_acc, compute_auc, predict_labels


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
