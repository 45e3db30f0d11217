"""2D phantom: axial thorax CT slices with nodules, instance masks, boxes, centres and diameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from meddx.data.phantom.common import (
    _BODY_HALF_WIDTH,
    _FULL_CONTRAST_RADIUS,
    _MIN_RADIUS,
    _NOISE_SIGMA,
    _PSF_SIGMA,
    BODY_WIDTH_MM,
    _as_fraction,
    _as_int,
    _bbox,
    _lung_background,
    _noise_gain,
    _sigmoid,
    nodules_per_lung,
)
from meddx.data.phantom.slice_anatomy import (
    _bias_field_2d,
    _body_2d,
    _bones_2d,
    _Canvas2D,
    _Lung2D,
    _lungs_2d,
    _mediastinum_2d,
)
from meddx.errors import MeddxError


@dataclass
class PhantomSlices:
    """A stack of 2D phantom slices and their annotations (see the module docstring)."""

    images: np.ndarray  # (n, size, size) float32, HU
    labels: np.ndarray  # (n,) int64, 1 when the slice holds at least one nodule
    masks: np.ndarray  # (n, size, size) uint8 instance masks, 0 background, k = k-th nodule
    boxes: list[np.ndarray]  # per image (k, 4) float32 [x1, y1, x2, y2], inclusive-exclusive
    centres: list[np.ndarray]  # per image (k, 2) float32 (y, x) pixels
    diameters: list[np.ndarray]  # per image (k,) float32 pixels
    lung_masks: np.ndarray  # (n, size, size) uint8, 1 inside the lungs
    spacing: tuple[float, float]  # mm per pixel (row, column)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- 2D slices


def _segment_profile_2d(
    y: np.ndarray, x: np.ndarray, segs: np.ndarray, edge: float, full: float
) -> np.ndarray:
    """Max over tapered segments (K, 6: y0, x0, y1, x1, r0, r1) of a soft-edged tube profile.

    Tubes thinner than ``full`` (radius, pixels) lose contrast in proportion (partial volume).
    """
    if len(segs) == 0:
        return np.zeros(np.broadcast_shapes(y.shape, x.shape), np.float32)
    y0, x0, y1, x1, r0, r1 = (c[:, None, None] for c in segs.astype(np.float32).T)
    dy, dx = y1 - y0, x1 - x0
    py, px = y[None] - y0, x[None] - x0
    t = np.clip((py * dy + px * dx) / (dy * dy + dx * dx + 1e-6), 0.0, 1.0)
    dist = np.sqrt((py - t * dy) ** 2 + (px - t * dx) ** 2)
    r = r0 + t * (r1 - r0)
    return (np.minimum(r / full, 1.0) * _sigmoid((r - dist) / edge)).max(axis=0)


def _vessel_tree_2d(
    rng: np.random.Generator, hy: float, hx: float, lateral: float, length: float, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """Branching tapered vessel segments from a hilum; returns (segments (K, 6), terminal points)."""
    m = int(rng.integers(2, 5))
    y, x = np.full(m, hy), np.full(m, hx)
    a = lateral + rng.uniform(-1.9, 1.9, m)
    ln = length * rng.uniform(0.8, 1.2, m)
    r = radius * rng.uniform(0.8, 1.2, m)
    segs = []
    for level in range(3):
        y1, x1 = y + ln * np.sin(a), x + ln * np.cos(a)
        r1 = r * rng.uniform(0.5, 0.65, len(r))
        segs.append(np.stack([y, x, y1, x1, r, r1], axis=1))
        if level == 2:
            break
        k = len(y)
        y, x, r = np.repeat(y1, 2), np.repeat(x1, 2), np.repeat(r1, 2)
        a = np.repeat(a, 2) + np.tile([-1.0, 1.0], k) * rng.uniform(0.25, 0.75, 2 * k)
        ln = np.repeat(ln, 2) * rng.uniform(0.55, 0.8, 2 * k)
    return np.concatenate(segs), segs[-1][:, 2:4]


def _vessel_blobs_2d(
    rng: np.random.Generator, c: _Canvas2D, lm: np.ndarray, win: tuple[slice, ...], ends: np.ndarray
) -> np.ndarray:
    """Cross-sections of vessels crossing the slice, as zero-length segments (K, 6), some at tree ends."""
    ys, xs = np.nonzero(lm)
    n_blob = int(rng.integers(2, 8))
    pick = rng.integers(0, len(ys), n_blob)
    by = ys[pick] + win[0].start + rng.uniform(-0.5, 0.5, n_blob)
    bx = xs[pick] + win[1].start + rng.uniform(-0.5, 0.5, n_blob)
    n_end = min(len(ends), int(rng.integers(0, 4)))
    if n_end:
        sel = rng.choice(len(ends), n_end, replace=False)
        by = np.concatenate([by, ends[sel, 0]])
        bx = np.concatenate([bx, ends[sel, 1]])
    br = np.clip(rng.lognormal(math.log(0.7), 0.3, len(by)), 0.4, 1.5) * c.ps
    return np.stack([by, bx, by, bx, br, br], axis=1)


def _vessels_2d(
    rng: np.random.Generator, c: _Canvas2D, lung: _Lung2D, win: tuple[slice, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """A branching tree from the hilum plus cross-sections; returns (tree segments, profile in ``win``)."""
    ly, lx = c.Y[win], c.X[win]
    hy, hx = c.to_px(lung.cu - lung.side * 0.6 * lung.au, lung.cv + rng.uniform(-0.15, 0.15) * lung.av)
    lateral = 0.0 if lung.side > 0 else math.pi
    segs, ends = _vessel_tree_2d(rng, hy, hx, lateral, rng.uniform(0.3, 0.5) * lung.av * c.half,
                                 rng.uniform(0.7, 1.1) * c.ps)
    vp = _segment_profile_2d(ly, lx, segs, 0.2, _FULL_CONTRAST_RADIUS)
    blobs = _vessel_blobs_2d(rng, c, lung.mask[win], win, ends)
    vp = np.maximum(vp, _segment_profile_2d(ly, lx, blobs, 0.4, _FULL_CONTRAST_RADIUS))
    return segs, vp


def _draw_nodule_2d(
    rng: np.random.Generator,
    c: _Canvas2D,
    win: tuple[slice, ...],
    lm: np.ndarray,
    placed: tuple[float, float, float],
    field: np.ndarray,
    value: np.ndarray,
) -> np.ndarray:
    """Draw one lobulated nodule into ``value`` (the window ``win`` of the lung ``lm``) and record it.

    Returns the new ``value``.

    A nodule that would own no pixel (all taken or outside the lung) is dropped.
    """
    cy, cx, r = placed
    ps = c.ps
    k = len(c.nodules) + 1
    dy, dx = c.Y[win] - cy, c.X[win] - cx
    dist = np.sqrt(dy * dy + dx * dx)
    lob = rng.uniform(0.0, 0.15)
    lobes = int(rng.integers(3, 7))
    rad = r * (1.0 + lob * np.cos(lobes * np.arctan2(dy, dx) + rng.uniform(0, 6.3)))
    ggo = r >= 1.75 * ps and rng.random() < 0.25
    hu = rng.uniform(-650.0, -350.0) if ggo else rng.uniform(-60.0, 80.0)
    edge = rng.uniform(0.5, 1.0) * ps if ggo else rng.uniform(0.2, 0.45) * ps
    sub = c.inst[win]
    own = (dist <= rad) & lm & (sub == 0)
    if not own.any():
        return value
    value = np.maximum(value, field + (hu - field) * _sigmoid((rad - dist) / edge))
    sub[own] = k
    c.nodules.append((float(cy), float(cx), float(2.0 * r)))
    c.taken.append((cy, cx, r))
    return value


def _fill_lung_2d(rng: np.random.Generator, c: _Canvas2D, lung: _Lung2D, n_here: int, vessel_hu: float) -> None:
    """Parenchyma, vessels and ``n_here`` nodules of one lung, written into the image."""
    c.lung_mask |= lung.mask
    win = _bbox(lung.mask)
    lm = lung.mask[win]
    field = _lung_background(rng, c.V[win], lung.cv, lung.av)
    segs, vp = _vessels_2d(rng, c, lung, win)
    value = field + (vessel_hu - field) * vp
    if n_here:
        edt = ndimage.distance_transform_edt(np.pad(lm, 1))[1:-1, 1:-1]
        for _ in range(n_here):
            placed = _place_nodule_2d(rng, edt, segs, win, c.taken, c.ps, must=not c.nodules)
            if placed is not None:
                value = _draw_nodule_2d(rng, c, win, lm, placed, field, value)
    c.img[win][lm] = value[lm]


def _slice(
    rng: np.random.Generator,
    size: int,
    positive: bool,
    max_nodules: int,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float, float]]]:
    """One clean (noise-free, unblurred) slice: image, instance mask, lung mask, nodules (y, x, d).

    The draws from ``rng`` happen in this order: body, mediastinum, bone, lungs, nodule count and
    split, vessel density, then per lung (parenchyma, vessels, nodules), then the bias field.
    """
    c = _Canvas2D.new(size, grid)
    b = _body_2d(rng, c)
    _mediastinum_2d(rng, c, b)
    _bones_2d(rng, c, b)
    lungs = _lungs_2d(rng, c, b)
    split, vessel_hu = nodules_per_lung(rng, len(lungs), positive, max_nodules)
    for lung, n_here in zip(lungs, split, strict=True):
        _fill_lung_2d(rng, c, lung, n_here, vessel_hu)
    _bias_field_2d(rng, c, b.mask)
    return c.img, c.inst, c.lung_mask, c.nodules


def _place_nodule_2d(
    rng: np.random.Generator,
    edt: np.ndarray,
    segs: np.ndarray,
    win: tuple[slice, ...],
    taken: list[tuple[float, float, float]],
    ps: float,
    must: bool = False,
) -> tuple[float, float, float] | None:
    """Pick a nodule centre (image pixels) and radius inside one lung (``edt`` is its distance map).

    Gives up (None) after a few tries unless ``must``: then the deepest lung pixel is used.
    """
    r = max(0.5 * ps * math.exp(rng.uniform(math.log(2.0), math.log(10.0))), _MIN_RADIUS)
    oy, ox = win[0].start, win[1].start
    for _attempt in range(12):
        kind = rng.choice(3, p=[0.5, 0.25, 0.25])  # free, juxtapleural, juxtavascular
        if kind == 2:
            s = segs[int(rng.integers(0, len(segs)))]
            t = rng.uniform(0.2, 0.8)
            py, px = s[0] + t * (s[2] - s[0]), s[1] + t * (s[3] - s[1])
            ln = math.hypot(s[2] - s[0], s[3] - s[1]) + 1e-6
            ny, nx = (s[3] - s[1]) / ln, -(s[2] - s[0]) / ln
            off = (s[4] + t * (s[5] - s[4]) + r * rng.uniform(0.6, 0.95)) * rng.choice([-1.0, 1.0])
            cy, cx = py + off * ny, px + off * nx
            iy, ix = int(round(cy)) - oy, int(round(cx)) - ox
            inside = 0 <= iy < edt.shape[0] and 0 <= ix < edt.shape[1] and edt[iy, ix] >= max(1.0, 0.6 * r)
            if not inside:
                continue
        else:
            lo, hi = (r + 1.0, np.inf) if kind == 0 else (max(1.0, 0.5 * r), max(1.5, r))
            ys, xs = np.nonzero((edt >= lo) & (edt <= hi))
            if len(ys) == 0:
                r = max(_MIN_RADIUS, 0.8 * r)
                continue
            j = int(rng.integers(0, len(ys)))
            cy = ys[j] + oy + rng.uniform(-0.3, 0.3)
            cx = xs[j] + ox + rng.uniform(-0.3, 0.3)
        if all(math.hypot(cy - ty, cx - tx) > r + tr + 1.0 for ty, tx, tr in taken):
            return float(cy), float(cx), r
    if not must:
        return None
    iy, ix = np.unravel_index(int(np.argmax(edt)), edt.shape)
    return float(iy + oy), float(ix + ox), max(min(r, float(edt[iy, ix]) - 0.5), _MIN_RADIUS)


def _boxes_2d(inst: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, 4), np.float32)
    for j in range(k):
        ys, xs = np.nonzero(inst == j + 1)
        out[j] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return out


def make_slices(
    n: int, size: int = 64, seed: int = 0, nodule_fraction: float = 0.5, max_nodules: int = 3
) -> PhantomSlices:
    """Generate ``n`` axial thorax CT slices of ``size`` x ``size`` pixels (HU, float32).

    Each image is positive (holds 1..``max_nodules`` nodules) with probability ``nodule_fraction``;
    image ``i`` depends only on ``(seed, i)``.
    """
    n = _as_int("n", n, 1)
    size = _as_int("size", size, 16)
    seed = _as_int("seed", seed, 0)
    nodule_fraction = _as_fraction("nodule_fraction", nodule_fraction)
    max_nodules = _as_int("max_nodules", max_nodules, 1)
    if max_nodules > 255:
        raise MeddxError(f"phantom max_nodules must be <= 255 (uint8 masks), got {max_nodules}")

    coords = np.arange(size, dtype=np.float32)
    Y, X = np.meshgrid(coords, coords, indexing="ij")
    half, c0 = size / 2.0, (size - 1) / 2.0
    grid = (Y, X, (X - c0) / half, (Y - c0) / half)

    images = np.empty((n, size, size), np.float32)
    noise = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    lungs = np.zeros((n, size, size), np.uint8)
    sd = np.empty(n, np.float32)
    boxes: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    diameters: list[np.ndarray] = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        positive = bool(rng.random() < nodule_fraction)
        img, inst, lung, nods = _slice(rng, size, positive, max_nodules, grid)
        images[i], masks[i], lungs[i] = img, inst, lung
        sd[i] = rng.uniform(15.0, 40.0)
        noise[i] = rng.standard_normal((size, size), dtype=np.float32)
        k = len(nods)
        boxes.append(_boxes_2d(inst, k))
        centres.append(np.asarray([(y, x) for y, x, _ in nods], np.float32).reshape(k, 2))
        diameters.append(np.asarray([d for _, _, d in nods], np.float32).reshape(k))

    images = ndimage.gaussian_filter(images, (0, _PSF_SIGMA, _PSF_SIGMA), mode="nearest")
    noise = ndimage.gaussian_filter(noise, (0, _NOISE_SIGMA, _NOISE_SIGMA), mode="wrap")
    images += noise * (sd / _noise_gain(2, _NOISE_SIGMA))[:, None, None]
    labels = (masks.reshape(n, -1).max(axis=1) > 0).astype(np.int64)
    spacing = BODY_WIDTH_MM / (2.0 * _BODY_HALF_WIDTH * size / 2.0)
    return PhantomSlices(images, labels, masks, boxes, centres, diameters, lungs, (spacing, spacing))
