"""3D phantom: chest CT volumes with ellipsoidal nodules, instance masks, boxes, centres and diameters."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    _REF,
    AIR_HU,
    BODY_WIDTH_MM,
    _as_fraction,
    _as_int,
    _bbox,
    _count_nodules,
    _lung_background,
    _noise_gain,
    _sigmoid,
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
