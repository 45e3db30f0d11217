"""MedMNIST ``.npz`` files (2D and 3D, every size) by path or by name, with checksum-verified download.

The table of data sets (task, labels, URLs, MD5s) is ``medmnist_info.json`` beside this file, taken
from the official ``medmnist`` package's ``info.py`` (v3.0.2), plus a modality per set that picks the
augmentation policy and, for binary sets, ``positive``: the label id of the finding named by the official
label names (BreastMNIST 0 "malignant", PneumoniaMNIST 1 "pneumonia", ...), kept as
``bundle.extra["positive_class"]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import urllib.request
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.dataset import DataBundle, Split, labels_from_array
from meddx.errors import MeddxError
from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL

SIZES = ("28", "64", "128", "224")


@cache
def medmnist_info() -> dict[str, dict[str, Any]]:
    """Name -> metadata of every MedMNIST data set."""
    return json.loads((Path(__file__).with_name("medmnist_info.json")).read_text())


def default_data_dir() -> Path:
    """``$MEDDX_DATA`` or ``~/.cache/meddx``."""
    env = os.environ.get("MEDDX_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "meddx"


def file_name(name: str, size: int | str = 28) -> str:
    """Official file name: ``breastmnist.npz`` for 28 px, ``breastmnist_64.npz`` otherwise."""
    return f"{name}.npz" if str(size) == "28" else f"{name}_{size}.npz"


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_medmnist(name: str, size: int | str = 28, data_dir: str | Path | None = None,
                  download: bool = True) -> Path:
    """Locate ``name`` at ``size`` under ``data_dir`` (also ``data_dir/name/``), downloading it if allowed."""
    name = name.lower()
    info = medmnist_info()
    if name not in info:
        raise MeddxError(f"unknown MedMNIST data set {name!r}; known: {', '.join(sorted(info))}")
    if str(size) not in info[name]["files"]:
        raise MeddxError(f"{name} has no size {size}; available: {', '.join(info[name]['files'])}")
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    fname = file_name(name, size)
    for cand in (root / fname, root / name / fname):
        if cand.is_file():
            return cand
    if not download:
        raise MeddxError(f"{fname} not found; put it in {root} (or set --data-dir / MEDDX_DATA)", root / fname)
    return download_medmnist(name, size, root)


def download_medmnist(name: str, size: int | str, root: Path) -> Path:
    """Fetch the official file into ``root`` and verify its MD5; a one-line error when offline."""
    entry = medmnist_info()[name]["files"][str(size)]
    target = root / file_name(name, size)
    root.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    try:
        with urllib.request.urlopen(entry["url"], timeout=30) as resp, open(tmp, "wb") as out:
            shutil.copyfileobj(resp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise MeddxError(f"could not download {target.name} ({exc.__class__.__name__}); offline? "
                         f"put the file at {target} (or set --data-dir / MEDDX_DATA)", target) from None
    verify_md5(tmp, entry["md5"], target)
    os.replace(tmp, target)
    return target


def verify_md5(path: Path, expected: str, shown_as: Path | None = None) -> None:
    got = md5sum(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise MeddxError(f"checksum mismatch: MD5 {got}, expected {expected}", shown_as or path)


def guess_name(path: Path) -> str | None:
    """``breastmnist_64.npz`` -> ``breastmnist`` if it is a known set."""
    stem = path.stem.split("_")[0].lower()
    return stem if stem in medmnist_info() else None


def load_medmnist(path: str | Path, name: str | None = None) -> DataBundle:
    """Load a MedMNIST-format ``.npz`` (keys ``{train,val,test}_{images,labels}``) into memory."""
    path = Path(path)
    if not path.is_file():
        raise MeddxError("file not found", path)
    name = name or guess_name(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise MeddxError(f"not a readable .npz file ({exc.__class__.__name__}: {exc})", path) from None
    needed = [f"{s}_{k}" for s in ("train", "val", "test") for k in ("images", "labels")]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise MeddxError(f"missing arrays {', '.join(missing)} (a MedMNIST file has {', '.join(needed)})", path)
    info = medmnist_info().get(name or "", None)
    extra: dict[str, Any] = {}
    if info is not None:
        task = info["task"]
        class_names = [info["labels"][str(i)] for i in range(len(info["labels"]))]
        spatial_dims, modality = info["spatial_dims"], info["modality"]
        if "positive" in info:
            extra["positive_class"] = int(info["positive"])
    else:  # an unknown set in MedMNIST layout: infer what we can
        y = arrays["train_labels"]
        multi = y.ndim == 2 and y.shape[1] > 1
        n = y.shape[1] if multi else int(max(arrays[f"{s}_labels"].max() for s in ("train", "val", "test"))) + 1
        task = MULTI_LABEL if multi else (BINARY if n == 2 else MULTI_CLASS)
        class_names = [str(i) for i in range(n)]
        x = arrays["train_images"]
        spatial_dims = 3 if x.ndim == 4 and x.shape[-1] not in (1, 3) else 2  # (N,H,W,3) is colour 2D
        modality = "generic"
    splits = {s: Split(_to_nchw(arrays[f"{s}_images"], spatial_dims, path),
                       labels_from_array(arrays[f"{s}_labels"], task)) for s in ("train", "val", "test")}
    return DataBundle(name=name or path.stem, task=task, class_names=class_names, modality=modality,
                      source=str(path), extra=extra, **splits)


def _to_nchw(images: np.ndarray, spatial_dims: int, path: Path) -> torch.Tensor:
    """MedMNIST stores (N, H, W), (N, H, W, 3) or (N, D, H, W); return channels-first."""
    if images.ndim == spatial_dims + 1:
        images = images[:, None]
    elif images.ndim == spatial_dims + 2 and spatial_dims == 2 and images.shape[-1] in (1, 3):
        images = np.moveaxis(images, -1, 1)
    else:
        raise MeddxError(f"images of shape {images.shape} do not look like {spatial_dims}D MedMNIST images", path)
    return torch.from_numpy(np.ascontiguousarray(images))
