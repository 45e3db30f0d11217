"""Reading single image files (PNG/JPEG/``.npy``) into uint8 channels-first tensors.

Shared by the folder/CSV loaders and by ``meddx predict``; every failure names the file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddx.errors import MeddxError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def read_image(path: str | Path, channels: int | None = None) -> torch.Tensor:
    """Read an image as a (C, H, W) tensor: uint8 for PNG/JPEG, the stored dtype for ``.npy``.

    ``channels`` converts greyscale/RGB (1 or 3); ``None`` keeps what the file has.
    """
    path = Path(path)
    if not path.is_file():
        raise MeddxError("file not found", path)
    if path.suffix.lower() == ".npy":
        return _read_npy(path, channels)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            mode = {1: "L", 3: "RGB"}.get(channels or 0) or ("L" if im.mode in ("L", "I", "I;16", "1", "F")
                                                              else "RGB")
            arr = np.array(im.convert(mode))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MeddxError(f"not a readable image ({exc.__class__.__name__})", path) from None
    if arr.ndim == 2:
        arr = arr[None]
    else:
        arr = np.moveaxis(arr, -1, 0)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _read_npy(path: Path, channels: int | None) -> torch.Tensor:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MeddxError(f"not a readable .npy array ({exc})", path) from None
    if arr.dtype.kind not in "uif" or arr.ndim not in (2, 3, 4):
        raise MeddxError(f"expected a 2D image, (C, H, W) or (H, W, C) or a volume, got {arr.dtype} {arr.shape}",
                         path)
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise MeddxError("array contains NaN or infinite values", path)
    if arr.ndim == 2:
        arr = arr[None]
    elif arr.ndim == 3 and arr.shape[-1] in (1, 3) and arr.shape[0] not in (1, 3):
        arr = np.moveaxis(arr, -1, 0)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    if channels is not None and t.shape[0] != channels:
        if t.shape[0] == 1 and channels == 3:
            t = t.expand(3, *t.shape[1:]).contiguous()
        else:
            raise MeddxError(f"has {t.shape[0]} channels, the model expects {channels}", path)
    return t


def resize_to(image: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resize a (C, H, W) image with torchvision.transforms.v2 (antialiased), keeping its dtype."""
    if tuple(image.shape[1:]) == tuple(size):
        return image
    from torchvision.transforms.v2 import functional as F

    if image.ndim != 3:
        raise MeddxError(f"cannot resize an array of shape {tuple(image.shape)} to {size}")
    if image.dtype == torch.uint8:
        return F.resize(image, list(size), antialias=True)
    return F.resize(image.float(), list(size), antialias=True).to(image.dtype)
