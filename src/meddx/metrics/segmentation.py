"""Segmentation metrics per case and class (MONAI's Dice, IoU, HD95, surface Dice) with bootstrap CIs.

Conventions (stated in ``metrics.json`` too): a case enters a class's mean only if its reference mask holds
that class (as MONAI's ``ignore_empty``). Cases whose reference is empty but whose prediction is not are
counted as ``false_positive_cases``; ``dice_global`` pools all voxels of all cases, so those false positives
lower it. HD95 is undefined (NaN, left out of the mean) when the prediction misses a class entirely; such
cases are counted as ``missed_cases`` and score 0 in Dice, IoU and surface Dice. Distances are in mm when a
``spacing`` is given, else in pixels/voxels.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from meddx.errors import MeddxError

METRICS = ("dice", "iou", "hd95", "surface_dice")


def _one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    from monai.networks.utils import one_hot

    return one_hot(labels[:, None].long(), num_classes)


def segmentation_scores(pred: Any, true: Any, num_classes: int, spacing: tuple[float, ...] | None = None,
                        tolerance: float = 1.0, batch: int = 16) -> dict[str, np.ndarray]:
    """Per-case, per-foreground-class metrics: arrays of shape (N, num_classes - 1).

    ``pred`` and ``true`` are (N, *spatial) integer label maps; ``tolerance`` is the surface-Dice
    tolerance in the unit of ``spacing`` (mm) or voxels.
    """
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou, compute_surface_dice

    pred_t, true_t = torch.as_tensor(np.asarray(pred)), torch.as_tensor(np.asarray(true))
    if pred_t.shape != true_t.shape:
        raise MeddxError(f"prediction shape {tuple(pred_t.shape)} differs from reference {tuple(true_t.shape)}")
    if pred_t.ndim not in (3, 4):
        raise MeddxError(f"expected (N, H, W) or (N, D, H, W) label maps, got shape {tuple(pred_t.shape)}")
    if num_classes < 2:
        raise MeddxError(f"need at least 2 classes (background + one), got {num_classes}")
    sp = list(spacing) if spacing is not None else None
    out: dict[str, list[np.ndarray]] = {k: [] for k in METRICS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on every empty mask; the conventions above handle them
        for i in range(0, len(pred_t), batch):
            p, t = _one_hot(pred_t[i:i + batch], num_classes), _one_hot(true_t[i:i + batch], num_classes)
            out["dice"].append(compute_dice(p, t, include_background=False).numpy())
            out["iou"].append(compute_iou(p, t, include_background=False).numpy())
            out["hd95"].append(compute_hausdorff_distance(p, t, include_background=False, percentile=95,
                                                          spacing=sp).numpy())
            sd = compute_surface_dice(p, t, [tolerance] * (num_classes - 1), include_background=False,
                                      spacing=sp).numpy()
            has_ref = t[:, 1:].flatten(2).any(-1).numpy()
            out["surface_dice"].append(np.where(has_ref, sd, np.nan))
    scores = {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}
    has_ref = np.stack([(true_t == c).flatten(1).any(1).numpy() for c in range(1, num_classes)], 1)
    has_pred = np.stack([(pred_t == c).flatten(1).any(1).numpy() for c in range(1, num_classes)], 1)
    scores["has_ref"], scores["has_pred"] = has_ref, has_pred
    inter = np.stack([((pred_t == c) & (true_t == c)).flatten(1).sum(1).numpy() for c in range(1, num_classes)], 1)
    sizes = np.stack([((pred_t == c).flatten(1).sum(1) + (true_t == c).flatten(1).sum(1)).numpy()
                      for c in range(1, num_classes)], 1)
    scores["intersection"], scores["size_sum"] = inter.astype(np.float64), sizes.astype(np.float64)
    return scores


def _nanmean(values: np.ndarray) -> float:
    v = values[np.isfinite(values)]
    return float(v.mean()) if v.size else float("nan")


def summarize_segmentation(scores: dict[str, np.ndarray], class_names: list[str], n_bootstrap: int = 1000,
                           ci_level: float = 0.95, seed: int = 0, distance_unit: str = "voxel") -> dict[str, Any]:
    """Means over cases per class, percentile-bootstrap CIs over cases, and the foreground-class average."""
    from meddx.metrics.bootstrap import bootstrap_ci

    fg = class_names[1:]
    per_class = []
    n = int(scores["dice"].shape[0])
    for k, name in enumerate(fg):
        row: dict[str, Any] = {"name": name, "cases_with_class": int(scores["has_ref"][:, k].sum())}
        for m in METRICS:
            vals = scores[m][:, k]
            row[m] = _nanmean(vals)
            if n_bootstrap and np.isfinite(vals).sum() >= 2:
                ci = bootstrap_ci(np.arange(n), vals, lambda _t, s: _nanmean(s), n_bootstrap=n_bootstrap,
                                  alpha=1 - ci_level, seed=seed)
                row[f"{m}_ci"] = [ci[0], ci[1]]
            else:
                row[f"{m}_ci"] = None
        inter, size = scores["intersection"][:, k].sum(), scores["size_sum"][:, k].sum()
        row["dice_global"] = float(2 * inter / size) if size else float("nan")
        row["false_positive_cases"] = int((~scores["has_ref"][:, k] & scores["has_pred"][:, k]).sum())
        row["missed_cases"] = int((scores["has_ref"][:, k] & ~scores["has_pred"][:, k]).sum())
        per_class.append(row)
    out: dict[str, Any] = {"task": "segmentation", "n": n, "class_names": class_names, "per_class": per_class,
                           "ci_level": ci_level, "n_bootstrap": n_bootstrap, "distance_unit": distance_unit}
    for m in (*METRICS, "dice_global"):
        out[m] = _nanmean(np.array([r[m] for r in per_class], dtype=np.float64))
    if len(per_class) == 1:
        for m in METRICS:
            out[f"{m}_ci"] = per_class[0][f"{m}_ci"]
    out["false_positive_cases"] = sum(r["false_positive_cases"] for r in per_class)
    out["missed_cases"] = sum(r["missed_cases"] for r in per_class)
    return out


def evaluate_segmentation(pred: Any, true: Any, class_names: list[str], spacing: tuple[float, ...] | None = None,
                          tolerance: float = 1.0, n_bootstrap: int = 1000) -> dict[str, Any]:
    """:func:`segmentation_scores` + :func:`summarize_segmentation` in one call."""
    scores = segmentation_scores(pred, true, len(class_names), spacing=spacing, tolerance=tolerance)
    out = summarize_segmentation(scores, class_names, n_bootstrap=n_bootstrap,
                                 distance_unit="mm" if spacing is not None else "voxel")
    out["surface_tolerance"] = tolerance
    return out


def mean_dice(pred: torch.Tensor, true: torch.Tensor, num_classes: int) -> float:
    """Fast mean foreground Dice over cases with a reference (validation monitor), torch only."""
    vals = []
    for c in range(1, num_classes):
        p, t = (pred == c).flatten(1), (true == c).flatten(1)
        has = t.any(1)
        if not bool(has.any()):
            continue
        inter = (p & t).sum(1).float()
        d = 2 * inter / (p.sum(1) + t.sum(1)).float().clamp_min(1)
        vals.append(d[has].mean())
    return float(torch.stack(vals).mean()) if vals else float("nan")
