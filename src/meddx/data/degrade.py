"""Physically simulated degradations of clean images, deterministic by seed (``numpy.random.default_rng``).

* **Low-dose CT** (:func:`low_dose_ct`): HU -> linear attenuation (``mu = mu_water * (1 + HU / 1000)``),
  parallel-beam line integrals (scikit-image ``radon``, 360 views over 180 degrees), Poisson photon counts
  at ``photons`` incident photons per detector pixel (LoDoPaB-CT's 4096 is the reference dose), the log
  transform back to line integrals, filtered back-projection (``iradon``, ramp or Hann filter) and back to HU.
  scikit-image's CPU operators are used (not deepinv/ODL/astra) because they are already a dependency,
  deterministic and fast enough at 128-256 px (about 0.1 s per 128 px slice on one core).
* **Sparse-view CT** (:func:`sparse_view_ct`): noiseless FBP from ``views`` (e.g. 60 or 90) of 180 degrees.
* **Accelerated MRI** (:func:`undersample_mri`): single-coil k-space by a centred orthonormal FFT, a
  fastMRI-style Cartesian mask from MONAI (``EquispacedKspaceMask`` or ``RandomKspaceMask``: every
  ``acceleration``-th column, or random columns, plus a fully sampled centre) and the zero-filled inverse FFT.

Scanner-style conventions: the reconstructed field of view is the circle inscribed in the image (pixels
outside it are air, -1000 HU), as for skimage's ``circle=True`` geometry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from meddx.errors import MeddxError

MU_WATER = 0.0192  # linear attenuation of water at about 70 keV, per mm
REFERENCE_PHOTONS = 4096  # LoDoPaB-CT's incident photons per detector pixel
FULL_VIEWS = 360  # projections over 180 degrees for the low-dose scan
AIR_HU = -1000.0
VIEW_GROUPS = 2  # radon/iradon run over this many groups of views in parallel threads (see _view_groups)
MRI_CENTER_FRACTION = {4: 0.08, 8: 0.04}  # fastMRI's defaults: 8 % of the columns at 4x, 4 % at 8x


@dataclass(frozen=True)
class Degradation:
    """One named degradation: what ``meddx train --degrade NAME`` simulates."""

    name: str
    kind: str  # lowdose | sparseview | mri
    photons: float = REFERENCE_PHOTONS
    views: int = FULL_VIEWS
    acceleration: int = 4
    mask: str = "equispaced"  # MRI: equispaced | random
    summary: str = ""


DEGRADATIONS: dict[str, Degradation] = {d.name: d for d in (
    Degradation("lowdose", "lowdose", summary="CT at 4096 photons/pixel (LoDoPaB reference dose), 360 views, FBP"),
    Degradation("lowdose1024", "lowdose", photons=1024, summary="CT at 1024 photons/pixel (1/4 reference), FBP"),
    Degradation("lowdose256", "lowdose", photons=256, summary="CT at 256 photons/pixel (1/16 reference), FBP"),
    Degradation("sparseview", "sparseview", views=60, summary="noiseless CT FBP from 60 of 180 degrees"),
    Degradation("sparseview90", "sparseview", views=90, summary="noiseless CT FBP from 90 views"),
    Degradation("mri4x", "mri", acceleration=4, summary="MRI 4x, equispaced Cartesian mask, 8 % centre, zero-filled"),
    Degradation("mri8x", "mri", acceleration=8, summary="MRI 8x, equispaced Cartesian mask, 4 % centre, zero-filled"),
    Degradation("mri4x-random", "mri", acceleration=4, mask="random", summary="MRI 4x, random Cartesian mask"),
)}


def get_degradation(name: str) -> Degradation:
    if name not in DEGRADATIONS:
        raise MeddxError(f"unknown degradation {name!r}; available: {', '.join(DEGRADATIONS)}")
    return DEGRADATIONS[name]


# ----------------------------------------------------------------------------------------------- CT


def _check_real_2d(image: np.ndarray, what: str) -> np.ndarray:
    image = np.asarray(image)
    if np.iscomplexobj(image):
        raise MeddxError(f"{what} must be real-valued, got complex data")
    if image.ndim != 2 or image.shape[0] != image.shape[1]:
        raise MeddxError(f"{what} must be one square 2D slice, got shape {image.shape}")
    if not np.isfinite(image).all():
        raise MeddxError(f"{what} contains NaN or infinite values")
    return image.astype(np.float64)


@functools.lru_cache(maxsize=8)
def field_of_view(size: int) -> np.ndarray:
    """Boolean mask of the circle inscribed in a ``size`` x ``size`` image, exactly as skimage ``radon``'s
    ``circle=True`` check defines it (centre ``size // 2``, radius ``size // 2``). Cached and read-only: every
    projection and FBP needs it (1 ms at 256 px, twice per data-consistency step)."""
    yy, xx = np.mgrid[:size, :size]
    mask = (yy - size // 2) ** 2 + (xx - size // 2) ** 2 <= (size // 2) ** 2
    mask.setflags(write=False)
    return mask


def ct_reference(hu: np.ndarray) -> np.ndarray:
    """The clean target: HU clipped below at air and set to air outside the scanner's field of view."""
    hu = _check_real_2d(hu, "CT slice")
    out = np.maximum(hu, AIR_HU)
    out[~field_of_view(hu.shape[0])] = AIR_HU
    return out.astype(np.float32)


def hu_to_mu(hu: np.ndarray) -> np.ndarray:
    return MU_WATER * (1.0 + np.asarray(hu, np.float64) / 1000.0)


def mu_to_hu(mu: np.ndarray) -> np.ndarray:
    return (np.asarray(mu, np.float64) / MU_WATER - 1.0) * 1000.0


def view_angles(views: int) -> np.ndarray:
    if views < 2:
        raise MeddxError(f"CT needs at least 2 views, got {views}")
    return np.linspace(0.0, 180.0, views, endpoint=False)


def _view_groups(views: int) -> list[np.ndarray]:
    """The view indices in ``VIEW_GROUPS`` contiguous groups, projected or back-projected in parallel threads
    (scikit-image's radon/iradon release the GIL: 2x faster on 2 cores). A fixed group count, not the machine's
    core count, so that every machine adds the same partial sums in the same order: bitwise equal outputs."""
    return [g for g in np.array_split(np.arange(views), VIEW_GROUPS) if len(g)]


def _in_threads(fn, groups: list[np.ndarray]) -> list[np.ndarray]:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(groups)) as pool:
        return list(pool.map(fn, groups))


def project(hu: np.ndarray, views: int = FULL_VIEWS, pixel_mm: float = 1.0) -> np.ndarray:
    """Parallel-beam line integrals of attenuation (dimensionless), (detectors, views)."""
    from skimage.transform import radon

    mu = hu_to_mu(ct_reference(hu))
    groups = _view_groups(views)
    angles = view_angles(views)
    return np.concatenate(_in_threads(lambda g: radon(mu, angles[g], circle=True), groups), 1) * pixel_mm


def poisson_line_integrals(sinogram: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    """Noisy line integrals ``-log(N / N0)`` with counts ``N ~ Poisson(N0 exp(-p))``; zero counts become 0.5
    (as a scanner's log step must do something with them)."""
    if not photons > 0:
        raise MeddxError(f"photons per pixel must be > 0, got {photons}")
    counts = rng.poisson(photons * np.exp(-sinogram)).astype(np.float64)
    return -np.log(np.maximum(counts, 0.5) / photons)


def fbp(sinogram: np.ndarray, views: int, pixel_mm: float = 1.0, filter_name: str = "ramp") -> np.ndarray:
    """Filtered back-projection of line integrals to HU (scikit-image ``iradon``; ramp or hann filter)."""
    from skimage.transform import iradon

    if filter_name not in ("ramp", "hann", "shepp-logan", "cosine", "hamming"):
        raise MeddxError(f"unknown FBP filter {filter_name!r}")
    angles, sino = view_angles(views), sinogram / pixel_mm
    parts = _in_threads(lambda g: iradon(sino[:, g], angles[g], circle=True, filter_name=filter_name) * len(g),
                        _view_groups(views))
    mu = sum(parts) / views  # iradon scales by pi / (2 * its views): reweight each group's share
    hu = mu_to_hu(mu)
    hu[~field_of_view(hu.shape[0])] = AIR_HU
    return hu.astype(np.float32)


def low_dose_ct(hu: np.ndarray, photons: float = REFERENCE_PHOTONS, seed: int | list[int] = 0, views: int = FULL_VIEWS,
                pixel_mm: float = 1.0, filter_name: str = "ramp") -> np.ndarray:
    """FBP (HU) of a Poisson-noisy scan of ``hu`` at ``photons`` per detector pixel; deterministic by ``seed``."""
    sino = project(hu, views, pixel_mm)
    noisy = poisson_line_integrals(sino, photons, np.random.default_rng(seed))
    return fbp(noisy, views, pixel_mm, filter_name)


def sparse_view_ct(hu: np.ndarray, views: int = 60, pixel_mm: float = 1.0, filter_name: str = "ramp") -> np.ndarray:
    """Noiseless FBP (HU) of ``hu`` from ``views`` equally spaced projections over 180 degrees."""
    return fbp(project(hu, views, pixel_mm), views, pixel_mm, filter_name)


# ---------------------------------------------------------------------------------------------- MRI


def kspace(image: np.ndarray) -> np.ndarray:
    """Single-coil k-space: centred, orthonormal 2D FFT (fastMRI's convention)."""
    return np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(image), norm="ortho"))


def image_from_kspace(k: np.ndarray) -> np.ndarray:
    """Complex image: centred, orthonormal inverse 2D FFT."""
    return np.fft.fftshift(np.fft.ifft2(np.fft.ifftshift(k), norm="ortho"))


def mri_mask(width: int, acceleration: int = 4, kind: str = "equispaced", seed: int = 0,
             center_fraction: float | None = None) -> np.ndarray:
    """Boolean column mask (width,) from MONAI's fastMRI-style mask functions, fully sampled centre."""
    import torch
    from monai.apps.reconstruction.transforms.array import EquispacedKspaceMask, RandomKspaceMask

    if acceleration < 1:
        raise MeddxError(f"MRI acceleration must be >= 1, got {acceleration}")
    if kind not in ("equispaced", "random"):
        raise MeddxError(f"MRI mask must be equispaced or random, got {kind!r}")
    frac = MRI_CENTER_FRACTION.get(acceleration, 0.32 / acceleration) if center_fraction is None else center_fraction
    cls = EquispacedKspaceMask if kind == "equispaced" else RandomKspaceMask
    masker = cls(center_fractions=[frac], accelerations=[acceleration], spatial_dims=2, is_complex=True)
    masker.set_random_state(seed=seed)
    masker(torch.zeros(1, 2, width, 2))  # (coils, H, W, real/imag): the mask is drawn along W
    return masker.mask.reshape(-1).numpy() > 0


def undersample_mri(image: np.ndarray, acceleration: int = 4, kind: str = "equispaced", seed: int = 0
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(zero-filled complex image, column mask) of a real magnitude image undersampled in k-space."""
    image = _check_real_2d(image, "MRI slice")
    mask = mri_mask(image.shape[1], acceleration, kind, seed)
    zero_filled = image_from_kspace(kspace(image) * mask[None, :])
    return zero_filled.astype(np.complex64), mask


# ------------------------------------------------------------------------------------------ batches


def image_seed(image_id: str, seed: int = 0) -> int:
    """A stable per-image seed from its id (crc32), so an image is degraded the same way in every run."""
    import zlib

    return (zlib.crc32(image_id.encode()) + 1_000_003 * seed) % (2 ** 32)


def degrade_ct_batch(hu: np.ndarray, degradation: Degradation, seeds: list[int], pixel_mm: np.ndarray,
                     photons: np.ndarray | None = None) -> np.ndarray:
    """(N, H, W) HU -> degraded FBP HU; image ``i`` uses ``seeds[i]``, its own pixel size and (low dose)
    ``photons[i]`` (default: the degradation's photon count)."""
    out = np.empty(hu.shape, np.float32)
    for i, img in enumerate(hu):
        if degradation.kind == "lowdose":
            dose = degradation.photons if photons is None else float(photons[i])
            out[i] = low_dose_ct(img, dose, seeds[i], degradation.views, float(pixel_mm[i]))
        else:
            out[i] = sparse_view_ct(img, degradation.views, float(pixel_mm[i]))
    return out


def degrade_mri_batch(images: np.ndarray, degradation: Degradation, seeds: list[int]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) magnitude -> ((N, H, W) complex zero-filled, (N, W) masks); random masks are drawn per image
    (``seeds[i]``), the equispaced mask (its offset drawn from seed 0) is the same for every image."""
    zf = np.empty(images.shape, np.complex64)
    masks = np.empty((images.shape[0], images.shape[2]), bool)
    for i, img in enumerate(images):
        s = seeds[i] if degradation.mask == "random" else 0
        zf[i], masks[i] = undersample_mri(img, degradation.acceleration, degradation.mask, s)
    return zf, masks
