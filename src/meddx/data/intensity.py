"""How stored pixel values become the model's input values (the *intensity mapping*).

Models trained on image files take **uint8 values 0..255** (``input_dtype: uint8`` in the checkpoint meta),
the range of an 8-bit PNG. Every reader in :mod:`meddx.data.images` returns the pixels together with the
mapping it applied, a small JSON-able dict, so a run can record it and prediction can apply the same one:

* ``{"kind": "scale", "low": L, "high": H, "source": S}`` - linear, ``L -> 0`` and ``H -> 255``, clipped.
  8-bit files: ``0..255`` (identity). 16-bit PNG/TIFF: ``0..65535`` (the stored bit depth, never the image's
  own min/max, so the same file always maps the same way). DICOM without a window: the stored range
  ``BitsStored``/``PixelRepresentation`` taken through the Modality LUT (rescale slope/intercept).
* ``{"kind": "window", "center": C, "width": W, "source": "dicom"}`` - the DICOM linear VOI window
  (PS3.3 C.11.2.1.2.1) on modality values (e.g. HU), to 0..255. The file's first Window Center/Width.
* ``{"kind": "voi_lut", "bits": B, "source": "dicom"}`` - the file's own VOI LUT Sequence
  (``pydicom.pixels.apply_voi_lut``), whose ``B``-bit output is scaled to 0..255.
* ``{"kind": "none", "source": "array"}`` - ``.npy``/``.npz``/NIfTI: values are kept as stored (arrays carry
  no bit depth); the input contract rejects values outside the model's range instead of clipping them.

MONOCHROME1 DICOM images are inverted after the mapping (a property of the file, not of the mapping).
``source`` names the kind of file (``8-bit``, ``16-bit``, ``dicom``, ``array``); a recorded mapping is applied
to a new file only when the sources match (:func:`replayable`), otherwise the file's own default is used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

Mapping = dict[str, Any]


def scale(low: float, high: float, source: str) -> Mapping:
    return {"kind": "scale", "low": float(low), "high": float(high), "source": source}


def window(center: float, width: float) -> Mapping:
    return {"kind": "window", "center": float(center), "width": float(width), "source": "dicom"}


def bit_depth_scale(dtype: np.dtype, source: str | None = None) -> Mapping:
    """The full range of an integer dtype (uint8 -> 0..255, uint16 -> 0..65535, int16 -> -32768..32767)."""
    info = np.iinfo(dtype)
    return scale(info.min, info.max, source or f"{info.bits}-bit")


def replayable(recorded: Mapping | None, source: str) -> bool:
    """Whether a run's recorded mapping applies to a file of kind ``source``."""
    return bool(recorded) and recorded.get("kind") in ("scale", "window") and recorded.get("source") == source


def apply(values: np.ndarray, mapping: Mapping) -> np.ndarray:
    """``values`` (any numeric dtype) -> uint8 0..255 through a ``scale`` or ``window`` mapping."""
    v = values.astype(np.float64, copy=False)
    kind = mapping["kind"]
    if kind == "scale":
        low, high = mapping["low"], mapping["high"]
        out = (v - low) * (255.0 / max(high - low, 1e-12))
    elif kind == "window":  # DICOM PS3.3 C.11.2.1.2.1, linear function, output 0..255
        c, w = mapping["center"], max(mapping["width"], 1.0)
        out = ((v - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0 if w > 1 else np.where(v > c - 0.5, 255.0, 0.0)
    else:
        raise ValueError(f"intensity mapping {kind!r} cannot be applied to raw values")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def describe(mapping: Mapping) -> str:
    """A short human-readable form, for notices."""
    kind = mapping.get("kind")
    if kind == "scale":
        return f"{mapping['low']:g}..{mapping['high']:g} -> 0..255"
    if kind == "window":
        return f"window centre {mapping['center']:g} width {mapping['width']:g}"
    if kind == "voi_lut":
        return f"the file's VOI LUT ({mapping['bits']}-bit)"
    return "values as stored"
