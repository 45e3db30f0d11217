"""Uploaded bytes -> a temporary file the one pixel reader can open, typed from the bytes alone.

The client's file name never becomes a path: the type is sniffed from the first bytes (magic numbers), the
temporary file gets a fixed suffix for that type (the reader decides ``.npz``/NIfTI by suffix), and every
error message names the upload as ``upload``, never the temporary path.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from meddx.errors import MeddxError

UPLOAD_NAME = "upload"
ACCEPTED = "PNG, JPEG, TIFF, BMP, GIF, DICOM, a zip of one DICOM series, .npy, .npz or NIfTI (.nii/.nii.gz)"
# a zipped DICOM series: bounds checked from the zip's directory before anything is inflated (zip bombs)
MAX_SERIES_FILES = 2000
MAX_SERIES_BYTES = 1 << 30


class UnsupportedType(MeddxError):
    """The bytes match no format the reader takes (HTTP 415)."""


def _nifti(head: bytes) -> bool:
    if len(head) >= 348 and head[344:348] in (b"n+1\0", b"ni1\0"):
        return struct.unpack("<i", head[:4])[0] == 348 or struct.unpack(">i", head[:4])[0] == 348
    return len(head) >= 8 and head[4:8] in (b"n+2\0", b"ni2\0")


def _dicom(head: bytes) -> bool:
    """The ``DICM`` marker after the preamble, or a preamble-less data set opening with a group 0002/0008 tag."""
    return head[128:132] == b"DICM" or head[:2] in (b"\x02\x00", b"\x08\x00") and head[3:4] == b"\x00"


_MAGIC: list[tuple[str, object]] = [
    (".npy", lambda h: h.startswith(b"\x93NUMPY")),
    (".npz", lambda h: h.startswith((b"PK\x03\x04", b"PK\x05\x06"))),
    (".nii.gz", lambda h: h.startswith(b"\x1f\x8b")),
    (".png", lambda h: h.startswith(b"\x89PNG\r\n\x1a\n")),
    (".jpg", lambda h: h.startswith(b"\xff\xd8\xff")),
    (".tif", lambda h: h.startswith((b"II*\x00", b"MM\x00*"))),
    (".bmp", lambda h: h.startswith(b"BM")),
    (".gif", lambda h: h.startswith((b"GIF87a", b"GIF89a"))),
    (".nii", _nifti),
    (".dcm", _dicom),
]


def sniff_suffix(data: bytes) -> str:
    """The temporary file's suffix for these bytes, or :class:`UnsupportedType`."""
    if not data:
        raise MeddxError("file is empty (0 bytes)", UPLOAD_NAME)
    head = data[:352]
    for suffix, test in _MAGIC:
        if test(head):  # type: ignore[operator]
            return suffix
    raise UnsupportedType(f"unrecognised file type (the content matches none of {ACCEPTED})", UPLOAD_NAME)


@contextmanager
def upload_file(data: bytes, folder: str | None = None) -> Iterator[Path]:
    """The bytes in a private temporary file (suffix from :func:`sniff_suffix`), removed afterwards; a zip that
    is not an ``.npz`` is a DICOM series and becomes a private temporary folder (:func:`series_folder`)."""
    suffix = sniff_suffix(data)
    if suffix == ".npz" and not _is_npz(data):
        with series_folder(data, folder) as path:
            yield path
        return
    fd, name = tempfile.mkstemp(prefix="meddx-upload-", suffix=suffix, dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield Path(name)
    finally:
        Path(name).unlink(missing_ok=True)


def public_message(exc: BaseException, *paths: str | Path) -> str:
    """The one-line error text with temporary paths replaced by ``upload``."""
    text = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
    for p in paths:
        text = text.replace(str(p), UPLOAD_NAME)
    text = re.sub(r"\S*meddx-upload-[\w.]+", UPLOAD_NAME, text)  # temporary files named by deeper layers
    return text[:500]


def _is_npz(data: bytes) -> bool:
    """A zip whose members are all ``.npy`` arrays (NumPy's ``.npz``); an unreadable zip counts as one, so that
    the array reader gives its own error."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return True
    return bool(names) and all(n.endswith(".npy") for n in names)


@contextmanager
def series_folder(data: bytes, folder: str | None = None) -> Iterator[Path]:
    """The DICOM files of a zip in a private temporary folder, named ``0000.dcm``... by meddx (a member's own
    name, ``../`` and all, never becomes a path); sizes and counts are checked from the zip directory first."""
    import io
    import shutil
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        members = [m for m in z.infolist() if not m.is_dir()]
        total = sum(m.file_size for m in members)
        if len(members) > MAX_SERIES_FILES or total > MAX_SERIES_BYTES:
            raise MeddxError(f"zip holds {len(members)} files, {total:,} bytes uncompressed; a series may have at "
                             f"most {MAX_SERIES_FILES} files and {MAX_SERIES_BYTES:,} bytes", UPLOAD_NAME)
        root = Path(tempfile.mkdtemp(prefix="meddx-upload-", dir=folder))
        try:
            kept = 0
            for m in members:
                body = z.read(m)
                if _dicom(body[:352]):
                    (root / f"{kept:04d}.dcm").write_bytes(body)
                    kept += 1
            if kept == 0:
                raise UnsupportedType(f"zip holds no DICOM file ({len(members)} members); expected one DICOM "
                                      "series", UPLOAD_NAME)
            yield root
        finally:
            shutil.rmtree(root, ignore_errors=True)
