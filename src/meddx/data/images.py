"""The one reader of medical pixel data: PNG/JPEG/TIFF/BMP, DICOM, ``.npy``/``.npz`` and NIfTI files.

:func:`read_pixels` returns :class:`~meddx.data.pixels.Pixels`: channels-first values plus the intensity
mapping that produced them (see :mod:`meddx.data.intensity` for the design: 8/16-bit files scaled by their
stored bit depth, DICOM through its Modality/VOI LUT or window, arrays kept as stored). Training folders,
CSV manifests, ``meddx predict``/``explain``/``evaluate`` and the HTTP server all read through it; the
model's input contract (channels, size, value range) is :mod:`meddx.data.contract`.

The format is sniffed from the file's first bytes (then its suffix), sizes are checked from headers before
any pixels are decoded, and every failure is a one-line :class:`~meddx.errors.MeddxError` naming the file.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meddx.data import intensity
from meddx.data.pixels import Pixels, check_file, check_pixel_count, convert_channels, first_line, head
from meddx.errors import MeddxError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
DICOM_SUFFIXES = {".dcm", ".dicom"}
ARRAY_SUFFIXES = {".npy", ".npz"}
READABLE = "PNG/JPEG/TIFF/BMP, DICOM, .npy/.npz or NIfTI"
_COLOUR_MODES = {"RGB", "RGBA", "RGBX", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBa"}


def read_pixels(path: str | Path, mapping: dict | None = None) -> Pixels:
    """Read any supported image file; ``mapping``: a run's recorded intensity mapping, applied where it fits
    the file's kind (:func:`meddx.data.intensity.replayable`), else the file's own default is used."""
    p = check_file(path)
    start = head(p)
    name = p.name.lower()
    if start.startswith(b"\x93NUMPY") or name.endswith(".npy"):
        from meddx.data.arrays import read_npy

        return read_npy(p)
    if name.endswith(".npz"):
        from meddx.data.arrays import read_npz

        return read_npz(p)
    if name.endswith((".nii", ".nii.gz")):
        from meddx.data.arrays import read_nifti

        return read_nifti(p)
    from meddx.data.dicom import looks_like_dicom

    if looks_like_dicom(p, start) and not start.startswith((b"\x89PNG", b"\xff\xd8\xff")):
        from meddx.data.dicom import read_dicom

        return read_dicom(p, mapping)
    return read_bitmap(p, mapping)


def read_bitmap(path: Path, mapping: dict | None = None) -> Pixels:
    """PNG/JPEG/TIFF/BMP through Pillow with the true bit depth: 16-bit grey is scaled by 65535, not clipped."""
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning, corrupt EXIF, ...
            with Image.open(path) as im:
                w, h = im.size
                check_pixel_count((h, w, len(im.getbands())), path)
                im.load()
                arr, fmt, mode = _bitmap_array(im, path)
    except MeddxError:
        raise
    except Image.DecompressionBombError as exc:
        n = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(n.group(1)):,} pixels" if n else "too many pixels"
        raise MeddxError(f"image of {size} exceeds the pixel limit (refused before decoding)", path) from None
    except UnidentifiedImageError:
        raise MeddxError(f"not a readable image (unrecognised format; expected {READABLE})", path) from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... for corrupt files
        raise MeddxError(f"not a readable image ({exc.__class__.__name__}: {first_line(exc, 100)})", path) from None
    return _map_bitmap(arr, fmt, mode, path, mapping)


def _bitmap_array(im, path: Path) -> tuple[np.ndarray, str, str]:
    mode, fmt = im.mode, (im.format or "image").lower()
    if mode in ("1", "L", "LA", "La"):
        return np.asarray(im.convert("L")), fmt, "L"
    if mode in _COLOUR_MODES or mode.startswith("RGB"):
        return np.asarray(im.convert("RGB")), fmt, "RGB"
    if mode.startswith("I;16"):
        arr = np.asarray(im)
        return (arr.astype(np.int16) if mode.endswith("S") else arr.astype(np.uint16)), fmt, mode
    if mode == "I":  # 32-bit integer; older Pillow opens 16-bit PNGs this way
        arr = np.asarray(im, dtype=np.int32)
        bits = 16 if fmt == "png" or getattr(im, "tag_v2", {}).get(258) in (16, (16,)) else 32
        return (arr.astype(np.uint16) if bits == 16 and arr.min() >= 0 else arr), fmt, mode
    if mode == "F":
        return np.asarray(im, dtype=np.float32), fmt, mode
    raise MeddxError(f"unsupported {fmt.upper()} pixel mode {mode!r}", path)


def _map_bitmap(arr: np.ndarray, fmt: str, mode: str, path: Path, recorded: dict | None) -> Pixels:
    if arr.dtype == np.uint8:
        mapping = intensity.scale(0, 255, "8-bit")
        out = arr
    elif arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise MeddxError("image contains NaN or infinite values", path)
        mapping, out = {"kind": "none", "source": "float"}, arr
    else:
        mapping = intensity.bit_depth_scale(arr.dtype, "16-bit" if arr.dtype.itemsize == 2 else None)
        if intensity.replayable(recorded, mapping["source"]):
            mapping = dict(recorded)
        out = intensity.apply(arr, mapping)
    out = out[None] if out.ndim == 2 else np.moveaxis(out, -1, 0)
    return Pixels(np.ascontiguousarray(out), mapping, fmt, str(path))


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """A ``(C, H, W)`` tensor (uint8 for image files and DICOM, the stored dtype for arrays).

    ``channels`` converts greyscale/RGB (1 or 3); ``None`` keeps what the file has.
    """
    import torch

    px = read_pixels(path)
    arr = px.array
    if channels is not None and px.channels != channels:
        arr, _ = convert_channels(arr, channels, path)
    return torch.from_numpy(np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy(order="C"))


def resize_to(image: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize a (C, H, W) image with torchvision.transforms.v2 (antialiased), keeping its dtype."""
    import torch

    if tuple(image.shape[1:]) == tuple(size):
        return image
    from torchvision.transforms.v2 import functional as F

    if image.ndim != 3:
        raise MeddxError(f"cannot resize an array of shape {tuple(image.shape)} to {size}")
    if image.dtype == torch.uint8:
        return F.resize(image, list(size), antialias=True)
    return F.resize(image.float(), list(size), antialias=True).to(image.dtype)
