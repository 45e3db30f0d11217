"""DICOM files through pydicom: sizes checked before decoding, LUTs applied, colour converted to RGB.

Grey images: stored values -> Modality LUT / rescale slope-intercept -> the VOI LUT Sequence, else the first
Window Center/Width, else the stored range (see :mod:`meddx.data.intensity`) -> uint8; MONOCHROME1 is
inverted. RGB and YBR_* (converted to RGB by pydicom) and PALETTE COLOR (through its colour LUT) become
3-channel uint8 scaled by their bit depth. Multi-frame files keep their frames: ``(C, F, H, W)``.
Compressed transfer syntaxes decode where a decoder is installed (``pip install meddx[dicom]``: pylibjpeg with
its libjpeg, openjpeg and RLE plug-ins); otherwise the error names the transfer syntax.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from meddx.data import intensity
from meddx.data.pixels import Pixels, check_pixel_count, first_line
from meddx.errors import MeddxError

DICOM_SUFFIXES = (".dcm", ".dicom")
DECODER_HINT = "pip install 'meddx[dicom]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle)"


def looks_like_dicom(path: Path, head: bytes) -> bool:
    """The ``DICM`` marker after the 128-byte preamble, or a ``.dcm`` name (files written without preamble)."""
    return head[128:132] == b"DICM" or path.suffix.lower() in DICOM_SUFFIXES


def read_header(path: Path) -> Any:
    """The dataset with large elements (pixel data) deferred: nothing big is read yet."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pydicom.dcmread(str(path), defer_size="256 KB", force=path.suffix.lower() in DICOM_SUFFIXES)
    except InvalidDicomError as exc:
        raise MeddxError(f"not a DICOM file ({first_line(exc)})", path) from None
    except Exception as exc:  # pydicom raises many types for truncated / garbled files
        raise MeddxError(f"not a readable DICOM file ({exc.__class__.__name__}: {first_line(exc)})", path) from None


def _geometry(ds: Any, path: Path) -> tuple[int, int, int, int]:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        what = ds.get("Modality") or ds.get("SOPClassUID")
        if what is None:
            raise MeddxError("not a DICOM image (no pixel data and no identifying elements: truncated, damaged or "
                             "not DICOM)", path)
        raise MeddxError(f"DICOM file holds no pixel data (modality/class {what}: not an image object)", path)
    try:
        with warnings.catch_warnings():  # pydicom converts values on access and warns of a bad VR (badVR.dcm's
            warnings.simplefilter("ignore")  # Rows '1A'): the error below is the one line the user gets
            rows, cols = int(ds.Rows), int(ds.Columns)
            frames = int(ds.get("NumberOfFrames") or 1)
            samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError) as exc:
        raise MeddxError(f"DICOM image header is incomplete ({first_line(exc)})", path) from None
    check_pixel_count((frames, rows, cols, samples), path, "DICOM image")
    return rows, cols, frames, samples


def _check_decoder(ds: Any, path: Path) -> None:
    from pydicom.pixels import get_decoder

    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is not None and not ts.is_transfer_syntax:
        raise MeddxError(f"DICOM transfer syntax {ts} is unknown to pydicom; it cannot be decoded", path)
    if ts is None or not ts.is_compressed:
        return
    try:
        available = get_decoder(ts).is_available
    except NotImplementedError:
        available = False
    if not available:
        raise MeddxError(f"DICOM transfer syntax {ts.name} ({ts}) has no installed decoder; {DECODER_HINT}", path)


def decode(path: Path) -> tuple[Any, np.ndarray]:
    """The dataset and its stored pixel values (frames first when several), colour already RGB."""
    ds = read_header(path)
    _, _, frames, _ = _geometry(ds, path)
    _check_decoder(ds, path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array  # YBR_* is converted to RGB here
    except MeddxError:
        raise
    except Exception as exc:  # truncated pixel data, corrupt codestreams, inconsistent group 0028
        raise MeddxError(f"DICOM pixel data cannot be decoded ({first_line(exc)})", path) from None
    if frames == 1 and arr.ndim >= 2 and arr.shape[0] == 1 and arr.ndim == (4 if _colour(ds) else 3):
        arr = arr[0]
    return ds, arr


def _colour(ds: Any) -> bool:
    return int(ds.get("SamplesPerPixel") or 1) == 3


def read_dicom(path: str | Path, recorded: dict | None = None) -> Pixels:
    """One DICOM file as uint8 ``(C, H, W)`` (``(C, F, H, W)`` for several frames) with its mapping."""
    path = Path(path)
    ds, arr = decode(path)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    notes: list[str] = []
    colour = True
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            rgb = apply_color_lut(arr, ds)
        except Exception as exc:  # a missing or inconsistent palette
            raise MeddxError(f"DICOM palette cannot be applied ({first_line(exc)})", path) from None
        bits = 16 if rgb.dtype == np.uint16 else 8
        mapping = intensity.scale(0, 2**bits - 1, "dicom")
        out = intensity.apply(rgb, mapping)
    elif _colour(ds):
        bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
        mapping = intensity.scale(0, 2**bits - 1, "dicom")
        out = arr.astype(np.uint8) if bits == 8 else intensity.apply(arr, mapping)
    else:
        colour = False
        out, mapping = _grey(ds, arr, recorded, path)
        if photometric == "MONOCHROME1":
            out = 255 - out
            notes.append("MONOCHROME1 (white = low) inverted")
    out = np.moveaxis(out, -1, 0) if colour else out[None]
    return Pixels(np.ascontiguousarray(out), mapping, "dicom", str(path), notes)


def _grey(ds: Any, arr: np.ndarray, recorded: dict | None, path: Path) -> tuple[np.ndarray, dict]:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        values = apply_modality_lut(arr, ds)
        if intensity.replayable(recorded, "dicom"):
            return intensity.apply(values, recorded), dict(recorded)
        if "VOILUTSequence" in ds:
            bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
            mapping = {"kind": "voi_lut", "bits": bits, "source": "dicom"}
            voi = apply_voi_lut(values, ds, prefer_lut=True)
            return intensity.apply(voi, intensity.scale(0, 2**bits - 1, "dicom")), mapping
        win = _first_window(ds)
        if win is not None:
            mapping = intensity.window(*win)
        else:
            mapping = intensity.scale(*_stored_range(ds, apply_modality_lut), "dicom")
        return intensity.apply(values, mapping), mapping
    except MeddxError:
        raise
    except Exception as exc:  # malformed LUT descriptors / data
        raise MeddxError(f"DICOM LUT cannot be applied ({first_line(exc)})", path) from None


def _first_window(ds: Any) -> tuple[float, float] | None:
    c, w = ds.get("WindowCenter"), ds.get("WindowWidth")
    if c is None or w is None:
        return None
    from pydicom.multival import MultiValue

    try:
        c, w = (float(v[0] if isinstance(v, (MultiValue, list, tuple)) else v) for v in (c, w))
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if w >= 1 and np.isfinite(c) and np.isfinite(w) else None


def _stored_range(ds: Any, apply_modality_lut: Any) -> tuple[float, float]:
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    else:
        lo, hi = 0, 2**bits - 1
    ends = np.asarray(apply_modality_lut(np.array([lo, hi], dtype=np.int64), ds), dtype=np.float64)
    return float(ends.min()), float(ends.max())


def read_values(path: str | Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A grey (multi-frame) DICOM file's modality values (e.g. HU) as float32 ``(F, H, W)`` and its spacing
    (z, y, x) in mm (slice spacing from SpacingBetweenSlices or SliceThickness, 1 mm where absent)."""
    from pydicom.pixels import apply_modality_lut

    path = Path(path)
    ds, arr = decode(path)
    if _colour(ds):
        raise MeddxError("colour DICOM cannot be read as a grey volume", path)
    values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    if values.ndim == 2:
        values = values[None]
    try:
        dy, dx = (float(v) for v in (ds.get("PixelSpacing") or (1.0, 1.0)))
        dz = float(ds.get("SpacingBetweenSlices") or ds.get("SliceThickness") or 1.0)
    except (TypeError, ValueError):
        dz, dy, dx = 1.0, 1.0, 1.0
    return values, (dz, dy, dx)
