"""Image folders (one subfolder per class) and CSV manifests (``path,label[,split]``).

Class folders may hold PNG/JPEG/TIFF/BMP and DICOM files (``.dcm`` or any name with the ``DICM`` marker, e.g.
``CT.1.2.840...``); every file goes through :func:`meddx.data.images.read_pixels` and the input contract, so
16-bit and DICOM images are mapped to 0..255 as prediction maps them. The intensity mapping used is kept in
``bundle.extra["intensity_mapping"]`` (one mapping if all files share it, else ``{"kind": "per-file"}``).
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from meddx.data.arrays import NIFTI_SUFFIXES
from meddx.data.dataset import DataBundle, Split, stratified_split
from meddx.data.images import ARRAY_SUFFIXES, DICOM_SUFFIXES, IMAGE_SUFFIXES, read_pixels
from meddx.errors import MeddxError
from meddx.kinds import BINARY, MULTI_CLASS

# every file kind the one reader reads (as `meddx predict` does): an array or NIfTI file in a class folder is
# trained on, or refused if broken, never silently skipped
FOLDER_SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES | ARRAY_SUFFIXES | set(NIFTI_SUFFIXES)


def load_image_folder(root: str | Path, image_size: int = 28, channels: int | None = None,
                      seed: int = 0) -> DataBundle:
    """``root/<class>/*.png`` -> a bundle with a deterministic stratified 70/10/20 split."""
    root = Path(root)
    if not root.is_dir():
        raise MeddxError("folder not found", root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise MeddxError(f"an image folder needs one subfolder per class (at least 2), found {len(classes)}", root)
    items = [(p, i) for i, c in enumerate(classes) for p in sorted((root / c).rglob("*")) if _is_image_file(p)]
    if not items:
        raise MeddxError(f"no images ({', '.join(sorted(FOLDER_SUFFIXES))} or DICOM) under the class folders",
                         root)
    empty = sorted(set(classes) - {classes[i] for _, i in items})
    if empty:  # a class without images would still be a model output
        raise MeddxError(f"class folder(s) {', '.join(empty)} hold no images; remove them or add images", root)
    return _bundle(root.name, str(root), Listing(items, classes), image_size, channels, seed)


def load_csv_manifest(path: str | Path, image_size: int = 28, channels: int | None = None,
                      seed: int = 0) -> DataBundle:
    """A CSV with columns ``path,label`` and optionally ``split`` (train/val/test); paths relative to the CSV."""
    path = Path(path)
    if not path.is_file():
        raise MeddxError("file not found", path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise MeddxError(f"not a readable CSV ({exc})", path) from None
    if not rows or not {"path", "label"} <= set(rows[0]):
        raise MeddxError("manifest needs a header with at least the columns path,label", path)
    raw_labels = [r["label"].strip() for r in rows]
    classes, ids, source = _manifest_classes(path, raw_labels)
    items = [((path.parent / r["path"]).resolve() if not Path(r["path"]).is_absolute() else Path(r["path"]), y)
             for r, y in zip(rows, ids)]
    splits = None
    if "split" in rows[0] and all(r.get("split") for r in rows):
        splits = [r["split"].strip().lower() for r in rows]
        bad = sorted(set(splits) - {"train", "val", "test"})
        if bad:
            raise MeddxError(f"unknown split value {bad[0]!r} (use train/val/test)", path)
    return _bundle(path.stem, str(path), Listing(items, classes, splits, source), image_size, channels, seed)


def _manifest_classes(path: Path, raw_labels: list[str]) -> tuple[list[str], list[int], str]:
    """Class names, per-row class ids and where the names came from. Integer labels are class ids (0..K-1, no
    gaps; names from ``<file>.classes.json`` if present, else the numbers); other labels are class names."""
    from meddx.data.medmnist import declared_classes
    from meddx.data.validate import infer_class_count

    if raw_labels and all(re.fullmatch(r"-?\d+", lbl) for lbl in raw_labels):
        ids = [int(lbl) for lbl in raw_labels]
        k = infer_class_count({"all": np.array(ids)}, False, str(path))
        declared, source = declared_classes(path)
        if declared is not None and len(declared) != k:
            raise MeddxError(f"{path.name}.classes.json names {len(declared)} classes but the labels are "
                             f"0..{k - 1}", path)
        return declared or [str(i) for i in range(k)], ids, source or "csv"
    classes = sorted(set(raw_labels))
    if len(classes) < 2:
        raise MeddxError(f"manifest has {len(classes)} distinct label(s); need at least 2", path)
    lookup = {c: i for i, c in enumerate(classes)}
    return classes, [lookup[lbl] for lbl in raw_labels], "csv"


class Listing(NamedTuple):
    """What a folder or manifest lists: (file, class id) pairs, class names, optional split per file."""

    items: list[tuple[Path, int]]
    classes: list[str]
    splits: list[str] | None = None
    class_source: str = "folder"


def _bundle(name: str, source: str, listing: Listing, image_size: int, channels: int | None,
            seed: int) -> DataBundle:
    items, classes, splits, class_source = listing
    images, mapping = _read_all([p for p, _ in items], image_size, channels)
    labels = torch.tensor([y for _, y in items], dtype=torch.long)
    ids = [str(p) for p, _ in items]
    full = Split(images, labels, ids)
    if splits is None:
        tr, va, te = stratified_split(labels.numpy(), seed=seed)
    else:
        arr = np.array(splits)
        tr, va, te = (np.flatnonzero(arr == s) for s in ("train", "val", "test"))
        if len(tr) == 0 or len(va) == 0 or len(te) == 0:
            raise MeddxError("the split column must give train, val and test at least one image each", source)
    return DataBundle(name=name, task=BINARY if len(classes) == 2 else MULTI_CLASS,
                      class_names=classes, train=full.subset(tr), val=full.subset(va), test=full.subset(te),
                      source=source, extra={"intensity_mapping": mapping}, class_source=class_source)


def _is_image_file(p: Path) -> bool:
    if p.name.startswith(".") or not p.is_file():
        return False
    if p.suffix.lower() in FOLDER_SUFFIXES or p.name.lower().endswith(NIFTI_SUFFIXES):
        return True
    try:  # extension-less DICOM (series files named by their UID)
        with open(p, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _read_all(paths: list[Path], image_size: int, channels: int | None) -> tuple[torch.Tensor, dict]:
    """uint8 (N, C, size, size) images through the input contract, and the intensity mapping they used."""
    from meddx.data.contract import Expected, conform

    first = [read_pixels(p) for p in paths[:64]]
    if channels is None:  # greyscale unless any image is colour
        channels = 3 if max(px.channels for px in first) >= 3 else 1
    expected = Expected(channels, (image_size, image_size))
    images, mappings = [], {}
    for px in itertools.chain(first, (read_pixels(p) for p in paths[64:])):  # decode one file at a time
        images.append(conform(px, expected)[0])
        mappings.setdefault(json.dumps(px.mapping, sort_keys=True), px.mapping)
    if len(mappings) == 1:
        return torch.stack(images), next(iter(mappings.values()))
    sources = sorted({str(m.get("source")) for m in mappings.values()})
    return torch.stack(images), {"kind": "per-file", "source": ",".join(sources)}
