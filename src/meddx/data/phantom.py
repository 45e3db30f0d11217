"""Synthetic thorax CT phantom: the offline default dataset of meddx.

Every image is drawn independently from ``np.random.default_rng([seed, index])``, so a dataset is a
pure function of ``(seed, index)``: ``make_slices(10, seed=3)`` is the first ten images of
``make_slices(100, seed=3)`` and nothing depends on global random state.

Model of one axial slice (2D) or one chest volume (3D), in Hounsfield units (HU):

* **Air** (-1000 HU) around an elliptical **body** with a flat back, made of a subcutaneous **fat**
  layer (about -100 HU) around **soft tissue** (about +40 HU).
* **Bone**: a vertebral body with a dense cortical rim (up to about +900 HU) and its posterior arch,
  a sternum, and ribs just inside the body wall (ring segments in 3D).
* **Mediastinum**: heart and descending aorta (soft tissue, the aorta sometimes contrast-enhanced).
* **Lungs**: two ellipses (ellipsoids in 3D, cut by the heart, the diaphragm domes and the spine)
  of parenchyma around -850 HU, denser towards the back (gravity-dependent gradient). Their size,
  position, tilt and density vary per image; ``lung_masks`` marks them.
* **Vessels**: tapered branching trees growing from each hilum (lines in 2D, tubes along 3D
  polylines) at soft-tissue density, thick at the hilum; vessels thinner than a pixel lose contrast
  (partial volume). In 2D, vessels that run through the slice plane are seen in cross-section as
  small round blobs; they occur in *every* image and overlap in size and contrast with the smallest
  nodules, so "a bright spot in the lung" does not give the label away: a classifier has to use
  size, shape and context (a small CNN reaches roughly 85 % accuracy at 64 px, not 100 %).
* **Nodules** (positive images only): 1..``max_nodules`` per image (1 most often), inside the lungs,
  with a log-uniform diameter (2..10 px at 64 px, scaled with the image size, never under 1.5 px;
  3..12 voxels in 3D), mostly solid (-60..+80 HU) and sometimes faint ground glass (-650..-350 HU),
  with soft edges and slight lobulation (2D) or as random ellipsoids with a random orientation (3D).
  About a quarter touch the lung wall (juxtapleural), a quarter touch a vessel (juxtavascular), the
  rest lie free in the parenchyma; nodules never overlap each other.
* **Acquisition**: a smooth random low-frequency intensity field inside the body, a slight Gaussian
  blur (the scanner's point-spread function) and correlated Gaussian noise (15..40 HU sd).

Annotations: ``labels`` (1 when the image holds at least one nodule), instance ``masks`` (k for the
k-th nodule, 1-based: the nodule's nominal outline inside the lung), tight ``boxes`` around each
instance mask (inclusive-exclusive pixel/voxel indices), ``centres`` (pixel/voxel coordinates, the
centre of pixel ``i`` being ``i``) and ``diameters`` (pixels/voxels), which is what detection,
segmentation and FROC evaluation need.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from meddx.errors import MeddxError

__all__ = [
    "AIR_HU",
    "BODY_WIDTH_MM",
    "LUNG_HU",
    "PhantomSlices",
    "PhantomVolumes",
    "make_slices",
    "make_volumes",
    "to_uint8",
    "window",
]

AIR_HU = -1000.0
LUNG_HU = -850.0
BODY_WIDTH_MM = 350.0  # nominal body width, which fixes the pixel spacing

_REF = 64.0  # image size at which the pixel-unit parameters below are stated
_BODY_HALF_WIDTH = 0.9  # nominal body semi-axis (x), in units of half the image width
_LUNG_HEIGHT_MM = 260.0  # nominal cranio-caudal lung extent (3D z spacing)
_LUNG_HALF_HEIGHT = 0.85  # nominal lung semi-axis (z), in units of half the volume depth
_PSF_SIGMA = 0.6  # scanner blur, pixels
_NOISE_SIGMA = 0.7  # noise correlation length, pixels
_FULL_CONTRAST_RADIUS = 0.8  # vessels thinner than this (pixels) lose contrast (partial volume)
_MIN_RADIUS = 0.75  # smallest nodule radius in pixels, so that every nodule owns a pixel
_MIN_RADIUS_3D = 1.0  # same in voxels, for ellipsoids with axes 0.7..1.15 times the mean


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


@dataclass
class PhantomVolumes:
    """A stack of 3D phantom volumes and their annotations (see the module docstring)."""

    images: np.ndarray  # (n, D, H, W) float32, HU
    labels: np.ndarray  # (n,) int64
    masks: np.ndarray  # (n, D, H, W) uint8 instance masks
    boxes: list[np.ndarray]  # per volume (k, 6) float32 [z1, y1, x1, z2, y2, x2], inclusive-exclusive
    centres: list[np.ndarray]  # per volume (k, 3) float32 (z, y, x) voxels
    diameters: list[np.ndarray]  # per volume (k,) float32 voxels (twice the mean semi-axis)
    lung_masks: np.ndarray  # (n, D, H, W) uint8
    spacing: tuple[float, float, float]  # mm per voxel (z, y, x)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# --------------------------------------------------------------------------- arguments


def _as_int(name: str, value: object, minimum: int) -> int:
    """``value`` as an int >= ``minimum``, else a MeddxError naming it."""
    if isinstance(value, bool):
        raise MeddxError(f"phantom {name} must be an integer, got {value!r}")
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise MeddxError(f"phantom {name} must be an integer, got {value!r}") from None
    if number < minimum:
        raise MeddxError(f"phantom {name} must be >= {minimum}, got {number}")
    return int(number)


def _as_fraction(name: str, value: object) -> float:
    """``value`` as a float in [0, 1], else a MeddxError naming it."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise MeddxError(f"phantom {name} must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise MeddxError(f"phantom {name} must be in [0, 1], got {value!r}")
    return number


# --------------------------------------------------------------------------- small helpers


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 + 0.5 * np.tanh(0.5 * x)


def _ell2(
    u: np.ndarray, v: np.ndarray, cu: float, cv: float, au: float, av: float, theta: float = 0.0
) -> np.ndarray:
    """Squared normalised radius of a (rotated) ellipse: < 1 inside."""
    du = u - cu
    dv = v - cv
    if theta:
        c, s = math.cos(theta), math.sin(theta)
        du, dv = c * du + s * dv, c * dv - s * du
    return (du / au) ** 2 + (dv / av) ** 2


def _noise_gain(ndim: int, sigma: float) -> float:
    """Standard deviation of unit white noise after ``gaussian_filter(sigma)`` (exact, discrete)."""
    delta = np.zeros((17,) * ndim)
    delta[(8,) * ndim] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(delta, sigma) ** 2).sum()))


def _bbox(mask: np.ndarray) -> tuple[slice, ...]:
    """Tight slices around the non-zero part of ``mask`` (which must not be empty)."""
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(out)


def _count_nodules(rng: np.random.Generator, max_nodules: int) -> int:
    """1..max_nodules, each one half as likely as the one before."""
    weights = 0.5 ** np.arange(max_nodules)
    return int(rng.choice(max_nodules, p=weights / weights.sum())) + 1


def _lung_background(rng: np.random.Generator, v: np.ndarray, lcv: float, lav: float) -> np.ndarray:
    """Lung parenchyma: per-image density with a gravity-dependent (posterior) gradient."""
    base = rng.uniform(-910.0, -840.0)
    slope = rng.uniform(0.0, 50.0)
    return (base + slope * np.clip((v - lcv) / lav, -1.0, 1.0)).astype(np.float32)


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


def _slice(
    rng: np.random.Generator,
    size: int,
    positive: bool,
    max_nodules: int,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[float, float, float]]]:
    """One clean (noise-free, unblurred) slice: image, instance mask, lung mask, nodules (y, x, d)."""
    Y, X, U, V = grid
    half, c0, ps = size / 2.0, (size - 1) / 2.0, size / _REF
    img = np.full((size, size), AIR_HU, np.float32)
    blocked = np.zeros((size, size), bool)  # where the lungs may not go

    def to_px(u: float, v: float) -> tuple[float, float]:
        return v * half + c0, u * half + c0  # (row, col)

    def paint(cu, cv, au, av, value=None, theta=0.0, block=0.0, within=None):
        """Fill an ellipse (in a local window) with ``value``; block the lungs where rho^2 < ``block``."""
        reach = max(au, av) * math.sqrt(max(block, 1.0)) + 1.5 / half
        r0, c_0 = max(int((cv - reach) * half + c0), 0), max(int((cu - reach) * half + c0), 0)
        w = (slice(r0, min(int((cv + reach) * half + c0) + 2, size)),
             slice(c_0, min(int((cu + reach) * half + c0) + 2, size)))
        r2 = _ell2(U[w], V[w], cu, cv, au, av, theta)
        if value is not None:
            inside = r2 < 1.0 if within is None else (r2 < 1.0) & within[w]
            img[w][inside] = value
        if block:
            blocked[w] |= r2 < block
        return w, r2

    # body, fat layer, flat back
    bcu, bcv = rng.normal(0.0, 0.02), rng.normal(0.03, 0.02)
    bau, bav = rng.uniform(0.84, 0.95), rng.uniform(0.62, 0.72)
    back = bcv + 0.9 * bav
    body = (_ell2(U, V, bcu, bcv, bau, bav) < 1.0) & (V < back)
    fat = rng.uniform(0.03, 0.08)
    iau, iav = bau - fat, bav - 0.8 * fat
    inner2 = _ell2(U, V, bcu, bcv, iau, iav)
    inner = (inner2 < 1.0) & (V < back - 0.7 * fat)
    img[body] = rng.uniform(-120.0, -80.0)
    img[inner] = rng.uniform(30.0, 55.0)
    blocked |= (inner2 >= 0.86) | (V >= back - 0.12)

    # mediastinum: heart and aorta
    paint(bcu + rng.uniform(0.05, 0.15), bcv + rng.uniform(-0.12, 0.05), rng.uniform(0.2, 0.28),
          rng.uniform(0.2, 0.27), rng.uniform(30.0, 60.0), rng.uniform(-0.5, 0.0), block=1.1)
    ao_r = rng.uniform(0.06, 0.09)
    paint(bcu + rng.uniform(0.08, 0.15), bcv + 0.55 * bav, ao_r, ao_r, rng.uniform(30.0, 250.0), block=1.3)

    # bone: vertebra (cortical rim, cancellous core), posterior arch with the canal, sternum, ribs
    sp_v, sp_r = bcv + 0.5 * bav, rng.uniform(0.09, 0.12)
    w, r2 = paint(bcu, sp_v, sp_r, 0.9 * sp_r, rng.uniform(700.0, 950.0), block=1.3)
    img[w][r2 < 0.6] = rng.uniform(180.0, 400.0)
    paint(bcu, sp_v + 1.5 * sp_r, 0.45 * sp_r, 0.45 * sp_r, rng.uniform(400.0, 800.0))
    paint(bcu, sp_v + 1.5 * sp_r, 0.2 * sp_r, 0.2 * sp_r, 20.0)
    paint(bcu, bcv - iav + 0.05, 0.09, 0.035, rng.uniform(300.0, 600.0))
    n_ribs = int(rng.integers(4, 9))
    rib_ang = rng.uniform(0.15, math.pi - 0.15, n_ribs) * rng.choice([-1.0, 1.0], n_ribs)
    rib_hu = rng.uniform(400.0, 800.0, n_ribs)
    for ra, rh in zip(rib_ang.tolist(), rib_hu.tolist(), strict=True):
        paint(bcu + (iau - 0.04) * math.cos(ra), bcv + (iav - 0.04) * math.sin(ra), 0.045, 0.025, rh,
              ra + math.pi / 2, block=2.0, within=inner)

    # lungs (two ellipses carved by everything above), then their vessels and nodules
    lungs = []
    for side in (-1.0, 1.0):
        lcu = bcu + side * rng.uniform(0.40, 0.50) * bau / 0.9
        lcv = bcv + rng.uniform(-0.08, 0.02)
        lau, lav = rng.uniform(0.25, 0.34), rng.uniform(0.40, 0.50) * bav / 0.67
        w, r2 = paint(lcu, lcv, lau, lav, theta=side * rng.uniform(0.0, 0.25))
        lung = np.zeros((size, size), bool)
        lung[w] = (r2 < 1.0) & ~blocked[w] & (U[w] * side > bcu * side + 0.06)
        if lung.sum() >= 4:
            lungs.append((side, lung, lcu, lcv, lau, lav))
    lung_mask = np.zeros((size, size), bool)
    inst = np.zeros((size, size), np.uint8)
    nodules: list[tuple[float, float, float]] = []
    taken: list[tuple[float, float, float]] = []  # (y, x, r) of placed nodules
    n_total = _count_nodules(rng, max_nodules) if positive and lungs else 0
    split = np.bincount(rng.integers(0, max(len(lungs), 1), n_total), minlength=len(lungs)).tolist()
    vessel_hu = rng.uniform(-20.0, 80.0)
    for (side, lung, lcu, lcv, lau, lav), n_here in zip(lungs, split, strict=True):
        lung_mask |= lung
        win = _bbox(lung)
        ly, lx, lm = Y[win], X[win], lung[win]
        field = _lung_background(rng, V[win], lcv, lav)

        # vessels: branching tree plus cross-sections of vessels crossing the slice
        hy, hx = to_px(lcu - side * 0.6 * lau, lcv + rng.uniform(-0.15, 0.15) * lav)
        lateral = 0.0 if side > 0 else math.pi
        segs, ends = _vessel_tree_2d(rng, hy, hx, lateral, rng.uniform(0.3, 0.5) * lav * half,
                                     rng.uniform(0.7, 1.1) * ps)
        vp = _segment_profile_2d(ly, lx, segs, 0.2, _FULL_CONTRAST_RADIUS)
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
        br = np.clip(rng.lognormal(math.log(0.7), 0.3, len(by)), 0.4, 1.5) * ps
        blobs = np.stack([by, bx, by, bx, br, br], axis=1)
        vp = np.maximum(vp, _segment_profile_2d(ly, lx, blobs, 0.4, _FULL_CONTRAST_RADIUS))
        value = field + (vessel_hu - field) * vp

        # nodules
        if n_here:
            edt = ndimage.distance_transform_edt(np.pad(lm, 1))[1:-1, 1:-1]
            for _ in range(n_here):
                placed = _place_nodule_2d(rng, edt, segs, win, taken, ps, must=not nodules)
                if placed is None:
                    continue
                cy, cx, r = placed
                k = len(nodules) + 1
                dy, dx = ly - cy, lx - cx
                dist = np.sqrt(dy * dy + dx * dx)
                lob = rng.uniform(0.0, 0.15)
                lobes = int(rng.integers(3, 7))
                rad = r * (1.0 + lob * np.cos(lobes * np.arctan2(dy, dx) + rng.uniform(0, 6.3)))
                ggo = r >= 1.75 * ps and rng.random() < 0.25
                hu = rng.uniform(-650.0, -350.0) if ggo else rng.uniform(-60.0, 80.0)
                edge = rng.uniform(0.5, 1.0) * ps if ggo else rng.uniform(0.2, 0.45) * ps
                sub = inst[win]
                own = (dist <= rad) & lm & (sub == 0)
                if not own.any():
                    continue
                value = np.maximum(value, field + (hu - field) * _sigmoid((rad - dist) / edge))
                sub[own] = k
                nodules.append((float(cy), float(cx), float(2.0 * r)))
                taken.append((cy, cx, r))
        img[win][lm] = value[lm]

    # smooth low-frequency intensity field inside the body
    amp = rng.uniform(5.0, 30.0)
    freq = rng.uniform(0.5, 2.0, (2, 3, 1))
    phase = rng.uniform(0.0, 2 * math.pi, (2, 3, 1))
    bias = np.cos(math.pi * freq[0] * V[:, 0] + phase[0]).T @ np.cos(math.pi * freq[1] * U[0] + phase[1])
    img[body] += (amp / 3.0) * bias[body]
    return img, inst, lung_mask, nodules


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


# --------------------------------------------------------------------------- 3D volumes


def _tube(
    z: np.ndarray,
    y: np.ndarray,
    x: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    r0: float,
    r1: float,
    edge: float,
    full: float,
) -> np.ndarray:
    """Soft-edged tapered tube profile between points a and b (z, y, x) on an open grid.

    Tubes thinner than ``full`` (radius, voxels) lose contrast in proportion (partial volume).
    """
    a = [float(v) for v in a]
    d = [float(q) - p for q, p in zip(b, a, strict=True)]
    pz, py, px = z - a[0], y - a[1], x - a[2]
    length2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2] + 1e-6
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / length2, 0.0, 1.0)
    dist = np.sqrt((pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2)
    r = r0 + t * (r1 - r0)
    return np.minimum(r / full, 1.0) * _sigmoid((r - dist) / edge)


def _unit(rng: np.random.Generator, mean: np.ndarray, spread: float) -> np.ndarray:
    """A random unit vector around ``mean``."""
    v = mean + spread * rng.standard_normal(3)
    return v / (np.linalg.norm(v) + 1e-9)


def _vessel_tree_3d(
    rng: np.random.Generator, hilum: np.ndarray, lateral: np.ndarray, length: float, radius: float
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """Branching tapered 3D vessel segments (start, end, r0, r1) in voxel coordinates."""
    frontier = []
    for _ in range(int(rng.integers(4, 7))):
        direction = _unit(rng, lateral * 0.6 + np.array([rng.choice([-1.0, 1.0]) * 0.6, 0.0, 0.0]), 0.6)
        frontier.append((hilum, direction, length * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)))
    segs = []
    depth = 3
    for level in range(depth + 1):
        nxt = []
        for start, direction, ln, r in frontier:
            end = start + ln * direction
            r1 = r * rng.uniform(0.65, 0.8)
            segs.append((start, end, r, r1))
            if level < depth:
                for _ in range(2):
                    nxt.append((end, _unit(rng, direction, 0.6), ln * rng.uniform(0.55, 0.8), r1))
        frontier = nxt
    return segs


def _volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    positive: bool,
    max_nodules: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, float]]]:
    """One clean volume: image, instance mask, lung mask, nodules (centre zyx, diameter)."""
    D, H, W = shape
    hz, hp = D / 2.0, min(H, W) / 2.0
    cz, cy, cx = (D - 1) / 2.0, (H - 1) / 2.0, (W - 1) / 2.0
    Z = ((np.arange(D, dtype=np.float32) - cz) / hz)[:, None, None]
    V = ((np.arange(H, dtype=np.float32) - cy) / hp)[None, :, None]
    U = ((np.arange(W, dtype=np.float32) - cx) / hp)[None, None, :]
    ps = hp * 2.0 / _REF
    full = (D, H, W)

    def ell3(c: tuple[float, float, float], a: tuple[float, float, float]) -> np.ndarray:
        return ((Z - c[0]) / a[0]) ** 2 + ((V - c[1]) / a[1]) ** 2 + ((U - c[2]) / a[2]) ** 2

    img = np.full(full, AIR_HU, np.float32)
    bcu, bcv = rng.normal(0.0, 0.02), rng.normal(0.03, 0.02)
    bau = rng.uniform(0.82, 0.92) * (1.0 + 0.05 * Z)  # widening caudally
    bav = rng.uniform(0.62, 0.70) * (1.0 + 0.04 * Z)
    back = bcv + 0.9 * bav
    body = np.broadcast_to((((U - bcu) / bau) ** 2 + ((V - bcv) / bav) ** 2 < 1.0) & (V < back), full)
    fat = rng.uniform(0.03, 0.08)
    inner2 = ((U - bcu) / (bau - fat)) ** 2 + ((V - bcv) / (bav - 0.8 * fat)) ** 2
    inner = np.broadcast_to((inner2 < 1.0) & (V < back - 0.7 * fat), full)
    img[body] = rng.uniform(-120.0, -80.0)
    img[inner] = rng.uniform(30.0, 55.0)

    heart2 = ell3((rng.uniform(0.35, 0.6), bcv + rng.uniform(-0.1, 0.05), bcu + rng.uniform(0.05, 0.15)),
                  (rng.uniform(0.4, 0.55), rng.uniform(0.2, 0.27), rng.uniform(0.22, 0.3)))
    img[heart2 < 1.0] = rng.uniform(30.0, 60.0)
    ao_r = rng.uniform(0.06, 0.09)
    aorta2 = np.broadcast_to(((U - bcu - rng.uniform(0.08, 0.15)) / ao_r) ** 2
                             + ((V - bcv - 0.55 * 0.66) / ao_r) ** 2, full)
    img[aorta2 < 1.0] = rng.uniform(30.0, 250.0)

    sp_r = rng.uniform(0.09, 0.12)
    sp_v = bcv + 0.5 * 0.66
    spine2 = np.broadcast_to(((U - bcu) / sp_r) ** 2 + ((V - sp_v) / (0.9 * sp_r)) ** 2, full)
    disc = np.cos(2 * math.pi * Z / 0.17 + rng.uniform(0, 6.3)) > 0.8  # intervertebral discs
    img[(spine2 < 1.0)] = rng.uniform(700.0, 950.0)
    img[(spine2 < 0.6)] = rng.uniform(180.0, 400.0)
    img[(spine2 < 1.0) & disc] = rng.uniform(60.0, 100.0)
    arch2 = ((U - bcu) / (0.45 * sp_r)) ** 2 + ((V - sp_v - 1.5 * sp_r) / (0.45 * sp_r)) ** 2
    img[np.broadcast_to(arch2 < 1.0, full)] = rng.uniform(400.0, 800.0)
    # ribs: slanted bands just inside the body wall
    band = (inner2 > 0.72) & (inner2 < 0.86)
    ribs = band & (np.cos(2 * math.pi * (Z + 0.25 * V) / 0.17 + rng.uniform(0, 6.3)) > 0.55) & (V > bcv - 0.5)
    img[ribs & inner] = rng.uniform(400.0, 800.0)

    allowed = ((inner2 < 0.7) & (V < back - 0.12) & (aorta2 > 1.3) & (spine2 > 1.6) & (heart2 > 1.1))
    lungs = []
    for side in (-1.0, 1.0):
        lcz, lcu = rng.uniform(-0.1, 0.05), bcu + side * rng.uniform(0.40, 0.50)
        lcv = bcv + rng.uniform(-0.08, 0.02)
        laz, lau, lav = rng.uniform(0.8, 0.95), rng.uniform(0.25, 0.34), rng.uniform(0.40, 0.50)
        dome2 = ell3((rng.uniform(1.15, 1.45), lcv + 0.1, lcu), (0.6, 0.7, 0.5))  # diaphragm
        lung = (ell3((lcz, lcv, lcu), (laz, lav, lau)) < 1.0) & allowed & (dome2 > 1.0)
        lung &= U * side > bcu * side + 0.06
        if lung.sum() >= 8:
            lungs.append((side, lung, lcz, lcu, lcv, lau, lav))
    lung_mask = np.zeros(full, bool)
    inst = np.zeros(full, np.uint8)
    nodules: list[tuple[np.ndarray, float]] = []
    taken: list[tuple[np.ndarray, float]] = []
    n_total = _count_nodules(rng, max_nodules) if positive and lungs else 0
    split = np.bincount(rng.integers(0, max(len(lungs), 1), n_total), minlength=len(lungs)).tolist()
    vessel_hu = rng.uniform(-20.0, 80.0)
    for (side, lung, lcz, lcu, lcv, lau, lav), n_here in zip(lungs, split, strict=True):
        lung_mask |= lung
        win = _bbox(lung)
        lm = lung[win]
        origin = np.array([w.start for w in win], np.float64)
        gz, gy, gx = (np.arange(w.start, w.stop, dtype=np.float32).reshape(
            [-1 if a == i else 1 for a in range(3)]) for i, w in enumerate(win))
        field = np.broadcast_to(_lung_background(rng, V[:, win[1]], lcv, lav), lm.shape)

        hilum = np.array([(lcz + rng.uniform(-0.1, 0.1)) * hz + cz, (lcv + rng.uniform(-0.1, 0.1)) * hp + cy,
                          (lcu - side * 0.6 * lau) * hp + cx])
        segs = _vessel_tree_3d(rng, hilum, np.array([0.0, 0.0, side]), rng.uniform(0.45, 0.65) * lav * hp,
                               rng.uniform(1.0, 1.5) * ps)
        vp = np.zeros(lm.shape, np.float32)
        for a, b, r0, r1 in segs:
            lo = np.maximum(np.floor(np.minimum(a, b) - r0 - 2.0) - origin, 0).astype(int)
            hi = np.minimum(np.ceil(np.maximum(a, b) + r0 + 3.0) - origin, lm.shape).astype(int)
            if np.any(hi <= lo):
                continue
            sl = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi, strict=True))
            prof = _tube(gz[sl[0]], gy[:, sl[1]], gx[:, :, sl[2]], a, b, r0, r1, 0.25, _FULL_CONTRAST_RADIUS)
            np.maximum(vp[sl], prof, out=vp[sl])
        value = field + (vessel_hu - field) * vp

        if n_here:
            edt = ndimage.distance_transform_edt(np.pad(lm, 1))[1:-1, 1:-1, 1:-1]
            for _ in range(n_here):
                placed = _place_nodule_3d(rng, edt, segs, origin, taken, ps, must=not nodules)
                if placed is None:
                    continue
                c, r = placed
                axes = r * rng.uniform(0.75, 1.25, 3)
                axes *= r / axes.mean()
                rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
                ext = float(axes.max()) + 3.0
                lo = np.maximum(np.floor(c - ext) - origin, 0).astype(int)
                hi = np.minimum(np.ceil(c + ext + 1.0) - origin, lm.shape).astype(int)
                sl = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi, strict=True))
                d = (gz[sl[0]] - c[0], gy[:, sl[1]] - c[1], gx[:, :, sl[2]] - c[2])
                rho2 = sum(((rot[0, j] * d[0] + rot[1, j] * d[1] + rot[2, j] * d[2]) / axes[j]) ** 2
                           for j in range(3))
                rho = np.sqrt(rho2)
                ggo = r >= 2.0 * ps and rng.random() < 0.25
                hu = rng.uniform(-650.0, -350.0) if ggo else rng.uniform(-60.0, 80.0)
                edge = rng.uniform(0.5, 1.0) * ps if ggo else rng.uniform(0.2, 0.45) * ps
                sub = inst[win][sl]
                own = (rho <= 1.0) & lm[sl] & (sub == 0)
                if not own.any():
                    continue
                prof = _sigmoid((1.0 - rho) * r / edge)
                value[sl] = np.maximum(value[sl], field[sl] + (hu - field[sl]) * prof)
                sub[own] = len(nodules) + 1
                nodules.append((c.astype(np.float32), float(2.0 * r)))
                taken.append((c, r))
        img[win][lm] = value[lm]

    amp = rng.uniform(5.0, 30.0)
    freq = rng.uniform(0.5, 2.0, (3, 3))
    phase = rng.uniform(0.0, 2 * math.pi, 3)
    bias = sum(np.cos(math.pi * (f[0] * Z + f[1] * V + f[2] * U) + p)
               for f, p in zip(freq, phase, strict=True))
    img[body] += (amp / 3.0) * np.broadcast_to(bias, full)[body]
    return img, inst, lung_mask, nodules


def _place_nodule_3d(
    rng: np.random.Generator,
    edt: np.ndarray,
    segs: list[tuple[np.ndarray, np.ndarray, float, float]],
    origin: np.ndarray,
    taken: list[tuple[np.ndarray, float]],
    ps: float,
    must: bool = False,
) -> tuple[np.ndarray, float] | None:
    """Pick a nodule centre (volume voxels) and mean radius inside one lung (``edt``: its distance map).

    Gives up (None) after a few tries unless ``must``: then the deepest lung voxel is used.
    """
    r = max(0.5 * ps * math.exp(rng.uniform(math.log(3.0), math.log(12.0))), _MIN_RADIUS_3D)
    for _attempt in range(12):
        kind = rng.choice(3, p=[0.5, 0.25, 0.25])
        if kind == 2:
            a, b, r0, r1 = segs[int(rng.integers(0, len(segs)))]
            t = rng.uniform(0.2, 0.8)
            axis = (b - a) / (np.linalg.norm(b - a) + 1e-9)
            normal = np.cross(axis, _unit(rng, np.zeros(3), 1.0))
            normal /= np.linalg.norm(normal) + 1e-9
            c = a + t * (b - a) + normal * (r0 + t * (r1 - r0) + r * rng.uniform(0.6, 0.95))
            idx = np.round(c - origin).astype(int)
            if np.any(idx < 0) or np.any(idx >= edt.shape) or edt[tuple(idx)] < max(1.0, 0.6 * r):
                continue
        else:
            lo, hi = (r + 1.0, np.inf) if kind == 0 else (max(1.0, 0.5 * r), max(1.5, r))
            cand = np.flatnonzero(((edt >= lo) & (edt <= hi)).ravel())
            if len(cand) == 0:
                r = max(_MIN_RADIUS_3D, 0.8 * r)
                continue
            idx = np.array(np.unravel_index(int(cand[int(rng.integers(0, len(cand)))]), edt.shape))
            c = idx + origin + rng.uniform(-0.3, 0.3, 3)
        if all(np.linalg.norm(c - tc) > r + tr + 1.0 for tc, tr in taken):
            return c, r
    if not must:
        return None
    idx = np.array(np.unravel_index(int(np.argmax(edt)), edt.shape))
    return idx + origin, max(min(r, float(edt[tuple(idx)]) - 0.5), _MIN_RADIUS_3D)


def make_volumes(
    n: int,
    shape: tuple[int, int, int] = (48, 64, 64),
    seed: int = 0,
    nodule_fraction: float = 0.7,
    max_nodules: int = 4,
) -> PhantomVolumes:
    """Generate ``n`` chest CT volumes of ``shape`` (D, H, W) voxels (HU, float32).

    Each volume is positive (holds 1..``max_nodules`` ellipsoidal nodules) with probability
    ``nodule_fraction``; volume ``i`` depends only on ``(seed, i)``.
    """
    n = _as_int("n", n, 1)
    try:
        dims = tuple(shape)
    except TypeError:
        raise MeddxError(f"phantom shape must be (D, H, W), got {shape!r}") from None
    if len(dims) != 3:
        raise MeddxError(f"phantom shape must be (D, H, W), got {shape!r}")
    D = _as_int("depth (shape[0])", dims[0], 8)
    H = _as_int("height (shape[1])", dims[1], 16)
    W = _as_int("width (shape[2])", dims[2], 16)
    seed = _as_int("seed", seed, 0)
    nodule_fraction = _as_fraction("nodule_fraction", nodule_fraction)
    max_nodules = _as_int("max_nodules", max_nodules, 1)
    if max_nodules > 255:
        raise MeddxError(f"phantom max_nodules must be <= 255 (uint8 masks), got {max_nodules}")

    full = (D, H, W)
    images = np.empty((n, *full), np.float32)
    masks = np.zeros((n, *full), np.uint8)
    lungs = np.zeros((n, *full), np.uint8)
    boxes: list[np.ndarray] = []
    centres: list[np.ndarray] = []
    diameters: list[np.ndarray] = []
    gain = _noise_gain(3, _NOISE_SIGMA)
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        positive = bool(rng.random() < nodule_fraction)
        img, inst, lung, nods = _volume(rng, full, positive, max_nodules)
        sd = rng.uniform(15.0, 40.0)
        white = rng.standard_normal(full, dtype=np.float32)
        noise = ndimage.gaussian_filter(white, _NOISE_SIGMA, mode="wrap")
        images[i] = ndimage.gaussian_filter(img, _PSF_SIGMA, mode="nearest") + noise * (sd / gain)
        masks[i], lungs[i] = inst, lung
        k = len(nods)
        box = np.zeros((k, 6), np.float32)
        for j in range(k):
            sl = _bbox(inst == j + 1)
            box[j] = [s.start for s in sl] + [s.stop for s in sl]
        boxes.append(box)
        centres.append(np.asarray([c for c, _ in nods], np.float32).reshape(k, 3))
        diameters.append(np.asarray([d for _, d in nods], np.float32).reshape(k))
    labels = (masks.reshape(n, -1).max(axis=1) > 0).astype(np.int64)
    sxy = BODY_WIDTH_MM / (2.0 * _BODY_HALF_WIDTH * min(H, W) / 2.0)
    sz = _LUNG_HEIGHT_MM / (2.0 * _LUNG_HALF_HEIGHT * D / 2.0)
    return PhantomVolumes(images, labels, masks, boxes, centres, diameters, lungs, (sz, sxy, sxy))


# --------------------------------------------------------------------------- display


def window(hu: np.ndarray, level: float = -600.0, width: float = 1500.0) -> np.ndarray:
    """Map HU to float32 in [0, 1] through a display window (default: lung window)."""
    if not width > 0:
        raise MeddxError(f"window width must be > 0, got {width!r}")
    lo = level - width / 2.0
    return np.clip((np.asarray(hu, np.float32) - lo) / width, 0.0, 1.0).astype(np.float32)


def to_uint8(hu: np.ndarray, level: float = -600.0, width: float = 1500.0) -> np.ndarray:
    """Window ``hu`` (default: lung window) and scale to 0..255 uint8, like an 8-bit export."""
    return np.rint(window(hu, level, width) * 255.0).astype(np.uint8)
