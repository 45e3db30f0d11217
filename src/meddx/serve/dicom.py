"""DICOM out from the HTTP service: ``?output=dicom`` (the SR / SEG / SC as a multipart DICOM response) and
``POST /v1/models/{name}/pacs`` ("send to PACS": the de-identified images and results stored over STOW-RS).

Both de-identify the upload first (:mod:`meddx.pacs.results`); nothing identifying is returned or logged.
"""

from __future__ import annotations

import io
import secrets
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError

DICOM_ONLY = "DICOM output needs a DICOM upload (one file, or a zip of one series)"


def _results(model: Any, data: bytes) -> Any:
    from meddx.pacs.results import dicom_results

    with _dicom_upload(data) as path, model.lock:  # the PyTorch model is shared with the other routes
        return dicom_results(model.predictor, [path])


@contextmanager
def _dicom_upload(data: bytes) -> Iterator[Path]:
    """A DICOM file (the ``DICM`` marker: the preamble may look like TIFF, as in dual-personality files) or a
    zipped series as a private temporary path; anything else is refused."""
    from meddx.serve.uploads import upload_file

    if data[128:132] == b"DICM":
        with tempfile.TemporaryDirectory(prefix="meddx-upload-") as tmp:
            path = Path(tmp) / "upload.dcm"
            path.write_bytes(data)
            yield path
        return
    with upload_file(data) as path:
        if not (path.is_dir() or path.suffix == ".dcm"):
            raise MeddxError(DICOM_ONLY, "upload")
        yield path


def dicom_reply(model: Any, data: bytes) -> tuple[bytes, str]:
    """The results as ``multipart/related; type="application/dicom"`` (PS3.18 8.6.1.2) and its content type."""
    res = _results(model, data)
    return multipart_dicom(res.outputs)


def send_to_pacs(model: Any, data: bytes, pacs_url: str) -> dict[str, Any]:
    """Store the de-identified upload and its results in the configured PACS; what was stored, by modality."""
    from meddx.pacs.client import Pacs

    res = _results(model, data)
    Pacs(pacs_url).store(res.sources + res.outputs)
    stored = Counter(str(ds.Modality) for ds in res.sources + res.outputs)
    return {"study": str(res.sources[0].StudyInstanceUID), "stored": dict(stored), "notes": res.notes}


def multipart_dicom(datasets: list[Any]) -> tuple[bytes, str]:
    """Each data set as a Part 10 file in one multipart/related body (written by hand: dicomweb-client's encoder
    is private and email.mime would base64 the parts)."""
    from pydicom.filewriter import dcmwrite

    boundary = f"meddx-{secrets.token_hex(12)}"
    body = io.BytesIO()
    for ds in datasets:
        part = io.BytesIO()
        dcmwrite(part, ds, enforce_file_format=True)
        body.write(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        body.write(part.getvalue() + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return body.getvalue(), f'multipart/related; type="application/dicom"; boundary={boundary}'
