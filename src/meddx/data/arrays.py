"""Array files as images: ``.npy`` / ``.npz`` (never unpickled) and NIfTI, sizes checked from their headers.

Values are kept as stored (mapping ``{"kind": "none"}``, see :mod:`meddx.data.intensity`); layouts
``(H, W)``, ``(C, H, W)``, ``(H, W, C)`` (C = 1/3/4) and ``(C, D, H, W)`` / ``(D, H, W)`` volumes.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from meddx.data.pixels import Pixels, check_pixel_count, first_line
from meddx.errors import MeddxError

NONE = {"kind": "none", "source": "array"}
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _npy_header(f: IO[bytes], path: Path) -> tuple[tuple[int, ...], np.dtype]:
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(f)
        else:
            shape, _, dtype = fmt._read_array_header(f, version)  # 3.0: no public reader
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise MeddxError(f"not a .npy array (no valid NumPy header: {first_line(exc, 80)})", path) from None
    if dtype.hasobject:
        raise MeddxError("array holds Python objects; meddx reads only numeric arrays and never unpickles files",
                         path)
    if dtype.kind not in "uif":
        raise MeddxError(f"array dtype {dtype} is not numeric (expected integer or float values)", path)
    check_pixel_count(shape or (1,), path, "array")
    return tuple(shape), dtype


def load_npy(path: Path) -> np.ndarray:
    """A numeric ``.npy`` array, its header checked (dtype, size) before the data is read; never unpickled."""
    try:
        with open(path, "rb") as f:
            _npy_header(f, path)
        arr = np.load(path, allow_pickle=False)
    except MeddxError:
        raise
    except (ValueError, OSError, EOFError) as exc:
        raise MeddxError(f"not a readable .npy array (truncated or corrupt: {first_line(exc, 100)})", path) from None
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MeddxError("array contains NaN or infinite values", path)
    return arr


def read_npy(path: Path) -> Pixels:
    return _as_pixels(load_npy(path), path, "npy")


def read_npz(path: Path) -> Pixels:
    """The one array of an ``.npz`` (or the one named ``image``)."""
    try:
        with zipfile.ZipFile(path) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            key = names[0] if len(names) == 1 else ("image" if "image" in names else None)
            if key is None:
                shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
                raise MeddxError(f".npz holds {len(names)} arrays ({shown}); give one array or one named 'image'",
                                 path)
            with z.open(key + ".npy") as f:
                _npy_header(f, path)
            with z.open(key + ".npy") as f:
                arr = np.lib.format.read_array(f, allow_pickle=False)
    except MeddxError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError) as exc:
        raise MeddxError(f"not a readable .npz archive ({first_line(exc, 100)})", path) from None
    return _as_pixels(arr, path, "npz")


def read_nifti(path: Path) -> Pixels:
    """A 2D NIfTI (or one with a single slice) as ``(1, H, W)``, a 3D one as ``(1, D, H, W)``, (z, y, x) order."""
    import logging

    import nibabel as nib

    log = logging.getLogger("nibabel.global")  # logs header repairs ("sizeof_hdr should be 348") to stderr
    was_disabled, log.disabled = log.disabled, True
    try:
        img = nib.load(str(path))
        check_pixel_count(img.shape or (0,), path, "NIfTI image")
        data = np.asanyarray(nib.as_closest_canonical(img).dataobj)
    except MeddxError:
        raise
    except Exception as exc:  # nibabel raises many types for corrupt / truncated files
        raise MeddxError(f"not a readable NIfTI file ({first_line(exc, 100)})", path) from None
    finally:
        log.disabled = was_disabled
    while data.ndim > 2 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise MeddxError(f"expected a 2D image or 3D volume, got NIfTI shape {data.shape}", path)
    arr = np.ascontiguousarray(data.T)  # (x, y[, z]) -> ([z,] y, x)
    return _as_pixels(arr if arr.ndim == 2 else arr[None], path, "nifti")


def _as_pixels(arr: np.ndarray, path: Path, fmt: str) -> Pixels:
    if arr.dtype.kind not in "uif" or arr.ndim not in (2, 3, 4):
        raise MeddxError(f"expected a 2D image, (C, H, W) or (H, W, C) or a volume, got {arr.dtype} {arr.shape}",
                         path)
    check_pixel_count(arr.shape, path, "array")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MeddxError("array contains NaN or infinite values", path)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        arr = np.moveaxis(arr, -1, 0)
    return Pixels(np.ascontiguousarray(arr), dict(NONE), fmt, str(path))
