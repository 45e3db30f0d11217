"""``meddx serve`` speaks DICOM: ``?output=dicom`` returns the de-identified SR / SC as multipart DICOM, and
with a DICOMweb URL the page offers "send to PACS" (``POST /v1/models/{name}/pacs``, checked in a real
Orthanc through QIDO). The uploads carry planted PHI; the responses are searched for it."""

from __future__ import annotations

import io

import pytest

from .conftest import require_module
from .dicom_phi import phi_hits, planted_ct
from .test_dicomio import cls_run  # noqa: F401  (session fixture: a tiny trained classifier)
from .test_pacs import pacs_url  # noqa: F401  (module fixture: a real Orthanc)

require_module("fastapi")
require_module("httpx")
require_module("highdicom")

from fastapi.testclient import TestClient  # noqa: E402


def _parts(body: bytes, content_type: str) -> list:
    import pydicom

    boundary = content_type.split("boundary=")[1].encode()
    chunks = body.split(b"--" + boundary)[1:-1]
    return [pydicom.dcmread(io.BytesIO(c.split(b"\r\n\r\n", 1)[1][:-2])) for c in chunks]


def test_output_dicom_is_multipart_sr_and_sc_without_phi(cls_run, tmp_path):  # noqa: F811
    from meddx.dicomio.sr import read_findings
    from meddx.serve.app import create_app

    ct, planted = planted_ct(tmp_path / "ct.dcm")
    with TestClient(create_app([cls_run], runtime="torch"), raise_server_exceptions=False) as client:
        name = cls_run.name
        r = client.post(f"/v1/models/{name}/predict?output=dicom", files={"file": ("ct.dcm", ct.read_bytes())})
        assert r.status_code == 200, r.text[:300]
        assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
        parts = _parts(r.content, r.headers["content-type"])
        assert sorted(p.Modality for p in parts) == ["OT", "SR"]
        sr = next(p for p in parts if p.Modality == "SR")
        json_answer = client.post(f"/v1/models/{name}/predict", files={"file": ("ct.dcm", ct.read_bytes())}).json()
        (finding,) = read_findings(sr)
        assert finding["finding"] == json_answer["label"]
        assert finding["probability"] == pytest.approx(json_answer["probability"], abs=1e-5)
        assert phi_hits(planted, [r.content.decode("latin-1"), str(dict(r.headers))]) == []
        bad = client.post(f"/v1/models/{name}/predict?output=dicom", files={"file": ("x.npy", b"\x93NUMPY")})
        assert bad.status_code == 400 and "DICOM output needs a DICOM upload" in bad.json()["detail"]
        assert client.post(f"/v1/models/{name}/predict?output=xml", files={"file": ("ct.dcm", b"x")}).status_code == 400
        assert 'id="pacs-row" hidden' in client.get("/").text  # no PACS configured: no button
        assert client.post(f"/v1/models/{name}/pacs", files={"file": ("ct.dcm", b"x")}).status_code in (404, 405)


def test_send_to_pacs_stores_de_identified_results(cls_run, pacs_url, tmp_path):  # noqa: F811
    from meddx.pacs.client import Pacs
    from meddx.serve.app import create_app

    ct, planted = planted_ct(tmp_path / "ct.dcm")
    with TestClient(create_app([cls_run], runtime="torch", pacs_url=pacs_url)) as client:
        page = client.get("/").text
        assert 'id="pacs-row">' in page and "send to PACS" in page
        r = client.post(f"/v1/models/{cls_run.name}/pacs", files={"file": ("ct.dcm", ct.read_bytes())})
        assert r.status_code == 200, r.text[:300]
        out = r.json()
    assert out["stored"] == {"CT": 1, "SR": 1, "OT": 1}
    pacs = Pacs(pacs_url)
    modalities = sorted(i["00080060"]["Value"][0] for i in pacs.instances(out["study"]))
    assert modalities == ["CT", "OT", "SR"]
    stored = [str(ds) for ds in pacs.retrieve_study(out["study"])]
    assert phi_hits(planted, [r.text] + stored) == []
