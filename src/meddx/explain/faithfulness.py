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
  "Removed" means imputed from the kept pixels nearby (``baseline="impute"``, the idea of ROAD, Rong et al.
  2022), so that removal does not itself create a finding; ``"blur"`` (a strongly blurred copy) and
  ``"mean"`` (0, the training mean after normalisation) are the classic alternatives. Ties in the map are
  broken randomly (seeded), so flat regions are not removed in raster order.

Maps and masks are arrays of the same spatial shape (2D or 3D); all functions are rank-generic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
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


def impute(x: torch.Tensor, removed: torch.Tensor, sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0),
           support: float = 0.1) -> torch.Tensor:
    """Replace ``removed`` pixels (a (N, 1, *spatial) bool mask) by a weighted mean of the kept pixels nearby.

    Normalised convolution at the finest scale in ``sigmas`` that has enough kept pixels around (a Gaussian
    weight of at least ``support``); where nothing is kept within reach, 0 (the training mean after
    normalisation). This is the idea of ROAD's linear imputation (Rong et al. 2022), written here because
    pytorch-grad-cam's ROAD is 2D-only and solves a sparse system per image: a removed nodule becomes the
    lung around it instead of a grey or blurred blob that the classifier may read as a finding.
    """
    kept = (~removed).to(x.dtype)
    fill = torch.zeros_like(x)
    done = torch.zeros_like(removed)
    for sigma in sigmas:
        den = blur(kept, sigma)
        ok = (den > support) & ~done
        if ok.any():
            fill = torch.where(ok, blur(x * kept, sigma) / den.clamp_min(1e-6), fill)
            done |= ok
        if bool(done.all()):
            break
    return torch.where(removed, fill, x)


def remove(x: torch.Tensor, removed: torch.Tensor, baseline: str | float | torch.Tensor = "impute") -> torch.Tensor:
    """``x`` with the ``removed`` pixels replaced: imputed from kept neighbours (default), blurred or constant."""
    if isinstance(baseline, torch.Tensor):
        return torch.where(removed, baseline.to(x).expand_as(x), x)
    if baseline == "impute":
        return impute(x, removed)
    if baseline == "blur":
        return torch.where(removed, blur(x, max(1.0, min(x.shape[2:]) / 10)), x)
    if baseline == "mean":
        return torch.where(removed, torch.zeros_like(x), x)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.where(removed, torch.full_like(x, float(baseline)), x)
    raise MeddxError(f"unknown removal baseline {baseline!r}; use 'impute', 'blur', 'mean', a number or a tensor")


def _default_prob(out: torch.Tensor) -> torch.Tensor:
    return torch.softmax(out, dim=-1)


@dataclass
class CurveOptions:
    """How a deletion/insertion curve is made: ``mode``, ``steps`` fractions up to ``max_fraction``, the removal
    ``baseline`` (see :func:`remove`), ``prob_fn`` (logits -> probabilities), ``batch_size`` and the tie ``seed``."""

    mode: str = "deletion"
    steps: int = 16
    max_fraction: float = 1.0
    baseline: str | float | torch.Tensor = "impute"
    prob_fn: Callable[[torch.Tensor], torch.Tensor] = _default_prob
    batch_size: int = 256
    seed: int = 0


@torch.no_grad()
def perturbation_curves(model: nn.Module, images: torch.Tensor, heatmaps: Any, targets: Any,
                        options: CurveOptions | None = None, **fields: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fractions (steps+1,), target probabilities (N, steps+1)) as the most salient pixels are removed/inserted.

    ``images`` are model-ready (N, C, *spatial), ``heatmaps`` (N, *spatial), ``targets`` a class index or one
    per image; all channels of a pixel go together; ``options`` (or :class:`CurveOptions` fields as keywords).
    Step 0 is the intact image for deletion and the fully removed one for insertion. Ties in a map are broken
    randomly (seeded), so flat regions are not taken in raster order. ``max_fraction`` < 1 stops the deletion
    after that share of the pixels (insertion starts from an image with that share removed): for small findings
    (a nodule is ~1% of a phantom slice) the curve beyond a few percent says nothing about the map.
    :func:`curve_auc` normalises by the range covered.
    """
    o = replace(options, **fields) if options is not None else CurveOptions(**fields)
    if not 0 < o.max_fraction <= 1:
        raise MeddxError(f"max_fraction must be in (0, 1], got {o.max_fraction}")
    if o.mode not in ("deletion", "insertion"):
        raise MeddxError(f"mode must be deletion or insertion, got {o.mode!r}")
    device = next(model.parameters()).device
    x = torch.as_tensor(images).detach().float().to(device)
    h = np.asarray(heatmaps, dtype=np.float64)
    if h.shape != (x.shape[0],) + tuple(x.shape[2:]):
        raise MeddxError(f"heat maps of shape {h.shape} do not fit images of shape {tuple(x.shape)}")
    t = np.broadcast_to(np.asarray(targets, dtype=np.int64), (x.shape[0],))
    fractions = np.linspace(0.0, o.max_fraction, o.steps + 1)
    was_training = model.training
    model.eval()
    try:
        out = _curve_scores(model, x, _pixel_ranks(h, o.seed), t, fractions, o)
    finally:
        model.train(was_training)
    return fractions, out


def _pixel_ranks(h: np.ndarray, seed: int) -> np.ndarray:
    """(N, pixels): each pixel's rank in its map, most salient first, ties broken by a seeded random key."""
    n_img, n_pix = h.shape[0], int(np.prod(h.shape[1:]))
    rng = np.random.default_rng(seed)
    ranks = np.empty((n_img, n_pix), np.int64)
    for i in range(n_img):
        order = np.lexsort((rng.random(n_pix), -np.nan_to_num(h[i].ravel(), nan=-np.inf)))
        ranks[i, order] = np.arange(n_pix)
    return ranks


def _curve_scores(model: nn.Module, x: torch.Tensor, ranks: np.ndarray, t: np.ndarray, fractions: np.ndarray,
                  o: CurveOptions) -> np.ndarray:
    """The target probability of every (image, step) pair, evaluated in chunks of ``o.batch_size``."""
    device, (n_img, spatial) = x.device, (x.shape[0], tuple(x.shape[2:]))
    counts = torch.from_numpy(np.round(fractions * ranks.shape[1]).astype(np.int64)).to(device)
    rank_t = torch.from_numpy(ranks).to(device).view(n_img, 1, *spatial)
    pairs = [(i, k) for i in range(n_img) for k in range(len(fractions))]
    out = np.empty((n_img, len(fractions)), np.float64)
    for c in range(0, len(pairs), o.batch_size):
        chunk = pairs[c:c + o.batch_size]
        ii = torch.tensor([p[0] for p in chunk], device=device)
        kk = counts[torch.tensor([p[1] for p in chunk], device=device)].view(-1, 1, *([1] * len(spatial)))
        chosen = rank_t[ii] < kk  # (B, 1, *spatial): each image's top-k pixels
        # insertion: reveal the top-k pixels of the image with its top max_fraction removed
        removed = chosen if o.mode == "deletion" else (rank_t[ii] < counts[-1]) & ~chosen
        prob = o.prob_fn(model(remove(x[ii], removed, o.baseline)).float())
        sel = prob[torch.arange(len(chunk), device=device), torch.from_numpy(t[ii.cpu().numpy()]).to(device)]
        for (i, k), v in zip(chunk, sel.cpu().tolist()):
            out[i, k] = v
    return out


def perturbation_curve(model: nn.Module, image: torch.Tensor, heatmap: Any, target: int, **kw: Any
                       ) -> tuple[np.ndarray, np.ndarray]:
    """One image's curve: :func:`perturbation_curves` for a (C, *spatial) image and its (*spatial) map."""
    f, p = perturbation_curves(model, torch.as_tensor(image)[None], np.asarray(heatmap)[None], target, **kw)
    return f, p[0]


def curve_auc(fractions: Sequence[float], scores: Any) -> Any:  # float for one curve, (N,) for N curves
    """Mean height of perturbation curve(s): trapezoid area / fraction range covered; last axis = steps."""
    f, s = np.asarray(fractions, np.float64), np.asarray(scores, np.float64)
    area = np.sum((f[1:] - f[:-1]) * (s[..., 1:] + s[..., :-1]) / 2, axis=-1) / (f[-1] - f[0])
    return float(area) if area.ndim == 0 else area


def deletion_auc(model: nn.Module, image: torch.Tensor, heatmap: Any, target: int, **kw: Any) -> float:
    """Deletion AUC of one (C, *spatial) image and its map (lower is better); ``kw`` as :func:`perturbation_curves`."""
    return curve_auc(*perturbation_curve(model, image, heatmap, target, mode="deletion", **kw))


def insertion_auc(model: nn.Module, image: torch.Tensor, heatmap: Any, target: int, **kw: Any) -> float:
    """Insertion AUC of one image and its map (higher is better)."""
    return curve_auc(*perturbation_curve(model, image, heatmap, target, mode="insertion", **kw))


def deletion_aucs(model: nn.Module, images: torch.Tensor, heatmaps: Any, targets: Any, **kw: Any) -> np.ndarray:
    """Deletion AUC per image of a (N, C, *spatial) batch, computed in large batches."""
    return curve_auc(*perturbation_curves(model, images, heatmaps, targets, mode="deletion", **kw))


def insertion_aucs(model: nn.Module, images: torch.Tensor, heatmaps: Any, targets: Any, **kw: Any) -> np.ndarray:
    """Insertion AUC per image of a (N, C, *spatial) batch."""
    return curve_auc(*perturbation_curves(model, images, heatmaps, targets, mode="insertion", **kw))


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
