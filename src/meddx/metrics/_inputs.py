"""Validation of ``y_true``/``y_score`` for the classification metrics: every problem is a one-line MeddxError.

Checks run in a fixed order (array shapes and row counts, then score values, then the score columns the kind
needs, then the labels the kind needs), so a given bad input always gets the same message.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from meddx.errors import MeddxError
from meddx.kinds import BINARY, KINDS, MULTI_CLASS, MULTI_LABEL, ORDINAL


class Checked(NamedTuple):
    """Validated inputs: ``y_true`` int ``(N,)`` or ``(N, C)``; ``y_score`` float ``(N, k)``; class count."""

    y_true: np.ndarray
    y_score: np.ndarray
    n_classes: int


def to_numpy(x: Any, name: str) -> np.ndarray:
    """``x`` (array-like or torch tensor on any device, without importing torch) as a numpy array."""
    if hasattr(x, "detach"):  # torch tensor
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


def _score_matrix(ys: np.ndarray, task: str) -> np.ndarray:
    """Numeric scores as ``(N, k)``; binary-class also takes ``(N,)`` positive-class probabilities."""
    if ys.dtype.kind not in "biuf":
        raise MeddxError(f"y_score must be numeric, got dtype {ys.dtype}")
    if ys.ndim == 1 and task == BINARY:
        ys = ys[:, None]
    if ys.ndim != 2:
        want = "(N,) or (N, C)" if task == BINARY else "(N, C)"
        raise MeddxError(f"y_score must have shape {want} for task {task!r}, got shape {ys.shape}")
    return ys


def _check_rows(yt: np.ndarray, ys: np.ndarray) -> None:
    if yt.ndim == 0:
        raise MeddxError(f"y_true must be an array, got a scalar ({yt.item()!r})")
    if len(yt) != len(ys):
        raise MeddxError(f"y_true has {len(yt)} rows but y_score has {len(ys)}")
    if len(ys) == 0:
        raise MeddxError("y_true and y_score are empty (0 rows)")


def _score_values(ys: np.ndarray, require_prob: bool) -> np.ndarray:
    """float64 scores, all finite, and in [0, 1] when ``require_prob``."""
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
    return ys


def _check_columns(n_cols: int, task: str) -> None:
    """Binary-class: 1 or 2 score columns; multi-class and ordinal: one per class; multi-label: any."""
    if task == BINARY and n_cols > 2:
        raise MeddxError(f"binary-class y_score must have 1 or 2 columns, got {n_cols}")
    if task in (MULTI_CLASS, ORDINAL) and n_cols < 2:
        raise MeddxError(f"{task} y_score needs one column per class (>= 2), got {n_cols}")


def _integer_labels(yt: np.ndarray) -> np.ndarray:
    """Numeric, finite, integer-valued labels as int64."""
    if yt.dtype.kind not in "biuf":
        raise MeddxError(f"y_true must be numeric, got dtype {yt.dtype}")
    if yt.dtype.kind == "f":
        if not np.isfinite(yt).all():
            raise MeddxError("y_true contains NaN/inf")
        frac = yt[yt != np.round(yt)]
        if frac.size:
            raise MeddxError(f"y_true must hold integer labels, found {frac.flat[0]:g}")
    return yt.astype(np.int64)


def _multi_label_true(yt: np.ndarray, n_cols: int) -> np.ndarray:
    """Multi-label ``y_true``: ``(N, C)`` 0/1 with one column per score column."""
    if yt.ndim != 2 or yt.shape[1] != n_cols:
        raise MeddxError(f"multi-label y_true must have shape (N, {n_cols}) to match y_score, got {yt.shape}")
    odd = yt[(yt != 0) & (yt != 1)]
    if odd.size:
        raise MeddxError(f"multi-label y_true must be 0/1, found {odd.flat[0]}")
    return yt


def _class_ids(yt: np.ndarray, n_classes: int, task: str) -> np.ndarray:
    """Single-label ``y_true``: ``(N,)`` (or ``(N, 1)``, squeezed) class ids in ``[0, n_classes)``."""
    if yt.ndim == 2 and yt.shape[1] == 1:
        yt = yt[:, 0]
    if yt.ndim != 1:
        raise MeddxError(
            f"y_true must be (N,) or (N, 1) class ids for task {task!r}, got shape {yt.shape} "
            "(one-hot labels? pass class ids)"
        )
    out = yt[(yt < 0) | (yt >= n_classes)]
    if out.size:
        raise MeddxError(f"label {out.flat[0]} out of range for {n_classes} classes")
    return yt


def check_inputs(y_true: Any, y_score: Any, task: str, *, require_prob: bool = False) -> Checked:
    """Validate and normalise ``y_true``/``y_score`` for ``task``; every problem is a one-line MeddxError."""
    check_task(task)
    yt = to_numpy(y_true, "y_true")
    ys = _score_matrix(to_numpy(y_score, "y_score"), task)
    _check_rows(yt, ys)
    ys = _score_values(ys, require_prob)
    n_cols = ys.shape[1]
    _check_columns(n_cols, task)
    yt = _integer_labels(yt)
    if task == MULTI_LABEL:
        return Checked(_multi_label_true(yt, n_cols), ys, n_cols)
    n_classes = 2 if task == BINARY else n_cols
    return Checked(_class_ids(yt, n_classes, task), ys, n_classes)


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
