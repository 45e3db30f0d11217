"""Synthetic registration pairs under known random deformations: the field generator, resampling, landmarks
and :class:`PairSet`, shared by the phantom (:mod:`meddx.data.registration`), brain and folder loaders.

Convention: ``fixed(x) = moving(x + g(x))`` (MONAI ``Warp``), so ``g`` is the exact answer and a fixed landmark
``p`` sits at ``p + g(p)`` in the moving image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from meddx.data.split import Split

N_LANDMARKS = 12


@dataclass
class PairSet:
    """Pairs under construction: fixed/moving images and labels, landmarks, ids."""

    fixed: list[np.ndarray] = field(default_factory=list)
    moving: list[np.ndarray] = field(default_factory=list)
    fixed_labels: list[np.ndarray] = field(default_factory=list)
    moving_labels: list[np.ndarray] = field(default_factory=list)
    landmarks: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)

    def split(self) -> tuple[Split, dict[str, Any]]:
        images = torch.from_numpy(np.stack([np.stack(p) for p in zip(self.fixed, self.moving)]).astype(np.float32))
        labels = torch.from_numpy(np.stack([np.stack(p) for p in zip(self.fixed_labels, self.moving_labels)])
                                  .astype(np.uint8))
        return Split(images, labels, list(self.ids)), {"landmarks": list(self.landmarks)}


# ----------------------------------------------------------------------------- known random deformations


def random_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float, rotate_deg: float = 5.0,
                 scale: float = 0.05, shift: float = 0.03, control: int = 5) -> np.ndarray:
    """A smooth random displacement field (D, *shape) in voxels: a small affine map about the centre plus
    cubic-upsampled random control-point displacements of at most ``amplitude`` voxels."""
    import torch.nn.functional as F

    nd = len(shape)
    coarse = torch.from_numpy(rng.standard_normal((1, nd) + (control,) * nd).astype(np.float32))
    smooth = F.interpolate(coarse, size=shape, mode="bicubic" if nd == 2 else "trilinear", align_corners=True)[0]
    smooth = smooth.numpy() * (amplitude / max(float(np.abs(smooth).max()), 1e-6))
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in shape], indexing="ij"))
    angle = math.radians(rng.uniform(-rotate_deg, rotate_deg))
    mat = np.eye(nd) * rng.uniform(1 - scale, 1 + scale, nd)
    rot = np.eye(nd)
    rot[-2:, -2:] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]  # in-plane
    mat = rot @ mat - np.eye(nd)
    affine = np.einsum("ij,j...->i...", mat, grid)
    offset = (rng.uniform(-shift, shift, nd) * np.asarray(shape)).reshape((nd,) + (1,) * nd)
    return (smooth + affine + offset).astype(np.float32)


def breathing_field(rng: np.random.Generator, lungs: np.ndarray, strength: float = 0.06) -> np.ndarray:
    """Breathing-like motion: lungs stretched along the first axis (cranio-caudal in 3D, antero-posterior in
    2D), smoothly fading outside them."""
    from scipy.ndimage import gaussian_filter

    shape = lungs.shape
    weight = gaussian_filter(lungs.astype(np.float32), sigma=max(shape) / 16)
    coord = np.arange(shape[0], dtype=np.float32) - (shape[0] - 1) / 2
    out = np.zeros((len(shape),) + shape, np.float32)
    out[0] = rng.uniform(-strength, strength) * weight * coord.reshape((-1,) + (1,) * (len(shape) - 1))
    return out


def resample(image: np.ndarray, ddf: np.ndarray, order: int = 1) -> np.ndarray:
    """``image(x + ddf(x))`` (edge values outside): linear for images, ``order=0`` (nearest) for labels."""
    from scipy.ndimage import map_coordinates

    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in image.shape], indexing="ij"))
    return map_coordinates(image, grid + ddf, order=order, mode="nearest").astype(image.dtype)


def safe_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float,
               lungs: np.ndarray | None = None) -> np.ndarray:
    """A random field without folding (halved until det J > 0 everywhere), so the true map is invertible."""
    from meddx.metrics.registration import jacobian_determinant

    g = random_field(rng, shape, amplitude)
    if lungs is not None:
        g = g + breathing_field(rng, lungs)
    while float(jacobian_determinant(g).min()) <= 0.05:
        g = g * 0.5
    return g


def pick_landmarks(rng: np.random.Generator, labels: np.ndarray, n: int = N_LANDMARKS) -> np.ndarray:
    """``n`` voxel positions (float, (n, D)) spread over the foreground structures of ``labels``."""
    pts = []
    structures = [k for k in np.unique(labels) if k > 0]
    for i in range(n):
        where = np.argwhere(labels == structures[i % len(structures)]) if structures else np.argwhere(labels >= 0)
        pts.append(where[rng.integers(len(where))])
    return np.asarray(pts, dtype=np.float64).reshape(n, labels.ndim)


def intensity_change(rng: np.random.Generator, image: np.ndarray, noise: float = 0.02) -> np.ndarray:
    """Contrast x0.9-1.1, offset +-0.05 and Gaussian noise (sd ``noise``), clipped to [0, 1]."""
    out = image * rng.uniform(0.9, 1.1) + rng.uniform(-0.05, 0.05)
    return np.clip(out + rng.normal(0, noise, image.shape), 0, 1).astype(np.float32)


def add_pair(pairs: PairSet, rng: np.random.Generator, image: np.ndarray, labels: np.ndarray, amplitude: float,
             name: str, lungs: np.ndarray | None = None, fixed_source: np.ndarray | None = None) -> None:
    """One synthetic pair from an original ``image`` (the moving one) and its ``labels``.

    ``fixed_source`` (optional): another image of the same anatomy on the same grid (a second modality) that
    becomes the fixed image after the same deformation.
    """
    from meddx.metrics.registration import sample_field

    g = safe_field(rng, image.shape, amplitude, lungs)
    fixed = intensity_change(rng, resample(fixed_source if fixed_source is not None else image, g))
    fixed_labels = resample(labels, g, order=0)
    p = pick_landmarks(rng, fixed_labels)
    pairs.fixed.append(fixed)
    pairs.moving.append(image.astype(np.float32))
    pairs.fixed_labels.append(fixed_labels)
    pairs.moving_labels.append(labels)
    pairs.landmarks.append((p, p + sample_field(g, p)))
    pairs.ids.append(name)
