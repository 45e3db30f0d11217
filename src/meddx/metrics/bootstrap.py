"""Percentile bootstrap confidence intervals for any ``metric(y_true, y_score) -> float``.

Resamples rows with replacement. A metric may also carry a ``batched(y_true, y_score, counts)`` attribute
that scores many resamples at once from a ``(b, N)`` matrix of draw counts (see
:func:`meddx.metrics.batched.auc_metric`); both paths see exactly the same resamples for a seed, so
they give the same interval, the batched one just faster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from meddx.errors import MeddxError

# Resample indices are drawn in chunks of at most this many (resample, row) cells, so memory stays small
# for big test sets; the chunking depends only on N, so results depend only on the seed.
_CHUNK_CELLS = 2_000_000


def resample_indices(n: int, n_bootstrap: int, seed: int = 0) -> Iterator[np.ndarray]:
    """Yield ``(b, n)`` int arrays of row indices drawn with replacement, ``n_bootstrap`` rows in all."""
    rng = np.random.default_rng(seed)
    per_chunk = max(1, _CHUNK_CELLS // max(n, 1))
    done = 0
    while done < n_bootstrap:
        b = min(per_chunk, n_bootstrap - done)
        yield rng.integers(0, n, size=(b, n))
        done += b


def indices_to_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Turn ``(b, m)`` row indices into ``(b, n)`` counts of how often each row was drawn."""
    b = idx.shape[0]
    flat = (np.arange(b)[:, None] * n + idx).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n)


def bootstrap_replicates(
    y_true: Any,
    y_score: Any,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> np.ndarray:
    """The metric on each of ``n_bootstrap`` resamples; NaN where it is undefined (e.g. one class only)."""
    y_true = np.asarray(y_true)
    y_score = np.asarray(y_score)
    n = len(y_true)
    if n == 0:
        raise MeddxError("cannot bootstrap an empty set (y_true has 0 rows)")
    if len(y_score) != n:
        raise MeddxError(f"y_true has {n} rows but y_score has {len(y_score)}")
    if n_bootstrap < 1:
        raise MeddxError(f"n_bootstrap must be >= 1, got {n_bootstrap}")
    batched = getattr(metric, "batched", None)
    out: list[np.ndarray] = []
    for idx in resample_indices(n, n_bootstrap, seed):
        if batched is not None:
            out.append(np.asarray(batched(y_true, y_score, indices_to_counts(idx, n)), dtype=float))
            continue
        vals = np.empty(len(idx))
        for k, rows in enumerate(idx):
            try:
                vals[k] = float(metric(y_true[rows], y_score[rows]))
            except ValueError:  # e.g. sklearn's "Only one class present in y_true"
                vals[k] = np.nan
        out.append(vals)
    return np.concatenate(out)


def bootstrap_ci(
    y_true: Any,
    y_score: Any,
    metric: Callable[[np.ndarray, np.ndarray], float],
    n_bootstrap: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile ``(1 - alpha)`` bootstrap interval of ``metric``; deterministic for a given ``seed``.

    Resamples where the metric is undefined (it returns NaN or raises ``ValueError``, as sklearn does when a
    resample holds a single class) are skipped. Returns ``(nan, nan)`` if every resample was undefined.
    """
    if not 0.0 < alpha < 1.0:
        raise MeddxError(f"alpha must be in (0, 1), got {alpha}")
    reps = bootstrap_replicates(y_true, y_score, metric, n_bootstrap=n_bootstrap, seed=seed)
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return (float("nan"), float("nan"))
    lo, hi = np.percentile(reps, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return (float(lo), float(hi))
