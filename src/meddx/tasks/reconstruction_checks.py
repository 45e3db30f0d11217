"""Input checks of the reconstruction task: CT in HU, MRI magnitudes in [0, 1], one finite 2D slice; each
failure is a :class:`~meddx.errors.MeddxError` that the CLI prints as one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddx.errors import MeddxError


def check_range(x: np.ndarray, modality: str, where: str | None = None) -> None:
    """CT must be HU (air near -1000, not a 0..1 or 0..255 display range); MRI magnitudes in [0, 1]."""
    lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if modality == "ct" and lo > -500.0:
        raise MeddxError(f"CT slices must be in HU (air about -1000); these span {lo:g}..{hi:g} (a display "
                         "range? convert to HU first)", where)
    if modality == "mri" and (lo < -1e-3 or hi > 1.0 + 1e-3):
        raise MeddxError(f"MRI slices must be magnitudes scaled to [0, 1]; these span {lo:g}..{hi:g}", where)


def check_slice(image: np.ndarray, mri: bool, where: str | Path | None = None) -> np.ndarray:
    """One 2D slice of at least 16 px (MRI: sides a multiple of 8); complex only for MRI; finite."""
    image = np.squeeze(np.asarray(image))
    if np.iscomplexobj(image) and not mri:
        raise MeddxError("complex values where a real CT slice (HU) is expected", where)
    if image.ndim != 2 or min(image.shape) < 16:
        raise MeddxError(f"expected one 2D slice of at least 16 x 16 px, got shape {image.shape}", where)
    if mri and (image.shape[0] % 8 or image.shape[1] % 8):
        raise MeddxError(f"MRI slices need sides that are multiples of 8 (the U-Net), got {image.shape}", where)
    if not np.isfinite(image).all():
        raise MeddxError("slice contains NaN or infinite values", where)
    return image
