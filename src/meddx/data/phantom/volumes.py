"""3D phantom: chest CT volumes with ellipsoidal nodules, instance masks, boxes, centres and diameters."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import ndimage

from meddx.data.phantom.common import (
    _BODY_HALF_WIDTH,
    _FULL_CONTRAST_RADIUS,
    _LUNG_HALF_HEIGHT,
    _LUNG_HEIGHT_MM,
    _MIN_RADIUS_3D,
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
from meddx.data.phantom.volume_anatomy import (
    _bias_field_3d,
    _body_3d,
    _Canvas3D,
    _Lung3D,
    _lungs_3d,
    _mediastinum_3d,
    _ribs_3d,
    _spine_3d,
)
from meddx.errors import MeddxError


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


# --------------------------------------------------------------------------- 3D volumes


def _tube(
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    ends: tuple[np.ndarray, np.ndarray],
    radii: tuple[float, float],
    edge: float,
    full: float,
) -> np.ndarray:
    """Soft-edged tapered tube profile between the points ``ends`` = (a, b) (z, y, x) on an open ``grid``.

    ``radii`` = (r0, r1) are the radii at a and b. Tubes thinner than ``full`` (radius, voxels) lose
    contrast in proportion (partial volume).
    """
    z, y, x = grid
    a, b = ends
    r0, r1 = radii
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


class _Window3D(NamedTuple):
    """The bounding box of one lung: slices, the lung inside it, its origin and open-grid voxel coordinates."""

    win: tuple[slice, ...]
    lm: np.ndarray
    origin: np.ndarray  # (z, y, x) of the window's first voxel, float64
    gz: np.ndarray  # (d, 1, 1), (1, h, 1), (1, 1, w) voxel coordinates, float32
    gy: np.ndarray
    gx: np.ndarray


def _lung_window_3d(lung: np.ndarray) -> _Window3D:
    win = _bbox(lung)
    origin = np.array([w.start for w in win], np.float64)
    gz, gy, gx = (np.arange(w.start, w.stop, dtype=np.float32).reshape(
        [-1 if a == i else 1 for a in range(3)]) for i, w in enumerate(win))
    return _Window3D(win, lung[win], origin, gz, gy, gx)


def _vessels_3d(
    rng: np.random.Generator, c: _Canvas3D, lung: _Lung3D
) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
    """The vessel tree of one lung, growing laterally from a jittered hilum (voxel coordinates)."""
    hilum = np.array([(lung.cz + rng.uniform(-0.1, 0.1)) * c.hz + c.cz,
                      (lung.cv + rng.uniform(-0.1, 0.1)) * c.hp + c.cy,
                      (lung.cu - lung.side * 0.6 * lung.au) * c.hp + c.cx])
    return _vessel_tree_3d(rng, hilum, np.array([0.0, 0.0, lung.side]), rng.uniform(0.45, 0.65) * lung.av * c.hp,
                           rng.uniform(1.0, 1.5) * c.ps)


def _vessel_profile_3d(segs: list[tuple[np.ndarray, np.ndarray, float, float]], w: _Window3D) -> np.ndarray:
    """Max of the tube profiles of ``segs`` over the lung window (each tube drawn in its own bounding box)."""
    vp = np.zeros(w.lm.shape, np.float32)
    for a, b, r0, r1 in segs:
        lo = np.maximum(np.floor(np.minimum(a, b) - r0 - 2.0) - w.origin, 0).astype(int)
        hi = np.minimum(np.ceil(np.maximum(a, b) + r0 + 3.0) - w.origin, w.lm.shape).astype(int)
        if np.any(hi <= lo):
            continue
        sl = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi, strict=True))
        prof = _tube((w.gz[sl[0]], w.gy[:, sl[1]], w.gx[:, :, sl[2]]), (a, b), (r0, r1), 0.25,
                     _FULL_CONTRAST_RADIUS)
        np.maximum(vp[sl], prof, out=vp[sl])
    return vp


def _ellipsoid_3d(
    rng: np.random.Generator, w: _Window3D, centre: np.ndarray, r: float
) -> tuple[tuple[slice, ...], np.ndarray]:
    """A randomly shaped and oriented ellipsoid of mean semi-axis ``r``: (its box in the window, rho there)."""
    axes = r * rng.uniform(0.75, 1.25, 3)
    axes *= r / axes.mean()
    rot, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    ext = float(axes.max()) + 3.0
    lo = np.maximum(np.floor(centre - ext) - w.origin, 0).astype(int)
    hi = np.minimum(np.ceil(centre + ext + 1.0) - w.origin, w.lm.shape).astype(int)
    sl = tuple(slice(int(p), int(q)) for p, q in zip(lo, hi, strict=True))
    d = (w.gz[sl[0]] - centre[0], w.gy[:, sl[1]] - centre[1], w.gx[:, :, sl[2]] - centre[2])
    rho2 = sum(((rot[0, j] * d[0] + rot[1, j] * d[1] + rot[2, j] * d[2]) / axes[j]) ** 2
               for j in range(3))
    return sl, np.sqrt(rho2)


def _draw_nodule_3d(
    rng: np.random.Generator,
    c: _Canvas3D,
    w: _Window3D,
    placed: tuple[np.ndarray, float],
    field: np.ndarray,
    value: np.ndarray,
) -> None:
    """Draw one ellipsoidal nodule into ``value`` (the lung window, in place) and record it.

    A nodule that would own no voxel (all taken or outside the lung) is dropped.
    """
    centre, r = placed
    ps = c.ps
    sl, rho = _ellipsoid_3d(rng, w, centre, r)
    ggo = r >= 2.0 * ps and rng.random() < 0.25
    hu = rng.uniform(-650.0, -350.0) if ggo else rng.uniform(-60.0, 80.0)
    edge = rng.uniform(0.5, 1.0) * ps if ggo else rng.uniform(0.2, 0.45) * ps
    sub = c.inst[w.win][sl]
    own = (rho <= 1.0) & w.lm[sl] & (sub == 0)
    if not own.any():
        return
    prof = _sigmoid((1.0 - rho) * r / edge)
    value[sl] = np.maximum(value[sl], field[sl] + (hu - field[sl]) * prof)
    sub[own] = len(c.nodules) + 1
    c.nodules.append((centre.astype(np.float32), float(2.0 * r)))
    c.taken.append((centre, r))


def _fill_lung_3d(rng: np.random.Generator, c: _Canvas3D, lung: _Lung3D, n_here: int, vessel_hu: float) -> None:
    """Parenchyma, vessels and ``n_here`` nodules of one lung, written into the image."""
    c.lung_mask |= lung.mask
    w = _lung_window_3d(lung.mask)
    field = np.broadcast_to(_lung_background(rng, c.V[:, w.win[1]], lung.cv, lung.av), w.lm.shape)
    segs = _vessels_3d(rng, c, lung)
    vp = _vessel_profile_3d(segs, w)
    value = field + (vessel_hu - field) * vp
    if n_here:
        edt = ndimage.distance_transform_edt(np.pad(w.lm, 1))[1:-1, 1:-1, 1:-1]
        for _ in range(n_here):
            placed = _place_nodule_3d(rng, edt, segs, w.origin, c.taken, c.ps, must=not c.nodules)
            if placed is not None:
                _draw_nodule_3d(rng, c, w, placed, field, value)
    c.img[w.win][w.lm] = value[w.lm]


def _volume(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    positive: bool,
    max_nodules: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[tuple[np.ndarray, float]]]:
    """One clean volume: image, instance mask, lung mask, nodules (centre zyx, diameter).

    The draws from ``rng`` happen in this order: body, mediastinum, spine, ribs, lungs, nodule count
    and split, vessel density, then per lung (parenchyma, vessels, nodules), then the bias field.
    """
    c = _Canvas3D.new(shape)
    b = _body_3d(rng, c)
    heart2, aorta2 = _mediastinum_3d(rng, c, b)
    spine2 = _spine_3d(rng, c, b)
    _ribs_3d(rng, c, b)
    allowed = ((b.inner2 < 0.7) & (c.V < b.back - 0.12) & (aorta2 > 1.3) & (spine2 > 1.6) & (heart2 > 1.1))
    lungs = _lungs_3d(rng, c, b, allowed)
    split, vessel_hu = nodules_per_lung(rng, len(lungs), positive, max_nodules)
    for lung, n_here in zip(lungs, split, strict=True):
        _fill_lung_3d(rng, c, lung, n_here, vessel_hu)
    _bias_field_3d(rng, c, b.mask)
    return c.img, c.inst, c.lung_mask, c.nodules


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
