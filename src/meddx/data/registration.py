"""Registration data sets as :class:`DataBundle` (``task="registration"``).

A split's ``images`` are (N, 2, *S) float32 in [0, 1]: channel 0 the fixed image, channel 1 the moving image;
``labels`` are (N, 2, *S) uint8 structure maps of both. ``extra[split]["landmarks"]`` holds one
``(fixed_points, moving_points)`` pair of (K, D) voxel-coordinate arrays per pair.

Synthetic pairs (phantom, real brain slices/volumes): the moving image is the original and the fixed image is
the original resampled through a known smooth random field ``g`` (affine part + smooth random part + a
breathing-like term), ``fixed(x) = moving(x + g(x))``, so ``g`` is the exact answer (MONAI's ``Warp``
convention) and a fixed landmark ``p`` sits at ``p + g(p)`` in the moving image. The fixed image then gets
intensity changes (contrast, offset, noise). Specs: ``phantom`` (2D CT slices), ``phantom3d`` (CT volumes),
``brain2d`` (MNI152 axial slices; test slices held out), ``brain3d`` (MNI152 at 4 mm), ``itk2d`` (the ITK
proton-density slice; T1/PD multimodal pair for testing), or a folder of NIfTI pairs (:func:`load_pair_folder`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddx.data.dataset import DataBundle
from meddx.data.registration_pairs import PairSet, add_pair
from meddx.errors import MeddxError

PHANTOM_STRUCTURES = ["background", "body", "lungs", "vessels", "nodules"]
PHANTOM_SPLITS = {"train": 600, "val": 32, "test": 32}
PHANTOM3D_SPLITS = {"train": 96, "val": 8, "test": 12}
PHANTOM_SIDE, PHANTOM3D_SHAPE = 64, (32, 48, 48)
HU_WINDOW = (-1000.0, 400.0)  # CT values -> [0, 1]



# ----------------------------------------------------------------------------- the CT phantom


def window(hu: np.ndarray, lo: float = HU_WINDOW[0], hi: float = HU_WINDOW[1]) -> np.ndarray:
    return np.clip((hu - lo) / (hi - lo), 0, 1).astype(np.float32)


def phantom_structures(hu: np.ndarray, lungs: np.ndarray, nodules: np.ndarray) -> np.ndarray:
    """Label map: 1 body (outside the lungs), 2 lung parenchyma, 3 vessels (dense lung voxels), 4 nodules."""
    from scipy.ndimage import binary_fill_holes

    body = binary_fill_holes(hu > -500)
    out = np.zeros(hu.shape, np.uint8)
    out[body] = 1
    out[lungs > 0] = 2
    out[(lungs > 0) & (hu > -500)] = 3
    out[nodules > 0] = 4
    return out


def phantom_pairs(n: int, shape: tuple[int, ...], seed: int, prefix: str) -> tuple[PairSet, tuple[float, ...]]:
    from meddx.data.phantom import make_slices, make_volumes

    ph = make_slices(n, size=shape[0], seed=seed) if len(shape) == 2 else make_volumes(n, shape=shape, seed=seed)
    pairs = PairSet()
    amplitude = 0.06 * max(shape)
    for i in range(n):
        rng = np.random.default_rng([seed, 7, i])
        labels = phantom_structures(ph.images[i], ph.lung_masks[i], ph.masks[i])
        add_pair(pairs, rng, window(ph.images[i]), labels, amplitude, f"{prefix}-{i}", lungs=ph.lung_masks[i])
    return pairs, tuple(float(s) for s in ph.spacing)


def load_phantom_pairs(shape: tuple[int, ...], seed: int = 0, splits: dict[str, int] | None = None) -> DataBundle:
    """Phantom registration pairs in 2D (``shape`` (H, W)) or 3D ((D, H, W)); splits use disjoint seeds."""
    name = "phantom" if len(shape) == 2 else "phantom3d"
    splits = splits or (PHANTOM_SPLITS if len(shape) == 2 else PHANTOM3D_SPLITS)
    out, extra = {}, {}
    spacing: tuple[float, ...] = ()
    for i, (split, n) in enumerate(splits.items()):
        pairs, spacing = phantom_pairs(n, shape, seed * 10 + i + 1000, f"{name}-{split}")
        out[split], extra[split] = pairs.split()
    return DataBundle(name=name, task="registration", class_names=list(PHANTOM_STRUCTURES), modality="ct",
                      source=f"{name}(shape={shape}, seed={seed}, task=registration)",
                      extra=extra | {"spacing": list(spacing), "similarity": "lncc"}, **out)


# ----------------------------------------------------------------------------- entry point


def load_registration(spec: str, *, size: int | None = None, seed: int = 0) -> DataBundle:
    """Resolve a registration data spec (see the module docstring)."""
    side = size if size not in (None, 28) else None
    if spec == "phantom":
        return load_phantom_pairs((side or PHANTOM_SIDE,) * 2, seed)
    if spec == "phantom3d":
        shape = PHANTOM3D_SHAPE if side is None else (max(16, side * 2 // 3 // 8 * 8), side, side)
        return load_phantom_pairs(shape, seed)
    if spec in BRAIN_SPECS:
        from meddx.data import registration_brain

        return getattr(registration_brain, BRAIN_SPECS[spec])(seed=seed)
    path = Path(spec).expanduser()
    if path.is_dir():
        from meddx.data.registration_folder import load_pair_folder

        return load_pair_folder(path, seed=seed)
    raise MeddxError("registration data must be phantom, phantom3d, brain2d, brain3d, itk2d or a folder with "
                     "fixed/ and moving/ NIfTI files", spec)


BRAIN_SPECS = {"brain2d": "load_brain2d", "brain3d": "load_brain3d", "itk2d": "load_itk2d"}
