"""Fixed anatomy of one 3D phantom volume, drawn on a canvas: body and fat layer, heart and aorta, spine,
ribs, the lung outlines, and the smooth bias field. The lungs' contents (parenchyma, vessels, nodules)
are in volumes.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from meddx.data.phantom.common import _REF, AIR_HU


@dataclass
class _Canvas3D:
    """One volume being drawn: the voxel grid, the clean image and what has been placed in it so far."""

    shape: tuple[int, int, int]  # (D, H, W)
    hz: float  # half the depth, voxels
    hp: float  # half the in-plane side (the smaller of H and W), voxels
    cz: float  # centre voxel (z, y, x)
    cy: float
    cx: float
    Z: np.ndarray  # normalised coordinates on an open grid: (D, 1, 1), (1, H, 1), (1, 1, W)
    V: np.ndarray
    U: np.ndarray
    ps: float  # voxel-unit scale: 1 at the reference size
    img: np.ndarray  # (D, H, W) float32 HU, starts as air
    inst: np.ndarray  # instance mask, k for the k-th nodule
    lung_mask: np.ndarray
    nodules: list[tuple[np.ndarray, float]]  # (centre zyx float32, diameter) of placed nodules
    taken: list[tuple[np.ndarray, float]]  # (centre zyx, mean radius) of placed nodules

    @classmethod
    def new(cls, shape: tuple[int, int, int]) -> _Canvas3D:
        D, H, W = shape
        hz, hp = D / 2.0, min(H, W) / 2.0
        cz, cy, cx = (D - 1) / 2.0, (H - 1) / 2.0, (W - 1) / 2.0
        Z = ((np.arange(D, dtype=np.float32) - cz) / hz)[:, None, None]
        V = ((np.arange(H, dtype=np.float32) - cy) / hp)[None, :, None]
        U = ((np.arange(W, dtype=np.float32) - cx) / hp)[None, None, :]
        ps = hp * 2.0 / _REF
        full = (D, H, W)
        return cls(full, hz, hp, cz, cy, cx, Z, V, U, ps, np.full(full, AIR_HU, np.float32),
                   np.zeros(full, np.uint8), np.zeros(full, bool), [], [])

    def ell3(self, c: tuple[float, float, float], a: tuple[float, float, float]) -> np.ndarray:
        """Squared normalised radius of an axis-aligned ellipsoid, centre and semi-axes (z, v, u): < 1 inside."""
        return ((self.Z - c[0]) / a[0]) ** 2 + ((self.V - c[1]) / a[1]) ** 2 + ((self.U - c[2]) / a[2]) ** 2


class _Body3D(NamedTuple):
    cu: float  # body centre (normalised units)
    cv: float
    back: np.ndarray  # the flat back, v coordinate per slice
    mask: np.ndarray  # body (fat and soft tissue), full shape
    inner2: np.ndarray  # squared normalised radius inside the fat layer
    inner: np.ndarray  # soft tissue inside the fat layer, full shape


class _Lung3D(NamedTuple):
    side: float  # -1 (image left) or +1
    mask: np.ndarray
    cz: float
    cu: float
    cv: float
    au: float
    av: float


def _body_3d(rng: np.random.Generator, c: _Canvas3D) -> _Body3D:
    """Body ellipse (widening caudally) with a flat back and a subcutaneous fat layer."""
    Z, V, U, full = c.Z, c.V, c.U, c.shape
    bcu, bcv = rng.normal(0.0, 0.02), rng.normal(0.03, 0.02)
    bau = rng.uniform(0.82, 0.92) * (1.0 + 0.05 * Z)  # widening caudally
    bav = rng.uniform(0.62, 0.70) * (1.0 + 0.04 * Z)
    back = bcv + 0.9 * bav
    body = np.broadcast_to((((U - bcu) / bau) ** 2 + ((V - bcv) / bav) ** 2 < 1.0) & (V < back), full)
    fat = rng.uniform(0.03, 0.08)
    inner2 = ((U - bcu) / (bau - fat)) ** 2 + ((V - bcv) / (bav - 0.8 * fat)) ** 2
    inner = np.broadcast_to((inner2 < 1.0) & (V < back - 0.7 * fat), full)
    c.img[body] = rng.uniform(-120.0, -80.0)
    c.img[inner] = rng.uniform(30.0, 55.0)
    return _Body3D(bcu, bcv, back, body, inner2, inner)


def _mediastinum_3d(rng: np.random.Generator, c: _Canvas3D, b: _Body3D) -> tuple[np.ndarray, np.ndarray]:
    """Heart (ellipsoid) and descending aorta (sometimes contrast-enhanced); returns their rho^2 maps."""
    V, U = c.V, c.U
    heart2 = c.ell3((rng.uniform(0.35, 0.6), b.cv + rng.uniform(-0.1, 0.05), b.cu + rng.uniform(0.05, 0.15)),
                    (rng.uniform(0.4, 0.55), rng.uniform(0.2, 0.27), rng.uniform(0.22, 0.3)))
    c.img[heart2 < 1.0] = rng.uniform(30.0, 60.0)
    ao_r = rng.uniform(0.06, 0.09)
    aorta2 = np.broadcast_to(((U - b.cu - rng.uniform(0.08, 0.15)) / ao_r) ** 2
                             + ((V - b.cv - 0.55 * 0.66) / ao_r) ** 2, c.shape)
    c.img[aorta2 < 1.0] = rng.uniform(30.0, 250.0)
    return heart2, aorta2


def _spine_3d(rng: np.random.Generator, c: _Canvas3D, b: _Body3D) -> np.ndarray:
    """Vertebral column (cortical rim, cancellous core, intervertebral discs) and posterior arch.

    Returns the vertebral bodies' rho^2 map.
    """
    Z, V, U, full = c.Z, c.V, c.U, c.shape
    sp_r = rng.uniform(0.09, 0.12)
    sp_v = b.cv + 0.5 * 0.66
    spine2 = np.broadcast_to(((U - b.cu) / sp_r) ** 2 + ((V - sp_v) / (0.9 * sp_r)) ** 2, full)
    disc = np.cos(2 * math.pi * Z / 0.17 + rng.uniform(0, 6.3)) > 0.8  # intervertebral discs
    c.img[(spine2 < 1.0)] = rng.uniform(700.0, 950.0)
    c.img[(spine2 < 0.6)] = rng.uniform(180.0, 400.0)
    c.img[(spine2 < 1.0) & disc] = rng.uniform(60.0, 100.0)
    arch2 = ((U - b.cu) / (0.45 * sp_r)) ** 2 + ((V - sp_v - 1.5 * sp_r) / (0.45 * sp_r)) ** 2
    c.img[np.broadcast_to(arch2 < 1.0, full)] = rng.uniform(400.0, 800.0)
    return spine2


def _ribs_3d(rng: np.random.Generator, c: _Canvas3D, b: _Body3D) -> None:
    """Ribs: slanted bands just inside the body wall."""
    Z, V = c.Z, c.V
    band = (b.inner2 > 0.72) & (b.inner2 < 0.86)
    ribs = band & (np.cos(2 * math.pi * (Z + 0.25 * V) / 0.17 + rng.uniform(0, 6.3)) > 0.55) & (V > b.cv - 0.5)
    c.img[ribs & b.inner] = rng.uniform(400.0, 800.0)


def _lungs_3d(rng: np.random.Generator, c: _Canvas3D, b: _Body3D, allowed: np.ndarray) -> list[_Lung3D]:
    """Two lung ellipsoids inside ``allowed``, cut by the diaphragm domes; a lung under 8 voxels is dropped."""
    lungs = []
    for side in (-1.0, 1.0):
        lcz, lcu = rng.uniform(-0.1, 0.05), b.cu + side * rng.uniform(0.40, 0.50)
        lcv = b.cv + rng.uniform(-0.08, 0.02)
        laz, lau, lav = rng.uniform(0.8, 0.95), rng.uniform(0.25, 0.34), rng.uniform(0.40, 0.50)
        dome2 = c.ell3((rng.uniform(1.15, 1.45), lcv + 0.1, lcu), (0.6, 0.7, 0.5))  # diaphragm
        lung = (c.ell3((lcz, lcv, lcu), (laz, lav, lau)) < 1.0) & allowed & (dome2 > 1.0)
        lung &= c.U * side > b.cu * side + 0.06
        if lung.sum() >= 8:
            lungs.append(_Lung3D(side, lung, lcz, lcu, lcv, lau, lav))
    return lungs


def _bias_field_3d(rng: np.random.Generator, c: _Canvas3D, body: np.ndarray) -> None:
    """Smooth low-frequency intensity field inside the body."""
    amp = rng.uniform(5.0, 30.0)
    freq = rng.uniform(0.5, 2.0, (3, 3))
    phase = rng.uniform(0.0, 2 * math.pi, 3)
    bias = sum(np.cos(math.pi * (f[0] * c.Z + f[1] * c.V + f[2] * c.U) + p)
               for f, p in zip(freq, phase, strict=True))
    c.img[body] += (amp / 3.0) * np.broadcast_to(bias, c.shape)[body]
