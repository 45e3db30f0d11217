"""More training inputs for reconstruction: every training slice degraded several times, physically.

One stored degradation per slice lets a network learn that slice's noise (about 100 real CT slices here), and a
single dose teaches it a single noise level: trained on the head CT (1.9 mm pixels, noise SD ~75 HU at the
reference dose) it was worse than non-local means on abdominal slices, whose longer paths through the body give
noise SD ~125 HU at the same photon count. So the training split is degraded ``K`` times (``variant_count``):

* variant 0 is the stored pair (the nominal degradation, as validation and testing see it);
* variant ``k`` first turns the clean slice by the ``k``-th of the 8 flips/quarter turns (exact, no resampling:
  the noise is simulated afterwards, so its texture stays the scanner's), then degrades it with its own seed;
* low-dose CT also draws a patient size for ``k >= 1``: the slice's pixel size times a log-uniform factor in
  ``PIXEL_SCALE`` (a larger body: longer paths, fewer photons, stronger and more streaky noise, as a real
  scanner sees it), and a dose factor in ``PHOTON_SCALE`` around the degradation's photon count.

The network is then trained on a range of noise levels around its training scans' (with ``recon_unet_nl`` it
also measures each input's level: :mod:`meddx.models.recon_nets`). Only training inputs change; the clean
targets turn with them. Deterministic: seeds come from each slice's id and ``k``.

Ranges chosen on the validation splits (best validation PSNR, 3,000-steps runs, README "Reconstruction and
denoising"): real CT (abdominal validation slices) 30.5 dB without variants, 31.0 with turns only, 33.3 with
these ranges, 32.6 with wider ones (pixel x 0.8-2.5, dose x 0.5-2); the phantom (validation at the training
dose) 37.2 without, 37.0 turns only, 36.8 with these, 36.3 with the wider ones.
"""

from __future__ import annotations

import numpy as np

from meddx.data.degrade import image_seed

MAX_VARIANTS = 8
SLICE_VISITS = 1000  # K is chosen so that K x slices is about this (2-8): ~100-200 s of FBP on one core
PIXEL_SCALE = (0.8, 1.8)
PHOTON_SCALE = (0.7, 1.4)


def variant_count(n_slices: int) -> int:
    """Degradations per training slice: 8 for ~100 slices, fewer for larger sets (at least 2)."""
    return int(min(MAX_VARIANTS, max(2, SLICE_VISITS // max(n_slices, 1))))


def dihedral(images: np.ndarray, k: int) -> np.ndarray:
    """The ``k``-th (mod 8) of the flips and quarter turns of (N, S, S) square slices."""
    out = np.rot90(images, k % 4, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if (k % 8) >= 4 else out)


def log_uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(np.exp(rng.uniform(np.log(bounds[0]), np.log(bounds[1]))))


def degrade_variant(task, clean: np.ndarray, ids: list[str], pixel_mm: np.ndarray, k: int) -> np.ndarray:
    """Model inputs (N, C, S, S) of variant ``k >= 1`` of the already turned clean slices (display units)."""
    if task.degradation.kind != "lowdose":
        return task.degrade(clean, [f"{i}#variant{k}" for i in ids], pixel_mm)
    seeds = [image_seed(i, k) for i in ids]
    rngs = [np.random.default_rng(s) for s in seeds]
    pixel = np.array([float(px) * log_uniform(r, PIXEL_SCALE) for px, r in zip(pixel_mm, rngs)])
    photons = np.array([task.degradation.photons * log_uniform(r, PHOTON_SCALE) for r in rngs])
    return task.degrade(clean, ids, pixel, photons, seeds)


def training_variants(task, clean: np.ndarray, ids: list[str], pixel_mm: np.ndarray, nominal: np.ndarray,
                      count: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs (K, N, C, S, S), clean targets (K, N, S, S)) with variant 0 = ``nominal`` (the stored inputs)."""
    inputs, targets = [nominal], [clean]
    for k in range(1, count):
        turned = dihedral(clean, k)
        inputs.append(degrade_variant(task, turned, ids, pixel_mm, k))
        targets.append(turned)
    return np.stack(inputs), np.stack(targets)
