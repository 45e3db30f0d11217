"""A real Orthanc PACS for tests and benchmarks: Debian's ``orthanc`` + ``orthanc-dicomweb``, started in a
temporary folder (storage and index there), HTTP on an unused loopback port, remote access and the DICOM port
off, the DICOMweb plug-in on; stopped by its pid."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ORTHANC = Path(os.environ.get("MEDDX_ORTHANC", "/usr/sbin/Orthanc"))
DICOMWEB_PLUGIN = Path(os.environ.get("MEDDX_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"))


def missing() -> str | None:
    """Why Orthanc cannot start here (None when it can)."""
    if not ORTHANC.is_file() and shutil.which("Orthanc") is None:
        return f"Orthanc is not installed ({ORTHANC}; Debian package orthanc)"
    if not DICOMWEB_PLUGIN.is_file():
        return f"the DICOMweb plug-in is not installed ({DICOMWEB_PLUGIN}; Debian package orthanc-dicomweb)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def orthanc(folder: Path, timeout: float = 60.0) -> Iterator[str]:
    """Run Orthanc with its storage in ``folder``; yields the DICOMweb root ``http://127.0.0.1:PORT/dicom-web``."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = {
        "Name": "meddx-test", "StorageDirectory": str(folder / "storage"), "IndexDirectory": str(folder / "index"),
        "HttpPort": port, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
        "DicomServerEnabled": False, "DicomPort": free_port(), "Plugins": [str(DICOMWEB_PLUGIN)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
        "StableAge": 1, "HttpThreadsCount": 8, "ConcurrentJobs": 2, "OverwriteInstances": False,
    }
    (folder / "orthanc.json").write_text(json.dumps(config))
    exe = str(ORTHANC) if ORTHANC.is_file() else shutil.which("Orthanc")
    log = open(folder / "orthanc.log", "wb")
    proc = subprocess.Popen([exe, str(folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                            cwd=folder, start_new_session=True)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/system", proc, timeout, folder / "orthanc.log")
        yield f"http://127.0.0.1:{port}/dicom-web"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float, log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"Orthanc did not answer {url} within {timeout:g} s")


def upload(url: str, files: list[Path]) -> None:
    """STOW-RS the files (as the PACS's own data: they go in as they are)."""
    import pydicom
    from dicomweb_client.api import DICOMwebClient

    DICOMwebClient(url).store_instances([pydicom.dcmread(str(f)) for f in files])
