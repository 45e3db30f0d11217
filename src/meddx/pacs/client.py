"""DICOMweb through dicomweb-client: QIDO-RS (find), WADO-RS (retrieve), STOW-RS (store), with one-line errors.

Errors name the server's URL, never a study's UIDs (they identify a patient's study).
"""

from __future__ import annotations

import logging
from typing import Any

from meddx.errors import MeddxError

STUDY_DESCRIPTION = "00081030"
STUDY_UID = "0020000D"


class Pacs:
    """A DICOMweb server at ``url`` (e.g. ``http://127.0.0.1:8042/dicom-web``)."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        try:
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise MeddxError("PACS access needs the pacs extra: pip install 'meddx[pacs]'") from None
        if not url.startswith(("http://", "https://")):
            raise MeddxError("not a DICOMweb URL (expected http://HOST:PORT/dicom-web)", url)
        self.url = url.rstrip("/")
        self.client = DICOMwebClient(self.url, timeout=timeout)
        # its default retries every failure 5 times over 30 s (a refused connection too): one quick retry
        self.client.set_http_retry_params(max_attempts=2, wait_exponential_multiplier=500)
        # their debug/info lines carry request URLs, i.e. study and instance UIDs (identifying): keep them out of
        # every log, whatever level the application sets
        for name in ("dicomweb_client", "urllib3.connectionpool"):
            logging.getLogger(name).setLevel(logging.WARNING)

    def studies(self) -> list[tuple[str, str]]:
        """(Study Instance UID, Study Description) of every study on the server (QIDO-RS, all pages)."""
        found = self._call("search for studies", self.client.search_for_studies, fields=["StudyDescription"],
                           get_remaining=True)
        return [(_value(s, STUDY_UID), _value(s, STUDY_DESCRIPTION)) for s in found]

    def has_study(self, study_uid: str) -> bool:
        found = self._call("search for the study", self.client.search_for_studies,
                           search_filters={"StudyInstanceUID": study_uid})
        return bool(found)

    def retrieve_study(self, study_uid: str) -> list[Any]:
        """Every instance of the study (WADO-RS), in the transfer syntax it is stored in."""
        return self._call("retrieve the study", self.client.retrieve_study, study_uid,
                          media_types=(("application/dicom", "*"),))

    def instances(self, study_uid: str) -> list[dict[str, Any]]:
        return self._call("search for instances", self.client.search_for_instances, study_instance_uid=study_uid)

    def store(self, datasets: list[Any]) -> int:
        """STOW-RS; the number of instances the server accepted (already stored ones count: re-runs are safe)."""
        if not datasets:
            return 0
        response = self._call("store instances", self.client.store_instances, list(datasets))
        failed = response.get("FailedSOPSequence", []) if response is not None else []
        if failed:
            raise MeddxError(f"the server refused {len(failed)} of {len(datasets)} instances (STOW-RS)", self.url)
        return len(datasets)

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        import requests

        try:
            return fn(*args, **kw)
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            raise MeddxError(f"cannot {what}: HTTP {code} from the DICOMweb server", self.url) from None
        except requests.RequestException as exc:
            raise MeddxError(f"cannot {what}: the DICOMweb server is unreachable ({type(exc).__name__})",
                             self.url) from None


def _value(attrs: dict[str, Any], tag: str) -> str:
    values = attrs.get(tag, {}).get("Value") or [""]
    return str(values[0])
