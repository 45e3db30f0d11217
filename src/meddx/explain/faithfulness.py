"""Is a heat map faithful? Pure metric functions plus one small accumulator (the MONAI metrics pattern).

With ground-truth masks (the phantom's nodules):

* :func:`pointing_game` - does the map's peak fall inside the mask (Zhang et al. 2016)? Ties at the peak
  count as a hit when at least half of the tied peak pixels are inside; a constant map never hits.
  ``tolerance`` (pixels) grows the mask as in the original paper (15 px at 224 px); default 0.
* :func:`energy_in_mask` - the share of the map's total mass inside the mask (the "energy-based pointing
  game" of Score-CAM, Wang et al. 2020). A uniform map scores the mask's area fraction.

Without masks, with the model (the causal check):

* :func:`perturbation_curve` / :func:`deletion_auc` / :func:`insertion_auc` - remove the most salient
  pixels first (deletion: the class probability should fall fast, lower AUC is better) or reveal them first
  on a removed canvas (insertion: it should rise fast, higher is better) (Petsiuk et al. 2018, RISE).
  "Removed" means replaced by a strongly blurred copy of the image (``baseline="blur"``, sigma = 1/10 of the
  side), which erases small structures such as nodules while keeping the image's overall intensities in
  range; ``baseline="mean"`` uses 0 (the training mean after normalisation). Ties in the map are broken
  randomly (seeded), so flat regions are not removed in raster order.

Maps and masks are arrays of the same spatial shape (2D or 3D); all functions are rank-generic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.errors import MeddxError


def _pair(heatmap: Any, mask: Any) -> tuple[np.ndarray, np.ndarray]:
    h = np.asarray(heatmap, dtype=np.float64)
    m = np.asarray(mask) > 0
    if h.shape != m.shape:
        raise MeddxError(f"heat map shape {h.shape} differs from mask shape {m.shape}")
    return np.nan_to_num(h, nan=0.0), m


def _grow(mask: np.ndarray, tolerance: float) -> np.ndarray:
    if tolerance <= 0 or not mask.any():
        return mask
    from scipy import ndimage

    return ndimage.distance_transform_edt(~mask) <= tolerance


def pointing_game(heatmap: Any, mask: Any, tolerance: float = 0.0, rtol: float = 1e-6) -> bool:
    """True when the peak of ``heatmap`` lies inside ``mask`` (grown by ``tolerance`` pixels)."""
    h, m = _pair(heatmap, mask)
    hi, lo = float(h.max()), float(h.min())
    if hi - lo <= 0:
        return False
    peak = h >= hi - rtol * (hi - lo)
    inside = _grow(m, tolerance)
    return bool(inside[peak].mean() >= 0.5)


def energy_in_mask(heatmap: Any, mask: Any) -> float:
    """Fraction of the (non-negative) map's mass inside ``mask``; NaN for an all-zero map."""
    h, m = _pair(heatmap, mask)
    h = np.clip(h, 0, None)
    total = float(h.sum())
    return float(h[m].sum() / total) if total > 0 else math.nan


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a (N, C, *spatial) batch, reflect-padded, any spatial rank."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    rank, c = x.ndim - 2, x.shape[1]
    conv = (F.conv1d, F.conv2d, F.conv3d)[rank - 1]
    for axis in range(rank):
        shape = [1] * rank
        shape[axis] = k.numel()
        pad = [0, 0] * rank
        pad[2 * (rank - 1 - axis)] = pad[2 * (rank - 1 - axis) + 1] = radius
        mode = "reflect" if x.shape[2 + axis] > radius else "replicate"
        x = conv(F.pad(x, pad, mode=mode), k.view(1, 1, *shape).expand(c, 1, *shape), groups=c)
    return x


def removal_canvas(x: torch.Tensor, baseline: str | float | torch.Tensor = "blur") -> torch.Tensor:
    """What removed pixels are replaced with: a blurred copy (default), a constant, or a given tensor."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(x).expand_as(x)
    if baseline == "blur":
        return blur(x, max(1.0, min(x.shape[2:]) / 10))
    if baseline == "mean":
        return torch.zeros_like(x)
    if isinstance(baseline, (int, float)):
        return torch.full_like(x, float(baseline))
    raise MeddxError(f"unknown removal baseline {baseline!r}; use 'blur', 'mean', a number or a tensor")


def _default_prob(out: torch.Tensor) -> torch.Tensor:
    return torch.softmax(out, dim=-1)


@torch.no_grad()
def perturbation_curve(model: nn.Module, image: torch.Tensor, heatmap: Any, target: int, *,
                       mode: str = "deletion", steps: int = 20, baseline: str | float | torch.Tensor = "blur",
                       prob_fn: Callable[[torch.Tensor], torch.Tensor] = _default_prob, batch_size: int = 64,
                       seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fractions, target probabilities) as the most salient pixels are removed (or inserted) in ``steps``.

    ``image`` is one model-ready (C, *spatial) tensor and ``heatmap`` its (*spatial) map; all channels of a
    pixel go together. Step 0 is the intact image for deletion and the fully removed one for insertion.
    """
    if mode not in ("deletion", "insertion"):
        raise MeddxError(f"mode must be deletion or insertion, got {mode!r}")
    device = next(model.parameters()).device
    x = image.detach().float().to(device).unsqueeze(0)
    h = np.asarray(heatmap, dtype=np.float64)
    if h.shape != tuple(x.shape[2:]):
        raise MeddxError(f"heat map shape {h.shape} differs from the image's {tuple(x.shape[2:])}")
    n = h.size
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(n), -np.nan_to_num(h.ravel(), nan=-np.inf)))  # most salient first
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions * n).astype(np.int64)
    rank_t = torch.from_numpy(rank).to(device).view(1, 1, *h.shape)
    canvas = removal_canvas(x, baseline)
    was_training = model.training
    model.eval()
    probs = []
    try:
        for i in range(0, len(counts), batch_size):
            k = torch.from_numpy(counts[i:i + batch_size]).to(device).view(-1, 1, *([1] * h.ndim))
            chosen = rank_t < k  # (B, 1, *spatial): the top-k pixels
            if mode == "deletion":
                batch = torch.where(chosen, canvas, x)
            else:
                batch = torch.where(chosen, x, canvas)
            probs.append(prob_fn(model(batch).float())[:, target].cpu())
    finally:
        model.train(was_training)
    return fractions, torch.cat(probs).numpy().astype(np.float64)


def curve_auc(fractions: Sequence[float], scores: Sequence[float]) -> float:
    """Area under a perturbation curve (trapezoid rule over the removed fraction in [0, 1])."""
    f, s = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    return float(np.sum((f[1:] - f[:-1]) * (s[1:] + s[:-1]) / 2))


def deletion_auc(model: nn.Module, image: torch.Tensor, heatmap: Any, target: int, **kw: Any) -> float:
    """Area under the deletion curve (lower is better: the evidence the map points at really matters)."""
    return curve_auc(*perturbation_curve(model, image, heatmap, target, mode="deletion", **kw))


def insertion_auc(model: nn.Module, image: torch.Tensor, heatmap: Any, target: int, **kw: Any) -> float:
    """Area under the insertion curve (higher is better)."""
    return curve_auc(*perturbation_curve(model, image, heatmap, target, mode="insertion", **kw))


class FaithfulnessMeter:
    """Accumulate per-image scores over batches; ``aggregate()`` gives means and counts.

    >>> meter = FaithfulnessMeter()
    >>> meter.update(maps, masks)                       # pointing game + energy in mask
    >>> meter.add("deletion_auc", [0.21, 0.35])         # any other per-image score
    >>> meter.aggregate()["pointing_game"]
    """

    def __init__(self, tolerance: float = 0.0) -> None:
        self.tolerance = tolerance
        self.values: dict[str, list[float]] = {}

    def add(self, name: str, values: Any) -> None:
        self.values.setdefault(name, []).extend(float(v) for v in np.atleast_1d(np.asarray(values, np.float64)))

    def update(self, heatmaps: Any, masks: Any) -> None:
        for h, m in zip(heatmaps, masks):
            self.add("pointing_game", pointing_game(h, m, self.tolerance))
            self.add("energy_in_mask", energy_in_mask(h, m))

    def aggregate(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, vals in self.values.items():
            arr = np.asarray(vals, np.float64)
            ok = arr[np.isfinite(arr)]
            out[name] = float(ok.mean()) if ok.size else math.nan
            out[f"{name}_n"] = int(ok.size)
        return out

    def reset(self) -> None:
        self.values.clear()
