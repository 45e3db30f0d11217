"""Classical reconstructions of undersampled single-coil MRI: zero-filled inverse FFT, and TV-regularised
compressed sensing by alternating a TV (Chambolle) denoising step with hard k-space data consistency
(POCS-style; Lustig et al. 2007 use the same prior with a different solver).
"""

from __future__ import annotations

from typing import Any

import numpy as np

TV_GRID = (0.01, 0.02, 0.04, 0.08, 0.16)


def zero_filled(zf: np.ndarray) -> np.ndarray:
    """Magnitude of the zero-filled complex images (N, H, W)."""
    return np.abs(zf).astype(np.float32)


def tv_cs(zf: np.ndarray, mask: np.ndarray, weight: float, iterations: int = 20) -> np.ndarray:
    """One slice: TV-denoise real and imaginary parts, re-insert the measured k-space columns, repeat."""
    from skimage.restoration import denoise_tv_chambolle

    from meddx.data.degrade import image_from_kspace, kspace

    measured = kspace(zf)
    x = zf.astype(np.complex128)
    for _ in range(iterations):
        x = denoise_tv_chambolle(x.real, weight=weight) + 1j * denoise_tv_chambolle(x.imag, weight=weight)
        k = kspace(x)
        k[:, mask] = measured[:, mask]
        x = image_from_kspace(k)
    return np.abs(x).astype(np.float32)


def tv_cs_batch(zf: np.ndarray, masks: np.ndarray, weight: float, iterations: int = 20) -> np.ndarray:
    return np.stack([tv_cs(z, m, weight, iterations) for z, m in zip(zf, masks)])


def tune_tv_cs(clean: np.ndarray, zf: np.ndarray, masks: np.ndarray, rng: Any, grid: tuple[float, ...] = TV_GRID,
               max_images: int = 12) -> tuple[float, dict[float, float]]:
    """The TV weight with the best mean PSNR on (up to ``max_images``) validation slices."""
    from meddx.metrics.image_quality import image_scores

    pick = np.linspace(0, len(clean) - 1, min(max_images, len(clean))).round().astype(int)
    scores = {w: float(np.mean(image_scores(clean[pick], tv_cs_batch(zf[pick], masks[pick], w), rng)["psnr"]))
              for w in grid}
    return max(scores, key=scores.get), scores
