"""The model's input contract: what a trained run expects, and :func:`conform` to bring pixels to it.

``Expected`` holds channels, spatial shape, dtype/value range, whether 2D resizing is allowed and the run's
recorded intensity mapping. A mismatch that cannot be fixed is a :class:`~meddx.errors.MeddxError`
(``error: <file>: <problem>``); tolerated conversions (resizing, RGB -> grey, grey -> RGB, a mapping that
differs from training's) are done and reported as one-line :class:`Notice` s, which :func:`load_input`
prints to stderr once per kind (not once per file).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from meddx.data import intensity
from meddx.data.pixels import Notice, Pixels, convert_channels  # noqa: F401  (re-exported)
from meddx.errors import MeddxError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class Expected:
    channels: int
    shape: tuple[int, ...]  # spatial: (H, W) or (D, H, W)
    dtype: str = "uint8"
    value_range: tuple[float, float] | None = (0.0, 255.0)
    resize: bool = True  # 2D inputs of another size are resized (with a notice)
    mapping: dict | None = None  # the intensity mapping recorded at training time (None: file defaults)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Expected:
        """From a checkpoint's meta (``in_channels``, ``image_shape``, ``input_dtype``, ``intensity_mapping``)."""
        shape = tuple(int(s) for s in meta["image_shape"])
        dtype = str(meta.get("input_dtype") or "uint8")
        return cls(int(meta["in_channels"]), shape, dtype, (0.0, 255.0) if dtype == "uint8" else None,
                   resize=len(shape) == 2, mapping=meta.get("intensity_mapping"))


def conform(px: Pixels, expected: Expected) -> tuple[torch.Tensor, list[Notice]]:
    """``px`` as the model's input tensor ``(C, *expected.shape)``, plus the notices for what was converted."""
    import torch

    arr, notices = conform_array(px, expected)
    return torch.from_numpy(arr), notices


def conform_array(px: Pixels, expected: Expected) -> tuple[np.ndarray, list[Notice]]:
    """:func:`conform` as a numpy array: torch is imported only when a 2D image must be resized."""
    path, arr, notices = px.path, px.array, []
    want_dims = len(expected.shape)
    if arr.ndim - 1 == want_dims + 1 and arr.shape[1] == 1:  # a single frame / slice
        arr = arr[:, 0]
    if arr.ndim - 1 != want_dims:
        if want_dims == 2 and arr.ndim == 4:
            raise MeddxError(f"holds {arr.shape[1]} frames/slices of {arr.shape[2]}x{arr.shape[3]}; the model "
                             "expects one 2D image", path)
        raise MeddxError(f"is {arr.ndim - 1}D (shape {tuple(arr.shape)}) but the model expects {want_dims}D "
                         "inputs", path)
    arr, note = convert_channels(arr, expected.channels, path)
    notices += [note] if note else []
    arr = _to_range(arr, expected, path)
    notices += _mapping_notice(px, expected)
    arr = np.ascontiguousarray(arr) if arr.flags.writeable else arr.copy(order="C")
    size = tuple(int(s) for s in arr.shape[1:])
    if size != expected.shape:
        if not (expected.resize and want_dims == 2):
            raise MeddxError(f"has shape {size}, the model expects {expected.shape}", path)
        import torch

        from meddx.data.images import resize_to

        arr = resize_to(torch.from_numpy(arr), expected.shape).numpy()
        notices.append(Notice("resize", f"{path}: resized {'x'.join(map(str, size))} to the model's "
                                        f"{'x'.join(map(str, expected.shape))} input"))
    return arr, notices


def _to_range(arr: np.ndarray, expected: Expected, path: str) -> np.ndarray:
    if expected.dtype != "uint8" or arr.dtype == np.uint8:
        return arr
    lo, hi = expected.value_range or (0.0, 255.0)
    amin, amax = float(arr.min()), float(arr.max())
    if amin < lo or amax > hi:
        raise MeddxError(f"values {amin:.6g}..{amax:.6g} are outside the model's 8-bit input range "
                         f"{lo:g}..{hi:g} (arrays are not rescaled; save 8-bit values, or a 16-bit PNG/DICOM)", path)
    return np.rint(arr).astype(np.uint8) if arr.dtype.kind == "f" else arr.astype(np.uint8)


def _mapping_notice(px: Pixels, expected: Expected) -> list[Notice]:
    rec = expected.mapping
    if not rec or px.mapping == rec or px.mapping.get("source") == rec.get("source"):
        return []
    return [Notice("mapping", f"{px.path}: intensities mapped by {intensity.describe(px.mapping)} "
                              f"({px.mapping.get('source')}); the run was trained on {rec.get('source')} files "
                              f"mapped by {intensity.describe(rec)}")]


def read_input(path: str | Path, meta: dict[str, Any]) -> tuple[torch.Tensor, list[Notice]]:
    """One file conformed to a checkpoint's input, and the notices for what was converted (a resize is no
    notice for segmentation/detection: they map their outputs back to the original size themselves)."""
    import torch

    arr, notices = read_input_array(path, meta)
    return torch.from_numpy(arr), notices


def read_input_array(path: str | Path, meta: dict[str, Any]) -> tuple[np.ndarray, list[Notice]]:
    """:func:`read_input` as a numpy array (the torch-free prediction path)."""
    expected = Expected.from_meta(meta)
    if len(expected.shape) == 3:
        from meddx.data.volumes import read_volume_pixels

        px = read_volume_pixels(path)
    else:
        from meddx.data.images import read_pixels

        px = read_pixels(path, expected.mapping)
    arr, notices = conform_array(px, expected)
    if meta.get("task", "classification") != "classification":
        notices = [n for n in notices if n.kind != "resize"]
    return arr, notices


def load_input(path: str | Path, meta: dict[str, Any], said: set[str] | None = None) -> torch.Tensor:
    """Read one file and conform it to a checkpoint's input; notices go to stderr once per kind in ``said``."""
    import torch

    return torch.from_numpy(load_input_array(path, meta, said))


def load_input_array(path: str | Path, meta: dict[str, Any], said: set[str] | None = None) -> np.ndarray:
    """:func:`load_input` as a numpy array."""
    arr, notices = read_input_array(path, meta)
    said = set() if said is None else said
    for n in notices:
        if n.kind not in said:
            said.add(n.kind)
            print(f"notice: {n.text}", file=sys.stderr)
    return arr
