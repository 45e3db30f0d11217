"""Calibration: expected calibration error (ECE) and reliability-diagram bins.

Single-label tasks (binary, multi-class, ordinal) use the top-label view: confidence is the probability of the
predicted class, accuracy whether the prediction was right (binary predicts positive when ``p > 0.5`` and
its confidence is ``max(p, 1 - p)``). Multi-label tasks use each label's positive probability against the
observed positive rate: ECE is the mean over labels of each label's binary ECE, and the reliability bins pool
all (sample, label) pairs.

Bins are ``n_bins`` equal-width intervals ``(lo, hi]`` of [0, 1] (a confidence of exactly 0 goes in the first
bin). ``ECE = sum_b (n_b / N) * |accuracy_b - confidence_b|``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddx.errors import MeddxError
from meddx.kinds import BINARY, MULTI_LABEL
from meddx.metrics._inputs import check_inputs


def _check_bins(n_bins: int) -> None:
    if int(n_bins) != n_bins or n_bins < 1:
        raise MeddxError(f"n_bins must be a positive integer, got {n_bins!r}")


def _bin_stats(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin: mean confidence, mean hit (accuracy or positive rate), count. Empty bins give nan."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        mean_hit = np.bincount(idx, weights=hit.astype(np.float64), minlength=n_bins) / count
    return mean_conf, mean_hit, count


def _ece(conf: np.ndarray, hit: np.ndarray, n_bins: int) -> float:
    mean_conf, mean_hit, count = _bin_stats(conf, hit, n_bins)
    ok = count > 0
    return float(np.sum(count[ok] / count.sum() * np.abs(mean_hit[ok] - mean_conf[ok])))


def _top_label(y_true: np.ndarray, y_score: np.ndarray, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Confidence of the predicted class and whether the prediction was correct."""
    if task == BINARY:
        p = y_score[:, -1]
        pred = (p > 0.5).astype(np.int64)
        return np.where(pred == 1, p, 1.0 - p), pred == y_true
    pred = np.argmax(y_score, axis=1)
    return y_score[np.arange(len(y_score)), pred], pred == y_true


def compute_ece(y_true: Any, y_score: Any, task: str, n_bins: int = 15) -> float:
    """Expected calibration error (0 = perfectly calibrated); see the module docstring for the definition."""
    _check_bins(n_bins)
    c = check_inputs(y_true, y_score, task, require_prob=True)
    if task == MULTI_LABEL:
        return float(np.mean([_ece(c.y_score[:, i], c.y_true[:, i], n_bins) for i in range(c.n_classes)]))
    conf, hit = _top_label(c.y_true, c.y_score, task)
    return _ece(conf, hit, n_bins)


def reliability_bins(y_true: Any, y_score: Any, task: str, n_bins: int = 15) -> dict[str, Any]:
    """Reliability-diagram data: ``bin_edges`` (n_bins + 1); per bin ``confidence``, ``accuracy``, ``count``.

    Empty bins have ``None`` confidence/accuracy (JSON-safe). For multi-label, ``accuracy`` is the observed
    fraction of positives in the bin (``"mode": "positive-rate"``); otherwise ``"mode": "top-label"``.
    """
    _check_bins(n_bins)
    c = check_inputs(y_true, y_score, task, require_prob=True)
    if task == MULTI_LABEL:
        conf, hit, mode = c.y_score.ravel(), c.y_true.ravel(), "positive-rate"
    else:
        (conf, hit), mode = _top_label(c.y_true, c.y_score, task), "top-label"
    mean_conf, mean_hit, count = _bin_stats(conf, hit, n_bins)

    def opt(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return {
        "mode": mode,
        "bin_edges": [float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)],
        "confidence": [opt(v) for v in mean_conf],
        "accuracy": [opt(v) for v in mean_hit],
        "count": [int(v) for v in count],
    }


MIN_PER_CLASS = 5  # fewer validation images of either class: Platt scaling is not fitted


def fit_platt_per_label(y_true: Any, logits: Any) -> list[tuple[float, float] | None]:
    """Multi-label: :func:`fit_platt` for each label's column on its own (None where that label cannot be
    fitted)."""
    y, z = np.asarray(y_true), np.asarray(logits, dtype=np.float64)
    if y.ndim != 2 or y.shape != z.shape:
        raise MeddxError(f"multi-label labels and logits must both be (N, labels), got {y.shape} and {z.shape}")
    return [fit_platt(y[:, j], z[:, j]) for j in range(y.shape[1])]


def fit_platt(y_true: Any, logit: Any) -> tuple[float, float] | None:
    """Platt scaling: ``(scale, shift)`` of the logistic regression of binary labels on a model's logit, so that
    ``sigmoid(scale * logit + shift)`` is calibrated on these data (Platt 1999; sklearn's LogisticRegression,
    unpenalised in effect). None when it cannot be fitted meaningfully: fewer than :data:`MIN_PER_CLASS` images of
    a class, classes the logit separates perfectly (the slope would grow without bound), or a slope <= 0 (a
    model that ranks backwards is not repaired by moving its threshold)."""
    from sklearn.linear_model import LogisticRegression

    y, z = np.asarray(y_true).reshape(-1).astype(np.int64), np.asarray(logit, dtype=np.float64).reshape(-1)
    if len(y) != len(z):
        raise MeddxError(f"labels and logits differ in length: {len(y)} vs {len(z)}")
    if min(np.sum(y == 0), np.sum(y == 1)) < MIN_PER_CLASS:
        return None
    if z[y == 1].min() > z[y == 0].max():
        return None
    lr = LogisticRegression(C=1e6, max_iter=1000).fit(z[:, None], y)
    scale, shift = float(lr.coef_[0, 0]), float(lr.intercept_[0])
    return (scale, shift) if scale > 0 else None


def fit_vector_scaling(y_true: Any, logits: Any) -> tuple[list[float], list[float]] | None:
    """Vector scaling (Guo et al. 2017): per class ``(scale_k, shift_k)`` with ``softmax(scale * z + shift)``
    calibrated on these data, the validation NLL minimised with ``scale_k > 0`` (each class's logit keeps its
    order). None when it cannot be fitted meaningfully: fewer than :data:`MIN_PER_CLASS` images of a class, or
    every image already right (the scales would grow without bound).

    Written here because none of the project's libraries fits it (sklearn's LogisticRegression would fit a full
    matrix, ``C * (C + 1)`` parameters, on a few hundred validation images); it is a smooth, convex-in-the-shifts
    problem of ``2 C`` parameters that scipy's L-BFGS solves with the exact gradient below."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax

    y, z = np.asarray(y_true).reshape(-1).astype(np.int64), np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or len(y) != len(z):
        raise MeddxError(f"labels (N,) and logits (N, classes) expected, got {y.shape} and {z.shape}")
    n, k = z.shape
    if np.bincount(y, minlength=k).min() < MIN_PER_CLASS or np.all(z.argmax(1) == y):
        return None
    onehot = np.eye(k)[y]

    def nll_and_grad(params: np.ndarray) -> tuple[float, np.ndarray]:
        scale, shift = np.exp(params[:k]), params[k:]
        logp = log_softmax(z * scale + shift, axis=1)
        d_u = (np.exp(logp) - onehot) / n  # d NLL / d (scale * z + shift)
        return -float(np.sum(logp * onehot)) / n, np.concatenate([(d_u * z).sum(0) * scale, d_u.sum(0)])

    res = minimize(nll_and_grad, np.zeros(2 * k), jac=True, method="L-BFGS-B", options={"maxiter": 500})
    if not np.all(np.isfinite(res.x)):
        return None
    return np.exp(res.x[:k]).tolist(), res.x[k:].tolist()
