"""Checks that a split's images and labels fit its task, each failing with a one-line MeddxError naming the split.

One checker per label layout: class ids or 0/1 columns (classification), dense masks (segmentation) and one
box list per image (detection); :data:`VALIDATORS` maps a bundle's task to its checker.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from meddx.errors import MeddxError
from meddx.kinds import DETECTION, MULTI_LABEL, SEGMENTATION

if TYPE_CHECKING:
    from meddx.data.dataset import Split


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
            raise MeddxError(f"label {bad} out of range for {num_classes} classes", where)


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


VALIDATORS = {SEGMENTATION: validate_segmentation_split, DETECTION: validate_detection_split}
