"""Classical denoisers of FBP slices (scikit-image): non-local means, TV (Chambolle) and wavelet shrinkage.

Each has one strength, a multiple of the slice's estimated noise sd (``estimate_sigma``) for NLM and wavelet,
the TV weight itself for TV (on slices scaled by the intensity range's width). :func:`tune` picks it by mean
PSNR on validation slices only. BM3D is not here: its package's licence is non-commercial, so it appears only
as an optional baseline in ``benchmarks/reconstruct.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from meddx.errors import MeddxError


def _sigma(x: np.ndarray) -> float:
    from skimage.restoration import estimate_sigma

    return max(float(estimate_sigma(x)), 1e-6)


def nlm(x: np.ndarray, strength: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    s = _sigma(x)
    return denoise_nl_means(x, h=strength * s, sigma=s, patch_size=5, patch_distance=6, fast_mode=True)


def tv(x: np.ndarray, strength: float) -> np.ndarray:
    from skimage.restoration import denoise_tv_chambolle

    return denoise_tv_chambolle(x, weight=strength)


def wavelet(x: np.ndarray, strength: float) -> np.ndarray:
    from skimage.restoration import denoise_wavelet

    return denoise_wavelet(x, sigma=strength * _sigma(x), wavelet="db2", mode="soft", method="BayesShrink",
                           rescale_sigma=True)


@dataclass(frozen=True)
class Denoiser:
    name: str
    run: Callable[[np.ndarray, float], np.ndarray]
    grid: tuple[float, ...]  # strengths tried on validation


DENOISERS = {d.name: d for d in (
    Denoiser("nlm", nlm, (0.8, 1.2, 1.6, 2.0, 2.5)),
    Denoiser("tv", tv, (0.01, 0.02, 0.04, 0.08, 0.12)),
    Denoiser("wavelet", wavelet, (0.5, 0.75, 1.0, 1.5, 2.0)),
)}


def denoise(images: np.ndarray, method: str, strength: float, lo: float, hi: float) -> np.ndarray:
    """Denoise a (N, H, W) stack in display units; the methods see it scaled by ``1 / (hi - lo)``."""
    if method not in DENOISERS:
        raise MeddxError(f"unknown denoiser {method!r}; available: {', '.join(DENOISERS)}")
    width = hi - lo
    run = DENOISERS[method].run
    return np.stack([run((x - lo) / width, strength) * width + lo for x in np.asarray(images, np.float64)]
                    ).astype(np.float32)


def tune(method: str, clean: np.ndarray, degraded: np.ndarray, rng: Any, grid: tuple[float, ...] | None = None,
         max_images: int = 16) -> tuple[float, dict[float, float]]:
    """The strength with the best mean PSNR on (up to ``max_images`` evenly spaced) validation slices."""
    from meddx.metrics.image_quality import image_scores

    pick = np.linspace(0, len(clean) - 1, min(max_images, len(clean))).round().astype(int)
    scores = {}
    for s in grid or DENOISERS[method].grid:
        out = denoise(degraded[pick], method, s, rng.lo, rng.hi)
        scores[s] = float(np.mean(image_scores(clean[pick], out, rng)["psnr"]))
    return max(scores, key=scores.get), scores
