"""What every image reader returns (:class:`Pixels`), the pixel-count cap and the file checks they share."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from meddx.errors import MeddxError

# Decoding stops before pixels are read past this many values (frames x rows x columns); ~100 megapixels
# is a 10000 x 10000 image (0.1 GB as uint8, 0.2 GB at 16 bits). MEDDX_MAX_PIXELS overrides it.
MAX_PIXELS = 100_000_000


@dataclass
class Pixels:
    """Decoded pixels, channels first: ``(C, H, W)`` for one image, ``(C, F, H, W)`` for frames/volumes."""

    array: np.ndarray
    mapping: dict[str, Any]  # see meddx.data.intensity
    format: str  # "png", "jpeg", "tiff", "dicom", "npy", "npz", "nifti", ...
    path: str = ""
    notes: list[str] = field(default_factory=list)  # facts worth a notice (e.g. "MONOCHROME1 inverted")

    @property
    def channels(self) -> int:
        return int(self.array.shape[0])

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[1:])


def max_pixels() -> int:
    try:
        return int(os.environ.get("MEDDX_MAX_PIXELS", MAX_PIXELS))
    except ValueError:
        return MAX_PIXELS


def check_pixel_count(shape: tuple[int, ...], path: str | Path, what: str = "image") -> None:
    """Refuse (before decoding) an image whose header announces more than :func:`max_pixels` values."""
    dims = [int(s) for s in shape]
    if any(d < 0 for d in dims):
        raise MeddxError(f"header gives a negative size {tuple(dims)}", path)
    if any(d == 0 for d in dims):
        raise MeddxError(f"{what} is empty (size {'x'.join(map(str, dims))})", path)
    n = int(np.prod(np.array(dims, dtype=object)))
    if n > max_pixels():
        raise MeddxError(f"{what} of {'x'.join(map(str, dims))} = {n:,} pixels exceeds the {max_pixels():,}-pixel "
                         "limit (refused before decoding; set MEDDX_MAX_PIXELS to raise it)", path)


def check_file(path: str | Path) -> Path:
    """The path of a readable regular file, or a one-line error saying precisely what it is instead."""
    p = Path(path)
    if p.is_symlink() and not p.exists():
        raise MeddxError("broken or looping symbolic link", p)
    if not p.exists():
        raise MeddxError("file not found", p)
    if p.is_dir():
        raise MeddxError("is a directory, expected an image file (a DICOM series folder is read as a volume "
                         "by 3D models only)", p)
    if not p.is_file():
        raise MeddxError("is not a regular file", p)
    if not os.access(p, os.R_OK):
        raise MeddxError("cannot be read (permission denied)", p)
    if p.stat().st_size == 0:
        raise MeddxError("file is empty (0 bytes)", p)
    return p


def check_inputs(run: str | Path, paths: list[str | Path]) -> None:
    """Before any model or heavy library loads: ``run`` exists and every input is a readable non-empty file (or
    a readable folder: a DICOM series, for 3D models), else the one-line error of :func:`check_file`."""
    if not Path(run).exists():
        raise MeddxError("run folder or checkpoint not found", run)
    for p in paths:
        if Path(p).is_dir():
            if not os.access(p, os.R_OK | os.X_OK):
                raise MeddxError("cannot be read (permission denied)", p)
            continue
        check_file(p)


def head(path: Path, n: int = 132) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except PermissionError:
        raise MeddxError("cannot be read (permission denied)", path) from None
    except OSError as exc:
        raise MeddxError(f"cannot be read ({exc.strerror or exc.__class__.__name__})", path) from None


def first_line(exc: BaseException, limit: int = 160) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:limit] if text else "") or exc.__class__.__name__


class Notice(NamedTuple):
    kind: str  # "resize", "channels", "mapping": printed once per kind
    text: str  # one line, naming the file


def convert_channels(arr: np.ndarray, channels: int, path: str | Path) -> tuple[np.ndarray, Notice | None]:
    """Grey -> RGB (repeat) and RGB -> grey (ITU-R 601 luma, as Pillow's ``convert("L")``); else an error."""
    have = int(arr.shape[0])
    if have == channels:
        return arr, None
    if have == 1 and channels == 3:
        return np.repeat(arr, 3, axis=0), Notice("channels", f"{path}: grey image repeated to the model's 3 "
                                                             "channels")
    if have == 3 and channels == 1:
        luma = arr[0] * 0.299 + arr[1] * 0.587 + arr[2] * 0.114
        grey = np.rint(luma).astype(arr.dtype) if arr.dtype.kind in "ui" else luma.astype(arr.dtype)
        return grey[None], Notice("channels", f"{path}: RGB image converted to greyscale for the model's "
                                              "1 channel")
    raise MeddxError(f"has {have} channels, the model expects {channels}", path)
