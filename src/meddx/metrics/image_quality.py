"""Image-quality metrics of reconstructions: PSNR and SSIM on a fixed, stated intensity range, per image,
with percentile-bootstrap CIs of the mean (:mod:`meddx.metrics.bootstrap`).

Both images are clipped to the range first and the range's width is the ``data_range`` of scikit-image's
``peak_signal_noise_ratio`` / ``structural_similarity`` (Gaussian-weighted 11 px windows, as Wang et al.), so a
number means the same thing on every data set: CT is scored in the HU window [-1000, 1000] (air to dense
bone), MRI on magnitudes scaled to [0, 1] per volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from meddx.errors import MeddxError


@dataclass(frozen=True)
class IntensityRange:
    lo: float
    hi: float
    unit: str

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def to_dict(self) -> dict[str, Any]:
        return {"lo": self.lo, "hi": self.hi, "unit": self.unit}


CT_RANGE = IntensityRange(-1000.0, 1000.0, "HU")
MRI_RANGE = IntensityRange(0.0, 1.0, "a.u. (volume scaled to [0, 1])")


def _pair(ref: Any, img: Any, rng: IntensityRange) -> tuple[np.ndarray, np.ndarray]:
    ref, img = np.asarray(ref), np.asarray(img)
    if np.iscomplexobj(ref) or np.iscomplexobj(img):
        raise MeddxError("image quality is scored on real images (take the magnitude of complex MRI first)")
    if ref.shape != img.shape or ref.ndim != 2:
        raise MeddxError(f"reference and image must be 2D of one shape, got {ref.shape} and {img.shape}")
    return (np.clip(ref, rng.lo, rng.hi).astype(np.float64), np.clip(img, rng.lo, rng.hi).astype(np.float64))


def psnr(ref: Any, img: Any, rng: IntensityRange) -> float:
    """PSNR in dB of ``img`` against ``ref`` after clipping both to ``rng`` (data range = its width)."""
    from skimage.metrics import peak_signal_noise_ratio

    a, b = _pair(ref, img, rng)
    if np.array_equal(a, b):
        return float("inf")
    return float(peak_signal_noise_ratio(a, b, data_range=rng.width))


def ssim(ref: Any, img: Any, rng: IntensityRange) -> float:
    """SSIM of ``img`` against ``ref`` after clipping both to ``rng`` (Gaussian window, sigma 1.5)."""
    from skimage.metrics import structural_similarity

    a, b = _pair(ref, img, rng)
    return float(structural_similarity(a, b, data_range=rng.width, gaussian_weights=True, sigma=1.5,
                                       use_sample_covariance=False))


def image_scores(refs: Any, imgs: Any, rng: IntensityRange) -> dict[str, np.ndarray]:
    """Per-image PSNR and SSIM of two (N, H, W) stacks."""
    refs, imgs = np.asarray(refs), np.asarray(imgs)
    if refs.shape != imgs.shape or refs.ndim != 3:
        raise MeddxError(f"need two (N, H, W) stacks of one shape, got {refs.shape} and {imgs.shape}")
    return {"psnr": np.array([psnr(r, i, rng) for r, i in zip(refs, imgs)]),
            "ssim": np.array([ssim(r, i, rng) for r, i in zip(refs, imgs)])}


def mean_with_ci(values: Any, n_bootstrap: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Mean of per-image values with a 95 % percentile-bootstrap CI over images (finite values only)."""
    from meddx.metrics.bootstrap import bootstrap_ci

    v = np.asarray(values, float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return {"mean": float("nan"), "ci": [float("nan"), float("nan")], "n": 0}
    ci = (bootstrap_ci(v, v, lambda t, _s: float(t.mean()), n_bootstrap=n_bootstrap, seed=seed)
          if n_bootstrap > 0 and v.size > 1 else (float("nan"), float("nan")))
    return {"mean": float(v.mean()), "ci": [float(ci[0]), float(ci[1])], "n": int(v.size)}


def summarize_scores(scores: dict[str, np.ndarray], n_bootstrap: int = 1000) -> dict[str, Any]:
    """``{"psnr": {...mean, ci, n}, "ssim": {...}}`` from :func:`image_scores`."""
    return {k: mean_with_ci(v, n_bootstrap) for k, v in scores.items()}
