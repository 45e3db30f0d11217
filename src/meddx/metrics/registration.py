"""Registration metrics: Jacobian determinant of a displacement field (folding %, SD of log det J), target
registration error on landmarks (mm), and Dice/HD95 of warped labels per structure (MONAI, through
:mod:`meddx.metrics.segmentation`), summarised over pairs with bootstrap CIs.

Convention (MONAI's ``Warp``): a displacement field ``ddf`` of shape (D, *S) in voxels maps a fixed-image
voxel ``x`` to ``x + ddf(x)`` in the moving image; channel ``k`` is the displacement along spatial axis ``k``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddx.errors import MeddxError

LOG_FLOOR = 1e-9  # det J is clipped here before the log, so folded voxels count as a large deviation


def jacobian_determinant(ddf: np.ndarray, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """det of the Jacobian of ``x -> x + ddf(x)`` at every voxel (central differences, one-sided at edges).

    Written by hand: MONAI has no Jacobian metric. ``spacing`` only matters for anisotropic voxels when
    ``ddf`` is in voxels: the determinant is unit-free, so a voxel-unit field needs none.
    """
    ddf = np.asarray(ddf, dtype=np.float64)
    ndim = ddf.ndim - 1
    if ndim not in (2, 3) or ddf.shape[0] != ndim:
        raise MeddxError(f"displacement field must be (2, H, W) or (3, D, H, W), got shape {ddf.shape}")
    if any(s < 2 for s in ddf.shape[1:]):
        raise MeddxError(f"displacement field too small for finite differences: {ddf.shape}")
    jac = np.empty((ndim, ndim) + ddf.shape[1:])
    for i in range(ndim):
        grads = np.gradient(ddf[i], axis=tuple(range(ndim)))
        for j in range(ndim):
            jac[i, j] = grads[j] + (1.0 if i == j else 0.0)
    return np.linalg.det(np.moveaxis(jac, (0, 1), (-2, -1)))


def folding_percent(det_j: np.ndarray) -> float:
    """Percentage of voxels whose Jacobian determinant is <= 0 (the map folds there)."""
    return float(100.0 * np.mean(np.asarray(det_j) <= 0))


def sd_log_jacobian(det_j: np.ndarray) -> float:
    """Standard deviation of log det J (det J clipped at :data:`LOG_FLOOR`): 0 for any rigid or uniform map."""
    return float(np.std(np.log(np.clip(np.asarray(det_j, dtype=np.float64), LOG_FLOOR, None))))


def sample_field(ddf: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Displacement at (K, D) voxel coordinates, linearly interpolated (edge values outside)."""
    from scipy.ndimage import map_coordinates

    points = np.asarray(points, dtype=np.float64).reshape(-1, ddf.ndim - 1)
    return np.stack([map_coordinates(np.asarray(c, np.float64), points.T, order=1, mode="nearest") for c in ddf], 1)


def target_registration_error(fixed_points: Any, moving_points: Any, ddf: np.ndarray | None,
                              spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """Distance (mm, or voxels without ``spacing``) between each moving landmark and where the registration
    maps its fixed partner (``p + ddf(p)``); ``ddf=None`` is the identity (the error before registration)."""
    p = np.asarray(fixed_points, dtype=np.float64)
    q = np.asarray(moving_points, dtype=np.float64)
    if p.shape != q.shape or p.ndim != 2:
        raise MeddxError(f"landmarks must be two (K, D) arrays of one shape, got {p.shape} and {q.shape}")
    if len(p) == 0:
        return np.zeros(0)
    mapped = p if ddf is None else p + sample_field(ddf, p)
    scale = np.ones(p.shape[1]) if spacing is None else np.asarray(spacing, dtype=np.float64)
    return np.linalg.norm((mapped - q) * scale, axis=1)


def field_regularity(ddf: np.ndarray) -> dict[str, float]:
    """Folding % and SD log det J of one field."""
    det = jacobian_determinant(ddf)
    return {"folding_pct": folding_percent(det), "sdlogj": sd_log_jacobian(det)}


def pair_scores(warped_labels: np.ndarray, fixed_labels: np.ndarray, ddfs: list[np.ndarray | None],
                num_classes: int, landmarks: list[tuple[np.ndarray, np.ndarray]] | None = None,
                spacing: tuple[float, ...] | None = None) -> dict[str, np.ndarray]:
    """Per-pair scores: Dice/HD95 per structure (N, K-1), mean TRE (N,), folding % and SDlogJ (N,)."""
    from meddx.metrics.segmentation import segmentation_scores

    seg = segmentation_scores(warped_labels, fixed_labels, num_classes, spacing=spacing)
    reg = [field_regularity(d) if d is not None else {"folding_pct": 0.0, "sdlogj": 0.0} for d in ddfs]
    out = {"dice": seg["dice"], "hd95": seg["hd95"], "has_ref": seg["has_ref"],
           "folding_pct": np.array([r["folding_pct"] for r in reg]), "sdlogj": np.array([r["sdlogj"] for r in reg])}
    if landmarks:
        out["tre_mm"] = np.array([float(np.mean(target_registration_error(p, q, d, spacing))) if len(p) else np.nan
                                  for (p, q), d in zip(landmarks, ddfs)])
    return out


def summarize_registration(scores: dict[str, np.ndarray], class_names: list[str], n_bootstrap: int = 1000,
                           seconds_per_pair: float | None = None, seed: int = 0) -> dict[str, Any]:
    """Means over pairs with percentile-bootstrap CIs over pairs; Dice/HD95 also per structure."""
    from meddx.metrics.bootstrap import bootstrap_ci

    def mean_ci(values: np.ndarray) -> tuple[float, list[float] | None]:
        v = np.asarray(values, dtype=np.float64)
        m = _nanmean(v)
        if not n_bootstrap or np.isfinite(v).sum() < 2:
            return m, None
        lo, hi = bootstrap_ci(np.arange(len(v)), v, lambda _t, s: _nanmean(s), n_bootstrap=n_bootstrap, seed=seed)
        return m, [float(lo), float(hi)]

    n = int(scores["dice"].shape[0])
    per_structure = []
    for k, name in enumerate(class_names[1:]):
        row: dict[str, Any] = {"name": name, "pairs_with_structure": int(scores["has_ref"][:, k].sum())}
        for m in ("dice", "hd95"):
            row[m], row[f"{m}_ci"] = mean_ci(scores[m][:, k])
        per_structure.append(row)
    out: dict[str, Any] = {"task": "registration", "n": n, "class_names": class_names,
                           "per_structure": per_structure, "n_bootstrap": n_bootstrap}
    for m in ("dice", "hd95"):  # per pair: mean over the structures it holds, then over pairs
        out[m], out[f"{m}_ci"] = mean_ci(np.array([_nanmean(r) for r in scores[m]]))
    for m in ("tre_mm", "folding_pct", "sdlogj"):
        if m in scores:
            out[m], out[f"{m}_ci"] = mean_ci(scores[m])
    if seconds_per_pair is not None:
        out["seconds_per_pair"] = float(seconds_per_pair)
    return out


def _nanmean(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")
