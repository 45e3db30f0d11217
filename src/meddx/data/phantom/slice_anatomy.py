"""Fixed anatomy of one 2D phantom slice, drawn on a canvas: body and fat layer, mediastinum, bone, the
lung outlines, and the smooth bias field. The lungs' contents (parenchyma, vessels, nodules) are in slices.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from meddx.data.phantom.common import _REF, AIR_HU, _ell2


@dataclass
class _Canvas2D:
    """One slice being drawn: the pixel grid, the clean image and what has been placed on it so far."""

    size: int
    Y: np.ndarray  # pixel row of each pixel
    X: np.ndarray  # pixel column of each pixel
    U: np.ndarray  # normalised x (-1..1 across the image)
    V: np.ndarray  # normalised y
    img: np.ndarray  # (size, size) float32 HU, starts as air
    blocked: np.ndarray  # where the lungs may not go
    inst: np.ndarray  # instance mask, k for the k-th nodule
    lung_mask: np.ndarray
    nodules: list[tuple[float, float, float]]  # (y, x, diameter) of placed nodules
    taken: list[tuple[float, float, float]]  # (y, x, r) of placed nodules

    @classmethod
    def new(cls, size: int, grid: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> _Canvas2D:
        Y, X, U, V = grid
        return cls(size, Y, X, U, V, np.full((size, size), AIR_HU, np.float32), np.zeros((size, size), bool),
                   np.zeros((size, size), np.uint8), np.zeros((size, size), bool), [], [])

    @property
    def half(self) -> float:
        return self.size / 2.0

    @property
    def c0(self) -> float:
        return (self.size - 1) / 2.0

    @property
    def ps(self) -> float:
        """Pixel-unit scale: 1 at the reference size."""
        return self.size / _REF

    def to_px(self, u: float, v: float) -> tuple[float, float]:
        return v * self.half + self.c0, u * self.half + self.c0  # (row, col)

    def paint(
        self,
        centre: tuple[float, float],
        axes: tuple[float, float],
        value: float | None = None,
        theta: float = 0.0,
        block: float = 0.0,
        within: np.ndarray | None = None,
    ) -> tuple[tuple[slice, slice], np.ndarray]:
        """Fill an ellipse (in a local window) with ``value``; block the lungs where rho^2 < ``block``.

        ``centre`` is (cu, cv) and ``axes`` (au, av), in normalised units; returns (window, rho^2 there).
        """
        (cu, cv), (au, av) = centre, axes
        size, half, c0 = self.size, self.half, self.c0
        reach = max(au, av) * math.sqrt(max(block, 1.0)) + 1.5 / half
        r0, c_0 = max(int((cv - reach) * half + c0), 0), max(int((cu - reach) * half + c0), 0)
        w = (slice(r0, min(int((cv + reach) * half + c0) + 2, size)),
             slice(c_0, min(int((cu + reach) * half + c0) + 2, size)))
        r2 = _ell2(self.U[w], self.V[w], cu, cv, au, av, theta)
        if value is not None:
            inside = r2 < 1.0 if within is None else (r2 < 1.0) & within[w]
            self.img[w][inside] = value
        if block:
            self.blocked[w] |= r2 < block
        return w, r2


class _Body2D(NamedTuple):
    cu: float  # centre and semi-axes of the body ellipse (normalised units)
    cv: float
    au: float
    av: float
    iau: float  # semi-axes inside the fat layer
    iav: float
    mask: np.ndarray  # body (fat and soft tissue)
    inner: np.ndarray  # soft tissue inside the fat layer


class _Lung2D(NamedTuple):
    side: float  # -1 (image left) or +1
    mask: np.ndarray
    cu: float
    cv: float
    au: float
    av: float


def _body_2d(rng: np.random.Generator, c: _Canvas2D) -> _Body2D:
    """Body ellipse with a flat back and a subcutaneous fat layer; blocks the lungs near the wall."""
    U, V = c.U, c.V
    bcu, bcv = rng.normal(0.0, 0.02), rng.normal(0.03, 0.02)
    bau, bav = rng.uniform(0.84, 0.95), rng.uniform(0.62, 0.72)
    back = bcv + 0.9 * bav
    body = (_ell2(U, V, bcu, bcv, bau, bav) < 1.0) & (V < back)
    fat = rng.uniform(0.03, 0.08)
    iau, iav = bau - fat, bav - 0.8 * fat
    inner2 = _ell2(U, V, bcu, bcv, iau, iav)
    inner = (inner2 < 1.0) & (V < back - 0.7 * fat)
    c.img[body] = rng.uniform(-120.0, -80.0)
    c.img[inner] = rng.uniform(30.0, 55.0)
    c.blocked |= (inner2 >= 0.86) | (V >= back - 0.12)
    return _Body2D(bcu, bcv, bau, bav, iau, iav, body, inner)


def _mediastinum_2d(rng: np.random.Generator, c: _Canvas2D, b: _Body2D) -> None:
    """Heart and descending aorta (sometimes contrast-enhanced)."""
    c.paint((b.cu + rng.uniform(0.05, 0.15), b.cv + rng.uniform(-0.12, 0.05)),
            (rng.uniform(0.2, 0.28), rng.uniform(0.2, 0.27)), rng.uniform(30.0, 60.0), rng.uniform(-0.5, 0.0),
            block=1.1)
    ao_r = rng.uniform(0.06, 0.09)
    c.paint((b.cu + rng.uniform(0.08, 0.15), b.cv + 0.55 * b.av), (ao_r, ao_r), rng.uniform(30.0, 250.0), block=1.3)


def _bones_2d(rng: np.random.Generator, c: _Canvas2D, b: _Body2D) -> None:
    """Vertebra (cortical rim, cancellous core), posterior arch with the canal, sternum, ribs."""
    sp_v, sp_r = b.cv + 0.5 * b.av, rng.uniform(0.09, 0.12)
    w, r2 = c.paint((b.cu, sp_v), (sp_r, 0.9 * sp_r), rng.uniform(700.0, 950.0), block=1.3)
    c.img[w][r2 < 0.6] = rng.uniform(180.0, 400.0)
    c.paint((b.cu, sp_v + 1.5 * sp_r), (0.45 * sp_r, 0.45 * sp_r), rng.uniform(400.0, 800.0))
    c.paint((b.cu, sp_v + 1.5 * sp_r), (0.2 * sp_r, 0.2 * sp_r), 20.0)
    c.paint((b.cu, b.cv - b.iav + 0.05), (0.09, 0.035), rng.uniform(300.0, 600.0))
    n_ribs = int(rng.integers(4, 9))
    rib_ang = rng.uniform(0.15, math.pi - 0.15, n_ribs) * rng.choice([-1.0, 1.0], n_ribs)
    rib_hu = rng.uniform(400.0, 800.0, n_ribs)
    for ra, rh in zip(rib_ang.tolist(), rib_hu.tolist(), strict=True):
        c.paint((b.cu + (b.iau - 0.04) * math.cos(ra), b.cv + (b.iav - 0.04) * math.sin(ra)), (0.045, 0.025), rh,
                ra + math.pi / 2, block=2.0, within=b.inner)


def _lungs_2d(rng: np.random.Generator, c: _Canvas2D, b: _Body2D) -> list[_Lung2D]:
    """Two lung ellipses carved by everything painted so far; a lung under 4 pixels is dropped."""
    lungs = []
    for side in (-1.0, 1.0):
        lcu = b.cu + side * rng.uniform(0.40, 0.50) * b.au / 0.9
        lcv = b.cv + rng.uniform(-0.08, 0.02)
        lau, lav = rng.uniform(0.25, 0.34), rng.uniform(0.40, 0.50) * b.av / 0.67
        w, r2 = c.paint((lcu, lcv), (lau, lav), theta=side * rng.uniform(0.0, 0.25))
        lung = np.zeros((c.size, c.size), bool)
        lung[w] = (r2 < 1.0) & ~c.blocked[w] & (c.U[w] * side > b.cu * side + 0.06)
        if lung.sum() >= 4:
            lungs.append(_Lung2D(side, lung, lcu, lcv, lau, lav))
    return lungs


def _bias_field_2d(rng: np.random.Generator, c: _Canvas2D, body: np.ndarray) -> None:
    """Smooth low-frequency intensity field inside the body."""
    U, V = c.U, c.V
    amp = rng.uniform(5.0, 30.0)
    freq = rng.uniform(0.5, 2.0, (2, 3, 1))
    phase = rng.uniform(0.0, 2 * math.pi, (2, 3, 1))
    bias = np.cos(math.pi * freq[0] * V[:, 0] + phase[0]).T @ np.cos(math.pi * freq[1] * U[0] + phase[1])
    c.img[body] += (amp / 3.0) * bias[body]
