"""Shared parts of the CT phantom: HU constants and nominal geometry, argument checks, small geometry helpers
(ellipses, bounding boxes, noise gain), nodule counts, lung parenchyma, and the display window.
"""

from __future__ import annotations

import math
import operator

import numpy as np
from scipy import ndimage

from meddx.errors import MeddxError

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


def nodules_per_lung(rng: np.random.Generator, n_lungs: int, positive: bool,
                     max_nodules: int) -> tuple[list[int], float]:
    """How many nodules each lung gets (0 for a negative image or no lung), then the vessels' HU; the draws in
    this order: count, lung of each nodule, vessel HU (2D slices and 3D volumes alike)."""
    n_total = _count_nodules(rng, max_nodules) if positive and n_lungs else 0
    split = np.bincount(rng.integers(0, max(n_lungs, 1), n_total), minlength=n_lungs).tolist()
    return split, rng.uniform(-20.0, 80.0)


def _lung_background(rng: np.random.Generator, v: np.ndarray, lcv: float, lav: float) -> np.ndarray:
    """Lung parenchyma: per-image density with a gravity-dependent (posterior) gradient."""
    base = rng.uniform(-910.0, -840.0)
    slope = rng.uniform(0.0, 50.0)
    return (base + slope * np.clip((v - lcv) / lav, -1.0, 1.0)).astype(np.float32)


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
