"""Checks that a split's images and labels fit its task, each failing with a one-line MeddxError naming the split.

One checker per label layout: class ids or 0/1 columns (classification), dense masks (segmentation) and one
box list per image (detection); :data:`VALIDATORS` maps a bundle's task to its checker.

The label contract of classification data, whatever its source or file name: labels are whole numbers (one
class id per image) or a 0/1 matrix (multi-label); class ids run from 0 without gaps; every class has
images in the training split (every multi-label column a positive), so a val/test label unseen in training is
an error. :func:`integer_labels` and :func:`infer_class_count` check raw label arrays of a file whose classes
are not declared; :func:`check_class_coverage` checks every classification bundle.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from meddx.errors import MeddxError
from meddx.kinds import DETECTION, MULTI_LABEL, REGISTRATION, SEGMENTATION

if TYPE_CHECKING:
    from meddx.data.split import Split


def _check_rank(x: torch.Tensor, where: str) -> None:
    if x.ndim not in (4, 5):
        raise MeddxError(f"images must be (N, C, H, W) or (N, C, D, H, W), got shape {tuple(x.shape)}", where)


def _check_finite(x: torch.Tensor, where: str) -> None:
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise MeddxError("images contain NaN or infinite values", where)


def validate_split(split: Split, task: str, num_classes: int, where: str) -> None:
    """Check shapes, label range and finiteness; raise a one-line MeddxError naming ``where``."""
    x, y = split.images, split.labels
    _check_rank(x, where)
    if x.shape[0] != y.shape[0]:
        raise MeddxError(f"{x.shape[0]} images but {y.shape[0]} labels", where)
    if x.shape[0] == 0:
        return
    _check_finite(x, where)
    if task == MULTI_LABEL:
        if y.ndim != 2 or y.shape[1] != num_classes:
            raise MeddxError(f"multi-label task needs labels of shape (N, {num_classes}), got {tuple(y.shape)}",
                             where)
        bad = ~((y == 0) | (y == 1))
        if bool(bad.any()):
            raise MeddxError(f"multi-label labels must be 0/1, found {y[bad][0].item()}", where)
    else:
        if y.ndim != 1:
            raise MeddxError(f"labels must be one class id per image, got shape {tuple(y.shape)}", where)
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= num_classes:
            bad = lo if lo < 0 else hi
            raise MeddxError(f"label {bad} out of range for {num_classes} classes (class ids run 0..{num_classes - 1}"
                             f"; {DECLARE_HINT})", where)


def validate_segmentation_split(split: Split, task: str, num_classes: int, where: str) -> None:
    """Masks must be (N, 1, *spatial) integers in [0, num_classes) with the images' spatial shape."""
    x, y = split.images, split.labels
    _check_rank(x, where)
    if y.ndim != x.ndim or y.shape[1] != 1:
        raise MeddxError(f"masks must be (N, 1, *spatial) for images of shape {tuple(x.shape)}, got "
                         f"{tuple(y.shape)}", where)
    if x.shape[0] != y.shape[0]:
        raise MeddxError(f"{x.shape[0]} images but {y.shape[0]} masks", where)
    if tuple(x.shape[2:]) != tuple(y.shape[2:]):
        raise MeddxError(f"mask shape {tuple(y.shape[2:])} does not match image shape {tuple(x.shape[2:])}", where)
    if y.is_floating_point():
        raise MeddxError("masks must hold integer class ids", where)
    _check_finite(x, where)
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise MeddxError(f"mask value {int(y.max())} out of range for {num_classes} classes", where)


def validate_detection_split(split: Split, task: str, num_classes: int, where: str) -> None:
    """Images (N, C, *spatial) and one target dict per image with boxes inside the image and known classes."""
    x, y = split.images, split.labels
    _check_rank(x, where)
    if not isinstance(y, list) or len(y) != x.shape[0]:
        raise MeddxError(f"{x.shape[0]} images need as many box lists, got "
                         f"{len(y) if isinstance(y, list) else type(y).__name__}", where)
    dims = x.ndim - 2
    extent = np.asarray(x.shape[2:][::-1] if dims == 2 else x.shape[2:], np.float32)  # x, y order for 2D
    for i, t in enumerate(y):
        boxes, labels = np.asarray(t.get("boxes")), np.asarray(t.get("labels"))
        name = split.ids[i] if split.ids else f"image {i}"
        if boxes.ndim != 2 or boxes.shape[1] != 2 * dims or len(labels) != len(boxes):
            raise MeddxError(f"{name}: boxes must be (k, {2 * dims}) with k labels, got {boxes.shape} and "
                             f"{labels.shape}", where)
        if len(boxes) == 0:
            continue
        if (boxes[:, dims:] <= boxes[:, :dims]).any():
            raise MeddxError(f"{name}: a box has zero or negative size", where)
        if (boxes[:, :dims] < -1).any() or (boxes[:, dims:] > extent + 1).any():
            raise MeddxError(f"{name}: a box lies outside the image of size {tuple(int(e) for e in extent)}", where)
        if labels.min() < 0 or labels.max() >= num_classes:
            raise MeddxError(f"{name}: class index out of range for {num_classes} classes", where)


DECLARE_HINT = ("to declare the classes, put their names in a `classes` array inside the .npz or in a sidecar "
                "<file>.classes.json, a JSON list of names in class-id order")


def _values(vals, limit: int = 12) -> str:
    vals = [int(v) for v in vals]
    return ", ".join(map(str, vals[:limit])) + (f", ... ({len(vals)} values)" if len(vals) > limit else "")


def integer_labels(y: np.ndarray, where: str) -> np.ndarray:
    """``y`` as int64, or a one-line error quoting the first value that is not a whole number."""
    y = np.asarray(y)
    if y.dtype.kind in "biu":
        return y.astype(np.int64)
    if y.dtype.kind != "f":
        raise MeddxError(f"labels must be integer class ids (or a 0/1 matrix), got dtype {y.dtype}", where)
    bad = ~np.isfinite(y) | (y != np.round(y))
    if bad.any():
        raise MeddxError(f"labels must be whole-number class ids, found {float(y[bad].flat[0]):g}", where)
    return y.astype(np.int64)


def infer_class_count(labels: dict[str, np.ndarray], multi: bool, where: str) -> int:
    """Class count of undeclared integer labels (split name -> array): columns, or 1 + the largest id when the
    ids present in all splits run 0..K-1 without a gap; the gap, a negative id or fewer than 2 classes fail."""
    if multi:
        cols = {int(y.shape[1]) for y in labels.values()}
        if len(cols) != 1:
            raise MeddxError(f"multi-label splits have different column counts {sorted(cols)}", where)
        return cols.pop()
    present = np.unique(np.concatenate([np.asarray(y).reshape(-1) for y in labels.values()]))
    if present.size and present[0] < 0:
        raise MeddxError(f"labels must be class ids >= 0, found {int(present[0])}", where)
    k = int(present[-1]) + 1 if present.size else 0
    if present.size != k:
        absent = sorted(set(range(k)) - set(present.tolist()))
        raise MeddxError(f"labels must be class ids 0..K-1 without gaps, found {_values(present)} (absent: "
                         f"{_values(absent)}); renumber them 0..{present.size - 1}, and {DECLARE_HINT}", where)
    if k < 2:
        raise MeddxError(f"labels hold {k} class(es) ({_values(present)}); classification needs at least 2", where)
    return k


def check_class_coverage(train: Split, others: dict[str, Split], task: str, class_names: list[str],
                         where: str) -> None:
    """Every class has a training image (every multi-label column a positive), so val/test (whose ranges are
    checked per split before this) hold no label that training lacks; the error names the splits that do."""
    y = train.labels
    if task == MULTI_LABEL:
        absent = torch.nonzero(y.sum(0) == 0).flatten().tolist() if len(train) else list(range(len(class_names)))
        what, elsewhere = "label column(s)", ""
    else:
        absent = sorted(set(range(len(class_names))) - set(torch.unique(y).tolist()))
        what = "class(es)"
        used = [name for name, split in others.items() if len(split) and bool(torch.isin(
            split.labels, torch.tensor(absent, dtype=split.labels.dtype)).any())] if absent else []
        elsewhere = f" but occur in {' and '.join(used)}" if used else ""
    if absent:
        names = ", ".join(f"{i} ({class_names[i]!r})" for i in absent[:8]) + (" ..." if len(absent) > 8 else "")
        raise MeddxError(f"{what} {names} never occur in the training split{elsewhere}; every class needs "
                         f"training images (renumber the labels 0..K-1 over the classes that do occur; "
                         f"{DECLARE_HINT})", f"{where} [train]")


def validate_registration_split(split: Split, task: str, num_classes: int, where: str) -> None:
    """Registration pairs: images (N, 2, *S) = (fixed, moving); labels (N, 2, *S) label maps on the same grid."""
    x, y = split.images, split.labels
    _check_rank(x, where)
    if x.shape[1] != 2:
        raise MeddxError(f"registration images must hold (fixed, moving) as 2 channels, got {x.shape[1]}", where)
    if tuple(y.shape) != tuple(x.shape):
        raise MeddxError(f"registration labels {tuple(y.shape)} must match the images {tuple(x.shape)}", where)
    _check_finite(x, where)
    if y.numel() and int(y.max()) >= num_classes:
        raise MeddxError(f"label {int(y.max())} out of range for {num_classes} structures", where)


VALIDATORS = {SEGMENTATION: validate_segmentation_split, DETECTION: validate_detection_split,
              REGISTRATION: validate_registration_split}
