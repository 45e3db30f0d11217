"""One entry point for every classification data source: ``load_data(spec)``.

``spec`` is ``phantom`` (the embedded synthetic CT default), a MedMNIST name (``breastmnist``), a
``.npz`` path, an image folder, or a CSV manifest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddx.data.dataset import DataBundle, Split
from meddx.errors import MeddxError
from meddx.kinds import BINARY

PHANTOM_SPLITS = {"train": 2000, "val": 400, "test": 800}
PHANTOM_SIZE = 28  # MNIST-like, like MedMNIST; `--size 48/64` gives larger slices (and slower training)


def load_data(spec: str, *, data_dir: str | None = None, size: int | None = None, seed: int = 0,
              download: bool = True, task: str = "classification") -> DataBundle:
    """Resolve ``spec`` to an in-memory :class:`DataBundle` for ``task`` (classification, segmentation, ...)."""
    from meddx.data.folder import load_csv_manifest, load_image_folder
    from meddx.data.medmnist import find_medmnist, load_medmnist, medmnist_info

    if task == "segmentation":
        from meddx.data.segdata import load_segmentation

        return load_segmentation(spec, size=size, seed=seed)
    if task == "detection":
        from meddx.data.detection import load_detection_data

        return load_detection_data(spec, size=size, seed=seed)
    if task == "reconstruction":
        from meddx.data.recon_data import load_reconstruction

        return load_reconstruction(spec, size=size, seed=seed)
    if task == "registration":
        from meddx.data.registration import load_registration

        return load_registration(spec, size=size, seed=seed)
    path = Path(spec).expanduser()
    if spec == "phantom":
        return load_phantom(size=size or PHANTOM_SIZE, seed=seed)
    if spec.lower() in medmnist_info() and not path.exists():
        return load_medmnist(find_medmnist(spec.lower(), size or 28, data_dir, download), spec.lower())
    if path.suffix == ".npz":
        return load_medmnist(path)
    if path.suffix.lower() == ".csv":
        return load_csv_manifest(path, image_size=size or 28, seed=seed)
    if path.is_dir():
        return load_image_folder(path, image_size=size or 28, seed=seed)
    if not path.exists():
        raise MeddxError("no such data: not 'phantom', a MedMNIST name, or an existing .npz/CSV/folder", spec)
    raise MeddxError("unsupported data file (expected .npz, .csv or a folder)", spec)


def load_phantom(size: int = PHANTOM_SIZE, seed: int = 0, splits: dict[str, int] | None = None) -> DataBundle:
    """Synthetic CT slices (lung window, 8-bit) labelled nodule present / absent; masks and boxes kept."""
    from meddx.data.phantom import make_slices, to_uint8

    splits = splits or PHANTOM_SPLITS
    out: dict[str, Split] = {}
    extra: dict[str, dict] = {}
    for i, (name, n) in enumerate(splits.items()):
        ph = make_slices(n, size=size, seed=seed * 10 + i)
        images = torch.from_numpy(np.ascontiguousarray(to_uint8(ph.images)[:, None]))
        out[name] = Split(images, torch.from_numpy(ph.labels.astype(np.int64)),
                          [f"phantom-{name}-{k}" for k in range(n)])
        extra[name] = {"masks": ph.masks, "boxes": ph.boxes}
    return DataBundle(name="phantom", task=BINARY, class_names=["no nodule", "nodule"], modality="ct",
                      source=f"phantom(size={size}, seed={seed})", extra=extra, **out)
