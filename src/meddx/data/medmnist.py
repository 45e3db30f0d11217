"""MedMNIST ``.npz`` files (2D and 3D, every size) by path or by name, with checksum-verified download.

The table of data sets (task, labels, URLs, MD5s) is ``medmnist_info.json`` beside this file, taken
from the official ``medmnist`` package's ``info.py`` (v3.0.2), plus a modality per set that picks the
augmentation policy and, for binary sets, ``positive``: the label id of the finding named by the official
label names (BreastMNIST 0 "malignant", PneumoniaMNIST 1 "pneumonia", ...), kept as
``bundle.extra["positive_class"]``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import urllib.request
import zipfile
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.dataset import DataBundle, Split, labels_from_array
from meddx.data.validate import DECLARE_HINT, infer_class_count, integer_labels
from meddx.errors import MeddxError
from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL
from meddx.utils.io import file_digest

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
    return file_digest(path, "md5")


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


SPLITS = ("train", "val", "test")
CLASSES_SIDECAR = ".classes.json"  # <file>.classes.json beside a data file: a JSON list of class names


def load_medmnist(path: str | Path, name: str | None = None) -> DataBundle:
    """Load a MedMNIST-format ``.npz`` (keys ``{train,val,test}_{images,labels}``, optional ``classes``).

    Class names come from, in order: a ``classes`` array in the file or ``<file>.classes.json``; the MedMNIST
    set the file is, by name or else by content (split sizes, label set, image shape); else generic ``0..K-1``
    with one notice line. The label contract (:mod:`meddx.data.validate`) holds whatever the file is called.
    """
    path = Path(path)
    if not path.is_file():
        raise MeddxError("file not found", path)
    arrays = _read_npz(path)
    labels = {s: integer_labels(arrays[f"{s}_labels"], f"{path} [{s}]") for s in SPLITS}
    for s, y in labels.items():
        if y.ndim not in (1, 2) or len(y) != len(arrays[f"{s}_images"]):
            raise MeddxError(f"labels of shape {y.shape} for {len(arrays[f'{s}_images'])} images; expected (N,), "
                             "(N, 1) or a (N, K) 0/1 matrix", f"{path} [{s}]")
    declared, source = declared_classes(path, arrays)
    name = name or guess_name(path)
    if name is None:
        name = recognise_medmnist(path, arrays["train_images"], labels)
    info = medmnist_info().get(name or "")
    multi = labels["train"].ndim == 2 and labels["train"].shape[1] > 1
    if info is not None and declared is None:
        task, class_names, source = info["task"], [info["labels"][str(i)] for i in range(len(info["labels"]))], \
            "medmnist"
    else:
        k = len(declared) if declared is not None else infer_class_count(labels, multi, str(path))
        task = MULTI_LABEL if multi else (BINARY if k == 2 else MULTI_CLASS)
        class_names = declared or [str(i) for i in range(k)]
        if declared is None:
            source = "generic"
            print(f"notice: {path}: class names are generic (0..{k - 1}): not a known MedMNIST set by name or "
                  f"content; {DECLARE_HINT}", file=sys.stderr)
    spatial_dims = info["spatial_dims"] if info else _spatial_dims(arrays["train_images"])
    splits = {s: Split(_to_nchw(arrays[f"{s}_images"], spatial_dims, path), labels_from_array(labels[s], task))
              for s in SPLITS}
    # the finding of a binary MedMNIST set (its official label names), the positive class of the report
    extra = {"positive_class": int(info["positive"])} if source == "medmnist" and "positive" in info else {}
    return DataBundle(name=name or path.stem, task=task, class_names=class_names,
                      modality=info["modality"] if info else "generic", source=str(path), class_source=source,
                      extra=extra, **splits)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise MeddxError(f"not a readable .npz file ({exc.__class__.__name__}: {exc})", path) from None
    needed = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise MeddxError(f"missing arrays {', '.join(missing)} (a MedMNIST file has {', '.join(needed)})", path)
    return arrays


def _spatial_dims(x: np.ndarray) -> int:
    return 3 if x.ndim == 4 and x.shape[-1] not in (1, 3) else 2  # (N,H,W,3) is colour 2D


def declared_classes(path: Path, arrays: dict[str, np.ndarray] | None = None) -> tuple[list[str] | None, str]:
    """Class names a data file declares: a ``classes`` array inside an .npz, or ``<file>.classes.json``."""
    sidecar = path.with_name(path.name + CLASSES_SIDECAR)
    found = []
    if arrays is not None and "classes" in arrays:
        found.append(("npz", arrays["classes"].tolist(), path))
    if sidecar.is_file():
        try:
            found.append(("sidecar", json.loads(sidecar.read_text(encoding="utf-8")), sidecar))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise MeddxError(f"not readable JSON ({exc.__class__.__name__}: {exc})", sidecar) from None
    if not found:
        return None, ""
    if len(found) == 2 and found[0][1] != found[1][1]:
        raise MeddxError(f"its `classes` array and {sidecar.name} name different classes; keep one", path)
    source, names, where = found[0]
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) and n for n in names) \
            or len(set(names)) != len(names):
        raise MeddxError("classes must be a list of at least 2 distinct non-empty names, in class-id order", where)
    return names, source


def recognise_medmnist(path: Path, images: np.ndarray, labels: dict[str, np.ndarray]) -> str | None:
    """The MedMNIST set a renamed file is, by content: split sizes, label layout and range, image shape; the
    notice says whether its MD5 is also the official file's."""
    sizes = tuple(len(labels[s]) for s in SPLITS)
    y = labels["train"]
    for name, info in medmnist_info().items():
        if sizes != tuple(info["n_samples"][s] for s in SPLITS):
            continue
        k, multi = len(info["labels"]), info["task"] == MULTI_LABEL
        if multi != (y.ndim == 2 and y.shape[1] > 1) or (multi and y.shape[1] != k):
            continue
        if not multi and any(v.size and (v.min() < 0 or v.max() >= k) for v in labels.values()):
            continue
        channels = 3 if info["spatial_dims"] == 2 and images.ndim == 4 and images.shape[-1] == 3 else 1
        if channels != info["n_channels"] or _spatial_dims(images) != info["spatial_dims"]:
            continue
        official = info["files"].get(str(images.shape[1]), {}).get("md5")
        how = ("its MD5 is the official file's" if official and md5sum(path) == official
               else "split sizes, labels and image shape match")
        print(f"notice: {path}: recognised by content as MedMNIST {name} ({how}); class names and modality "
              "from MedMNIST", file=sys.stderr)
        return name
    return None


def _to_nchw(images: np.ndarray, spatial_dims: int, path: Path) -> torch.Tensor:
    """MedMNIST stores (N, H, W), (N, H, W, 3) or (N, D, H, W); return channels-first."""
    if images.ndim == spatial_dims + 1:
        images = images[:, None]
    elif images.ndim == spatial_dims + 2 and spatial_dims == 2 and images.shape[-1] in (1, 3):
        images = np.moveaxis(images, -1, 1)
    else:
        raise MeddxError(f"images of shape {images.shape} do not look like {spatial_dims}D MedMNIST images", path)
    return torch.from_numpy(np.ascontiguousarray(images))
