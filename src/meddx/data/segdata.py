"""Segmentation data sets as :class:`DataBundle` (``task="segmentation"``, ``labels`` = (N, 1, *S) uint8 masks).

``load_segmentation(spec)``: ``phantom`` (2D CT slices, nodule masks), ``phantom3d`` (CT volumes, nodule
masks), a folder of PNG image/mask pairs (:mod:`meddx.data.masks`) or a folder of NIfTI/NRRD image + label
volumes (:func:`load_volume_folder`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddx.data.dataset import DataBundle, Split
from meddx.errors import MeddxError

SEG_CLASSES = ["background", "nodule"]
PHANTOM_SEG_SPLITS = {"train": 1200, "val": 200, "test": 400}
PHANTOM3D_SPLITS = {"train": 96, "val": 16, "test": 32}
DEFAULT_SIDE = 64  # used when no size is given (or the engine's 28 px MedMNIST default): nodules need pixels


def _side(size: int | None) -> int:
    return DEFAULT_SIDE if size in (None, 28) else int(size)


def load_segmentation(spec: str, *, size: int | None = None, seed: int = 0) -> DataBundle:
    """Resolve a segmentation data spec (see the module docstring)."""
    from meddx.data.masks import load_mask_folder

    if spec == "phantom":
        return load_phantom_segmentation(_side(size), seed)
    if spec == "phantom3d":
        return load_phantom3d(_side(size), seed)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise MeddxError("segmentation data must be 'phantom', 'phantom3d' or a folder (images/ + masks/ PNG "
                         "pairs, or NIfTI/NRRD image + label volumes)", spec)
    if (path / "masks").is_dir():
        return load_mask_folder(path, size=_side(size), seed=seed)
    return load_volume_folder(path, seed=seed)


def load_phantom_segmentation(size: int = DEFAULT_SIDE, seed: int = 0,
                              splits: dict[str, int] | None = None) -> DataBundle:
    """2D phantom slices (lung window, 8-bit) with binary nodule masks (all instances = class 1)."""
    from meddx.data.phantom import make_slices, to_uint8

    out: dict[str, Split] = {}
    spacing = None
    for i, (name, n) in enumerate((splits or PHANTOM_SEG_SPLITS).items()):
        ph = make_slices(n, size=size, seed=seed * 10 + i)
        images = torch.from_numpy(np.ascontiguousarray(to_uint8(ph.images)[:, None]))
        masks = torch.from_numpy((ph.masks > 0).astype(np.uint8)[:, None])
        out[name] = Split(images, masks, [f"phantom-{name}-{k}" for k in range(n)])
        spacing = ph.spacing
    return DataBundle(name="phantom", task="segmentation", class_names=list(SEG_CLASSES), modality="ct",
                      source=f"phantom(size={size}, seed={seed}, task=segmentation)",
                      extra={"spacing": list(spacing or (1.0, 1.0))}, **out)


def phantom3d_shape(side: int) -> tuple[int, int, int]:
    return (max(8, (3 * side) // 4), side, side)


def load_phantom3d(side: int = DEFAULT_SIDE, seed: int = 0, splits: dict[str, int] | None = None) -> DataBundle:
    """3D phantom chest volumes (HU, float32, see :func:`meddx.data.volumes.prepare_intensities`), nodule masks."""
    from meddx.data.phantom import make_volumes
    from meddx.data.volumes import prepare_intensities

    out: dict[str, Split] = {}
    spacing = None
    for i, (name, n) in enumerate((splits or PHANTOM3D_SPLITS).items()):
        ph = make_volumes(n, shape=phantom3d_shape(side), seed=seed * 10 + i)
        images = torch.from_numpy(prepare_intensities(ph.images)[:, None])
        masks = torch.from_numpy((ph.masks > 0).astype(np.uint8)[:, None])
        out[name] = Split(images, masks, [f"phantom3d-{name}-{k}" for k in range(n)])
        spacing = ph.spacing
    return DataBundle(name="phantom3d", task="segmentation", class_names=list(SEG_CLASSES), modality="ct",
                      source=f"phantom3d(shape={phantom3d_shape(side)}, seed={seed})",
                      extra={"spacing": list(spacing or (1.0, 1.0, 1.0))}, **out)


def find_volume_pairs(folder: str | Path) -> list[tuple[Path, Path]]:
    """Image/label volume pairs in ``folder``: ``imagesTr/`` + ``labelsTr/`` (Decathlon), ``images/`` +
    ``labels/``, or files named ``<case>_image.<ext>`` + ``<case>_label.<ext>`` (or ``-label``)."""
    from meddx.data.volumes import VOLUME_SUFFIXES

    root = Path(folder)

    def vols(d: Path) -> dict[str, Path]:
        return {_stem(p): p for p in sorted(d.iterdir()) if p.name.lower().endswith(VOLUME_SUFFIXES)}

    for img_dir, lab_dir in (("imagesTr", "labelsTr"), ("images", "labels")):
        if (root / img_dir).is_dir() and (root / lab_dir).is_dir():
            images, labels = vols(root / img_dir), vols(root / lab_dir)
            missing = sorted(set(images) - set(labels))
            if missing:
                raise MeddxError(f"image {missing[0]} has no label volume in {lab_dir}/", root / img_dir)
            return [(images[k], labels[k]) for k in images]
    files = vols(root)
    pairs = []
    for stem, path in files.items():
        for tag in ("_label", "-label", "_seg", "-seg"):
            if stem.endswith(tag):
                case = stem[: -len(tag)]
                image = files.get(case + "_image") or files.get(case)
                if image is not None:
                    pairs.append((image, path))
                break
    if not pairs:
        raise MeddxError("no image/label volume pairs found (imagesTr/ + labelsTr/, images/ + labels/, or "
                         "<case>_image + <case>_label files)", root)
    return pairs


def _stem(p: Path) -> str:
    name = p.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return p.stem


def volumes_to_bundle(pairs: list[tuple[object, object]], name: str, source: str,
                      split_index: tuple[list[int], list[int], list[int]], class_names: list[str] | None = None,
                      modality: str = "ct") -> DataBundle:
    """Stack (image, label) :class:`~meddx.data.volumes.Volume` pairs (same spacing) into a bundle.

    Volumes are centre-padded (image with its minimum, label with 0) or cropped to the largest shape.
    """
    from meddx.data.volumes import pad_or_crop, prepare_intensities

    shape = tuple(int(max(img.shape[a] for img, _ in pairs)) for a in range(3))  # type: ignore[attr-defined]
    xs, ys = [], []
    for img, lab in pairs:
        arr = prepare_intensities(img.array)  # type: ignore[attr-defined]
        xs.append(pad_or_crop(arr, shape, fill=float(arr.min())))
        ys.append(pad_or_crop(lab.array.astype(np.uint8), shape, fill=0))  # type: ignore[attr-defined]
    x = torch.from_numpy(np.stack(xs)[:, None])
    y = torch.from_numpy(np.stack(ys)[:, None])
    n_classes = int(y.max()) + 1
    names = class_names or (["background"] + [f"label {k}" for k in range(1, n_classes)])
    spacing = list(pairs[0][0].spacing)  # type: ignore[attr-defined]
    ids = [Path(img.path).name for img, _ in pairs]  # type: ignore[attr-defined]
    whole = Split(x, y, ids)
    tr, va, te = (whole.subset(np.asarray(i, dtype=np.int64)) for i in split_index)
    return DataBundle(name=name, task="segmentation", class_names=names, train=tr, val=va, test=te,
                      modality=modality, source=source, extra={"spacing": spacing})


def load_volume_folder(folder: str | Path, seed: int = 0,
                       spacing: tuple[float, float, float] | None = None) -> DataBundle:
    """NIfTI/NRRD image + label volumes resampled to ``spacing`` (default: the median spacing of the cases)."""
    from meddx.data.dataset import stratified_split
    from meddx.data.volumes import read_pair, read_volume, resample

    pairs_paths = find_volume_pairs(folder)
    if spacing is None:
        spacings = np.array([read_volume(p).spacing for p, _ in pairs_paths])
        spacing = tuple(float(s) for s in np.median(spacings, axis=0))  # type: ignore[assignment]
    pairs = []
    for img_path, lab_path in pairs_paths:
        img, lab = read_pair(img_path, lab_path)
        pairs.append((resample(img, spacing), resample(lab, spacing, label=True)))  # type: ignore[arg-type]
    idx = stratified_split(np.zeros(len(pairs), dtype=np.int64), seed=seed)
    return volumes_to_bundle(pairs, Path(folder).name, str(folder), tuple(list(i) for i in idx))  # type: ignore
