"""2D images with segmentation masks stored as PNG pairs: ``<folder>/images/x.png`` + ``<folder>/masks/x.png``.

Mask pixels are class ids (0 = background, 1..K-1); a binary mask saved as 0/255 is read as 0/1. Images
are resized bilinearly and masks with nearest neighbour to ``size`` x ``size``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddx.errors import MeddxError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def find_mask_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """(image, mask) paths matched by file stem; a clear error for a missing mask or an empty folder."""
    root = Path(folder)
    img_dir, mask_dir = root / "images", root / "masks"
    if not img_dir.is_dir() or not mask_dir.is_dir():
        raise MeddxError("a 2D segmentation folder needs images/ and masks/ subfolders", root)
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    pairs = []
    for img in sorted(p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if img.stem not in masks:
            raise MeddxError(f"image {img.name} has no mask in masks/", img)
        pairs.append((img, masks[img.stem]))
    if not pairs:
        raise MeddxError("no images found in images/", img_dir)
    return pairs


def read_mask(path: str | Path) -> np.ndarray:
    """A (H, W) int64 class-id mask; 0/255 binary masks become 0/1."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            arr = np.array(im)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise MeddxError(f"not a readable mask image ({exc.__class__.__name__})", path) from None
    if arr.ndim == 3:
        if not (arr == arr[..., :1]).all():
            raise MeddxError("colour mask: store class ids as a single-channel PNG", path)
        arr = arr[..., 0]
    arr = arr.astype(np.int64)
    if set(np.unique(arr).tolist()) <= {0, 255}:
        arr = (arr > 0).astype(np.int64)
    return arr


def read_image_mask_pair(image_path: Path, mask_path: Path, channels: int | None = None) -> tuple[torch.Tensor,
                                                                                                 np.ndarray]:
    """Read one pair and check that image and mask have the same height and width."""
    from meddx.data.images import read_image

    img = read_image(image_path, channels=channels)
    mask = read_mask(mask_path)
    if tuple(img.shape[1:]) != mask.shape:
        raise MeddxError(f"mask of shape {mask.shape} does not match image shape {tuple(img.shape[1:])}", mask_path)
    return img, mask


def resize_mask(mask: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour resize of a (N, 1, *S) integer mask."""
    import torch.nn.functional as F

    if tuple(mask.shape[2:]) == tuple(size):
        return mask
    return F.interpolate(mask.float(), size=size, mode="nearest-exact").to(mask.dtype)


def load_mask_folder(folder: str | Path, size: int = 128, seed: int = 0):
    """A segmentation :class:`DataBundle` from PNG image/mask pairs (70/10/20 split by has-foreground)."""
    from meddx.data.dataset import DataBundle, Split, stratified_split
    from meddx.data.images import resize_to

    pairs = find_mask_pairs(folder)
    first = None
    images, masks = [], []
    for img_path, mask_path in pairs:
        img, mask = read_image_mask_pair(img_path, mask_path, channels=first)
        first = first or int(img.shape[0])
        images.append(resize_to(img, (size, size)))
        masks.append(resize_mask(torch.from_numpy(mask)[None, None], (size, size))[0])
    x = torch.stack(images)
    y = torch.stack(masks)
    n_classes = int(y.max()) + 1
    if n_classes > 255:
        raise MeddxError(f"masks hold class ids up to {n_classes - 1}; at most 255 classes", folder)
    y = y.to(torch.uint8)
    has_fg = (y.flatten(1) > 0).any(1).long().numpy()
    tr, va, te = stratified_split(has_fg, seed=seed)
    ids = [p[0].name for p in pairs]
    split = Split(x, y, ids)
    names = ["background"] + ([f"class {k}" for k in range(1, n_classes)] if n_classes > 2 else ["foreground"])
    return DataBundle(name=Path(folder).name, task="segmentation", class_names=names, train=split.subset(tr),
                      val=split.subset(va), test=split.subset(te), modality="generic", source=str(folder),
                      extra={"spacing": [1.0, 1.0]})
