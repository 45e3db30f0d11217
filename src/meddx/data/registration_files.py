"""Files of one registration: read a (fixed, moving[, labels]) pair, read landmarks, write the results.

2D images: PNG/JPEG/TIFF/DICOM/.npy (grey, spacing 1 mm unless the reader knows better); 3D: NIfTI/NRRD/MHA or
a DICOM series folder (:func:`meddx.data.volumes.read_volume`). Outputs: the warped moving image (PNG in 2D,
NIfTI on the fixed grid in 3D), the displacement field as a NIfTI vector image (intent ``vector``, components
in mm along the fixed image's x, y(, z) voxel axes, the fixed image's affine), and warped labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from meddx.errors import MeddxError

TWO_D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".npy", ".dcm")


@dataclass
class Image:
    """An image array ((H, W) or (D, H, W)), its spacing in mm (array order) and affine (3D, else None)."""

    array: np.ndarray
    spacing: tuple[float, ...]
    affine: np.ndarray | None = None
    path: str = ""

    @property
    def ndim(self) -> int:
        return self.array.ndim


def read_any(path: str | Path) -> Image:
    """A 2D image (grey) or a 3D volume, by suffix; a one-line error for anything else."""
    from meddx.data.volumes import is_volume_path, read_volume

    p = Path(path)
    if not p.exists():
        raise MeddxError("no such file", p)
    if p.is_dir() or is_volume_path(p):
        vol = read_volume(p)
        return Image(vol.array.astype(np.float32), tuple(vol.spacing), vol.affine, str(p))
    if p.suffix.lower() in TWO_D_SUFFIXES:
        from meddx.data.images import read_pixels

        arr = np.asarray(read_pixels(p).array, dtype=np.float32)
        arr = arr.mean(0) if arr.ndim == 3 else arr
        if arr.ndim != 2:
            raise MeddxError(f"expected a 2D image, got shape {arr.shape}", p)
        return Image(arr, (1.0, 1.0), None, str(p))
    raise MeddxError("unsupported image file (2D: PNG/JPEG/TIFF/DICOM/.npy; 3D: NIfTI/NRRD/MHA/DICOM folder)", p)


def scale_unit(array: np.ndarray) -> np.ndarray:
    """Intensities to [0, 1] between the 1st and 99th percentiles (the registration models' input range)."""
    lo, hi = np.percentile(array, [1, 99])
    return np.clip((array - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def read_pair(fixed: str | Path, moving: str | Path, labels: str | Path | None = None
              ) -> tuple[Image, Image, np.ndarray | None]:
    """Fixed and moving images of one dimensionality and grid; ``labels`` on the moving grid (integers)."""
    f, m = read_any(fixed), read_any(moving)
    if f.ndim != m.ndim:
        raise MeddxError(f"fixed image is {f.ndim}D but moving image is {m.ndim}D; register images of one "
                         "dimensionality", moving)
    if f.array.shape != m.array.shape:
        raise MeddxError(f"moving grid {m.array.shape} differs from the fixed grid {f.array.shape}; resample "
                         "the moving image onto the fixed grid first", moving)
    lab = None
    if labels is not None:
        lab_img = read_any(labels)
        if lab_img.array.shape != m.array.shape:
            raise MeddxError(f"label grid {lab_img.array.shape} does not match the moving image grid "
                             f"{m.array.shape}", labels)
        lab = np.rint(lab_img.array).astype(np.int64)
        if lab.min() < 0:
            raise MeddxError("labels must be integers >= 0", labels)
    return f, m, lab


def read_landmarks(path: str | Path, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    """A CSV of corresponding points in voxel indices: per row the fixed point then the moving point
    (``z,y,x`` order, 2D: ``y,x``), e.g. header ``fy,fx,my,mx``; an empty file is an error."""
    p = Path(path)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "input contained no data": reported below as one line
            rows = np.loadtxt(p, delimiter=",", skiprows=1, ndmin=2)
    except (OSError, ValueError) as exc:
        raise MeddxError(f"cannot read landmarks ({str(exc).splitlines()[0]})", p) from None
    if rows.size == 0:
        raise MeddxError("landmark file holds no points", p)
    if rows.shape[1] != 2 * ndim:
        raise MeddxError(f"landmark rows need {2 * ndim} columns (fixed then moving point), got {rows.shape[1]}", p)
    return rows[:, :ndim], rows[:, ndim:]


def write_outputs(out_dir: str | Path, stem: str, fixed: Image, warped: np.ndarray, ddf: np.ndarray,
                  warped_labels: np.ndarray | None = None) -> dict[str, Any]:
    """Write the warped image, the displacement field (NIfTI vector) and warped labels; their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"displacement": str(write_field(out / f"{stem}_ddf.nii.gz", ddf, fixed))}
    if fixed.ndim == 2:
        files["warped"] = str(_write_png(out / f"{stem}_warped.png", scale_unit(warped) * 255))
        if warped_labels is not None:
            files["warped_labels"] = str(_write_png(out / f"{stem}_warped_labels.png", warped_labels))
    else:
        from meddx.data.volumes import write_nifti

        files["warped"] = str(write_nifti(out / f"{stem}_warped.nii.gz", warped.astype(np.float32),
                                          fixed.spacing, fixed.affine))
        if warped_labels is not None:
            files["warped_labels"] = str(write_nifti(out / f"{stem}_warped_labels.nii.gz",
                                                     warped_labels.astype(np.int16), fixed.spacing, fixed.affine))
    return files


def write_field(path: Path, ddf: np.ndarray, fixed: Image) -> Path:
    """The field (D, *S) in voxels -> NIfTI (X, Y[, Z], 1, D) in mm along the voxel axes x, y(, z)."""
    import nibabel as nib

    from meddx.utils.io import atomic_path

    nd = ddf.ndim - 1
    mm = ddf * np.asarray(fixed.spacing, dtype=np.float32).reshape((nd,) + (1,) * nd)
    data = np.transpose(mm[::-1], tuple(range(nd, 0, -1)) + (0,))  # (x, y[, z], component x, y[, z])
    data = np.ascontiguousarray(data[..., None, :]).astype(np.float32)
    if nd == 2:
        data = data[:, :, None]  # NIfTI vector images put the components in the 5th dimension
    affine = fixed.affine if fixed.affine is not None else np.diag(list(fixed.spacing[::-1]) + [1.0] * (4 - nd))
    img = nib.Nifti1Image(data, affine)
    img.header.set_intent("vector")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        target = Path(str(tmp) + ".nii.gz")
        nib.save(img, str(target))
        target.replace(tmp)
    return path


def _write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image as PILImage

    from meddx.utils.io import atomic_path

    with atomic_path(path) as tmp:
        PILImage.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8)).save(tmp, format="PNG")
    return path
