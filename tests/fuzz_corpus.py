"""A corpus of broken, hostile and valid input files for ``meddx predict`` / ``explain`` (``make_corpus``).

Each case is ``(path, expect)``: ``"error"`` must fail with exactly one ``error:`` line, ``"ok"`` must
succeed, ``"any"`` (garbled bytes that may still decode) may do either but never crash. ``reference`` is the
8-bit image the valid 16-bit files encode, so a test can compare answers.
"""

from __future__ import annotations

import gzip
import io
import os
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

SIZE = 28


def reference_image(seed: int = 3) -> np.ndarray:
    """An 8-bit 28x28 phantom-like slice (a bright blob on a darker disc)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE]
    img = 40 + 120 * ((y - 14) ** 2 + (x - 14) ** 2 < 110) + 80 * ((y - 9) ** 2 + (x - 17) ** 2 < 9)
    return np.clip(img + rng.integers(0, 20, img.shape), 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_with_header(width: int, height: int, depth: int = 8, colour: int = 0, idat: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(idat or b"\0"))
            + _png_chunk(b"IEND", b""))


def _pil_bytes(arr: np.ndarray, fmt: str, **kw) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _nifti_bytes(arr: np.ndarray, gz: bool = False) -> bytes:
    import nibabel as nib

    raw = nib.Nifti1Image(arr, np.eye(4)).to_bytes()
    return gzip.compress(raw) if gz else raw


def _dicom_bytes(arr: np.ndarray | None = None, **attrs) -> bytes:
    """A small MONOCHROME2 CT DICOM (uint16, Explicit VR Little Endian) with ``attrs`` overriding elements."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

    arr = (reference_image().astype(np.uint16) * 16) if arr is None else arr
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
    meta.TransferSyntaxUID = UID(attrs.pop("TransferSyntaxUID", ExplicitVRLittleEndian))
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, meta.MediaStorageSOPInstanceUID, "CT"
    ds.Rows, ds.Columns = arr.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    ds.PixelData = arr.astype(np.uint16).tobytes()
    ts = meta.TransferSyntaxUID
    if not ts.is_transfer_syntax or ts.is_compressed:  # not a real codestream: the decoder must reject it
        from pydicom.encaps import encapsulate

        ds.PixelData = encapsulate([ds.PixelData])
    for k, v in attrs.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _valid_bases(ref: np.ndarray) -> dict[str, bytes]:
    rgb = np.stack([ref] * 3, -1)
    return {
        "png8.png": _pil_bytes(ref, "PNG"),
        "png16.png": _pil_bytes(ref.astype(np.uint16) * 257, "PNG"),
        "tif16.tif": _pil_bytes(ref.astype(np.uint16) * 257, "TIFF"),
        "jpeg.jpg": _pil_bytes(rgb, "JPEG", quality=95),
        "bmp.bmp": _pil_bytes(ref, "BMP"),
        "dicom.dcm": _dicom_bytes(),
        "array.npy": _npy_bytes(ref),
        "array.npz": _npz_bytes(image=ref),
        "nifti.nii": _nifti_bytes(ref.T.copy()),
        "nifti.nii.gz": _nifti_bytes(ref.T.copy(), gz=True),
    }


def _write(root: Path, name: str, data: bytes, cases: list, expect: str) -> None:
    path = root / name
    path.write_bytes(data)
    cases.append((path, expect))


def _mutations(root: Path, bases: dict[str, bytes], cases: list) -> None:
    rng = np.random.default_rng(0)
    for name, data in bases.items():
        stem, suffix = name.split(".", 1)
        n = len(data)
        for cut in sorted({1, 4, 8, 16, 60, 131, n // 3, n // 2, n - 7}):
            if 0 < cut < n:  # the last cut may only lose a trailer (PNG IEND, gzip CRC): it may still decode
                _write(root, f"trunc{cut}_{stem}.{suffix}", data[:cut], cases, "any" if cut == n - 7 else "error")
        for k in range(3):  # garbled bytes somewhere: may still decode
            buf = bytearray(data)
            for i in rng.integers(0, n, size=8):
                buf[i] ^= 0xFF
            _write(root, f"garble{k}_{stem}.{suffix}", bytes(buf), cases, "any")
        tolerant = name.endswith((".dcm", ".nii"))  # pydicom reads .dcm without marker, nibabel fixes sizeof_hdr
        _write(root, f"magic_{stem}.{suffix}", b"\0\0\0\0" + data[4:] if not name.endswith(".dcm")
               else data[:128] + b"XXXX" + data[132:], cases, "any" if tolerant else "error")
        _write(root, f"empty_{stem}.{suffix}", b"", cases, "error")
        _write(root, f"text_{stem}.{suffix}", b"hello, this is not an image\n" * 4, cases, "error")


def _hostile(root: Path, ref: np.ndarray, cases: list) -> None:
    from pydicom.uid import JPEGBaseline8Bit

    e = "error"
    _write(root, "huge_ihdr.png", png_with_header(100_000, 100_000), cases, e)
    _write(root, "huge_ihdr16.png", png_with_header(60_000, 60_000, depth=16), cases, e)
    _write(root, "zero_ihdr.png", png_with_header(0, 0), cases, e)
    _write(root, "huge_dicom.dcm", _dicom_bytes(Rows=65535, Columns=65535, NumberOfFrames=100), cases, e)
    _write(root, "zero_rows.dcm", _dicom_bytes(Rows=0), cases, e)
    _write(root, "short_pixels.dcm", _dicom_bytes(Rows=64, Columns=64), cases, e)
    _write(root, "frames3.dcm", _dicom_bytes(np.stack([ref.astype(np.uint16)] * 3), NumberOfFrames=3), cases, e)
    _write(root, "no_pixels.dcm", _dicom_bytes()[:-(SIZE * SIZE * 2 + 12)], cases, e)
    _write(root, "jpeg_ts_raw.dcm", _dicom_bytes(TransferSyntaxUID=JPEGBaseline8Bit), cases, e)
    _write(root, "no_decoder_ts.dcm", _dicom_bytes(TransferSyntaxUID="1.2.840.10008.1.2.4.92"), cases, e)
    unknown = _dicom_bytes().replace(b"1.2.840.10008.1.2.1\0", b"1.2.840.10008.9.9.9\0", 1)  # same length
    _write(root, "unknown_ts.dcm", unknown, cases, e)
    _write(root, "bad_window.dcm", _dicom_bytes(WindowCenter=40, WindowWidth=0), cases, "ok")
    header = b"\x93NUMPY\x01\x00"
    big = "{'descr': '<u1', 'fortran_order': False, 'shape': (100000, 100000), }"
    _write(root, "huge_header.npy", header + struct.pack("<H", 118) + big.ljust(117).encode() + b"\n", cases, e)
    for name, arr in {
        "nan.npy": np.full((SIZE, SIZE), np.nan, np.float32), "inf.npy": np.full((SIZE, SIZE), np.inf),
        "zero_rows.npy": np.zeros((0, SIZE), np.uint8), "zero_cols.npy": np.zeros((SIZE, 0), np.uint8),
        "zero_1d.npy": np.zeros((0,), np.uint8), "scalar.npy": np.array(3.0), "vector.npy": np.arange(28.0),
        "chan5.npy": np.zeros((5, SIZE, SIZE), np.uint8), "chan2.npy": np.zeros((2, SIZE, SIZE), np.uint8),
        "frames.npy": np.zeros((1, 5, SIZE, SIZE), np.uint8), "five_d.npy": np.zeros((1, 1, 1, SIZE, SIZE)),
        "u16_wide.npy": ref.astype(np.uint16) * 257, "negative.npy": -ref.astype(np.float32),
        "bool.npy": ref > 100, "complex.npy": ref.astype(np.complex64), "strings.npy": np.array(["a", "b"]),
        "object.npy": np.array([{"a": 1}], dtype=object),
    }.items():
        _write(root, name, _npy_bytes(arr), cases, e)
    _write(root, "nan.npz", _npz_bytes(image=np.full((SIZE, SIZE), np.nan)), cases, e)
    _write(root, "two.npz", _npz_bytes(a=ref, b=ref), cases, e)
    _write(root, "empty.npz", _npz_bytes(), cases, e)
    _write(root, "object.npz", _npz_bytes(image=np.array([None, 1], dtype=object)), cases, e)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("image.npy", b"not a numpy file")
    _write(root, "bad_member.npz", zbuf.getvalue(), cases, e)
    _write(root, "volume.nii", _nifti_bytes(np.zeros((SIZE, SIZE, 5), np.float32)), cases, e)
    _write(root, "nan.nii", _nifti_bytes(np.full((SIZE, SIZE), np.nan, np.float32)), cases, e)
    _write(root, "float_nan.tif", _pil_bytes(np.full((SIZE, SIZE), np.nan, np.float32), "TIFF"), cases, e)
    _write(root, "float_big.tif", _pil_bytes(np.full((SIZE, SIZE), 1e6, np.float32), "TIFF"), cases, e)
    _write(root, "gzip_garbage.nii.gz", gzip.compress(b"garbage" * 100), cases, e)


def _valid_extra(root: Path, ref: np.ndarray, cases: list) -> None:
    rgb = np.stack([ref] * 3, -1)
    _write(root, "rgba.png", _pil_bytes(np.dstack([rgb, np.full_like(ref, 255)]), "PNG"), cases, "ok")
    _write(root, "big_rgb.png", _pil_bytes(np.kron(rgb, np.ones((4, 4, 1), np.uint8)), "PNG"), cases, "ok")
    _write(root, "grey_alpha.png", _pil_bytes(np.dstack([ref, ref]), "PNG"), cases, "ok")
    _write(root, "palette.png", _pil_bytes(ref, "GIF"), cases, "ok")
    _write(root, "float_ok.npy", _npy_bytes(ref.astype(np.float32)), cases, "ok")
    _write(root, "hwc.npy", _npy_bytes(ref[..., None]), cases, "ok")
    _write(root, "mono1.dcm", _dicom_bytes(PhotometricInterpretation="MONOCHROME1"), cases, "ok")
    _write(root, "windowed.dcm", _dicom_bytes(WindowCenter=40, WindowWidth=400), cases, "ok")
    _write(root, "dicom_as.png", _dicom_bytes(), cases, "ok")  # content wins over the suffix
    _write(root, "png_as.dcm", _pil_bytes(ref, "PNG"), cases, "ok")


def _filesystem(root: Path, cases: list) -> list[str]:
    """Directories, links and permissions; returns the reasons for cases that cannot be made here."""
    skipped = []
    (root / "a_dir").mkdir()
    cases.append((root / "a_dir", "error"))
    series = root / "series_dir"
    series.mkdir()
    for i in range(3):
        (series / f"IM{i}").write_bytes(_dicom_bytes(InstanceNumber=i + 1))
    cases.append((series, "error"))
    (root / "loop_a").symlink_to(root / "loop_b")
    (root / "loop_b").symlink_to(root / "loop_a")
    cases += [(root / "loop_a", "error"), (root / "self_loop.png", "error")]
    (root / "self_loop.png").symlink_to(root / "self_loop.png")
    (root / "dangling.png").symlink_to(root / "does_not_exist.png")
    cases += [(root / "dangling.png", "error"), (root / "missing.png", "error")]
    (root / "dir_link").symlink_to(root / "a_dir")
    cases.append((root / "dir_link", "error"))
    fifo = root / "fifo.png"
    os.mkfifo(fifo)
    cases.append((fifo, "error"))
    locked = root / "locked.png"
    locked.write_bytes(_pil_bytes(reference_image(), "PNG"))
    locked.chmod(0)
    if os.access(locked, os.R_OK):  # root ignores permission bits
        skipped.append("unreadable file: running as root, chmod 000 does not block reading")
        locked.chmod(0o644)
    else:
        cases.append((locked, "error"))
    return skipped


def make_corpus(root: str | Path) -> tuple[list[tuple[Path, str]], list[str]]:
    """Write the corpus under ``root``; returns ``(cases, skipped_reasons)``."""
    root = Path(root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    ref = reference_image()
    cases: list[tuple[Path, str]] = []
    bases = _valid_bases(ref)
    for name, data in bases.items():
        _write(root, name, data, cases, "ok")
    _mutations(root, bases, cases)
    _hostile(root, ref, cases)
    _valid_extra(root, ref, cases)
    skipped = _filesystem(root, cases)
    return cases, skipped


if __name__ == "__main__":  # python tests/fuzz_corpus.py OUT_DIR
    import sys

    found, why = make_corpus(sys.argv[1] if len(sys.argv) > 1 else "fuzz_corpus")
    print(f"{len(found)} files", *(f"skipped: {w}" for w in why), sep="\n")
