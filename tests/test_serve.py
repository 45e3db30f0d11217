"""``meddx serve``: the FastAPI app over a tiny trained run, through fastapi's TestClient (in-process).

Model cards, predictions on PNG / 16-bit PNG / .npy / DICOM equal to ``Predictor.predict_files``, heat maps,
the bearer token, the size cap, the bounded queue, the timeout, micro-batching, a detection run, and the fuzz
corpus: every broken upload a 4xx with a one-line reason, zero 5xx, the server healthy afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import require_module
from .fuzz_corpus import make_corpus, reference_image

require_module("fastapi")
require_module("httpx")
require_module("python_multipart")

from fastapi.testclient import TestClient  # noqa: E402

from meddx.serve.app import create_app  # noqa: E402
from meddx.serve.guard import Limits  # noqa: E402


def tiny_serve_run(tmp_path_factory) -> Path:
    """A 1-epoch seednet on the 28 px phantom (uint8, 1 channel), evaluated (metrics.json with CIs and ECE);
    trained once per test session (test_serve_browser.py shares it)."""
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    out = tmp_path_factory.getbasetemp() / "serve_runs"
    if not (out / "tiny" / "metrics.json").is_file():
        run = fit(TrainConfig(data="phantom", model="seednet", epochs=1, size=28, out=str(out), name="tiny",
                              progress=False, device="cpu")).path
        evaluate_run(run, n_bootstrap=50, device="cpu", report=False)
    return out / "tiny"


@pytest.fixture(scope="session")
def serve_run(tmp_path_factory) -> Path:
    return tiny_serve_run(tmp_path_factory)


@pytest.fixture(scope="module")
def client(serve_run):
    with TestClient(create_app([serve_run], runtime="torch"), raise_server_exceptions=False) as c:
        yield c


def _png(arr: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _post(client, data: bytes, name: str = "image.png", query: str = "", headers=None):
    return client.post(f"/v1/models/tiny/predict{query}", files={"file": (name, data)}, headers=headers)


def _one_line_4xx(r) -> str:
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    detail = r.json()["detail"]
    assert isinstance(detail, str) and detail and "\n" not in detail and "Traceback" not in detail
    assert "meddx-upload-" not in detail and "/tmp" not in detail  # never the temporary path
    return detail


def test_model_card(client, serve_run):
    cards = client.get("/v1/models").json()["models"]
    assert [c["name"] for c in cards] == ["tiny"]
    card = cards[0]
    assert card["task"] == "classification" and card["classes"] == ["no nodule", "nodule"]
    assert card["input"]["channels"] == 1 and card["input"]["shape"] == [28, 28] and card["input"]["dtype"] == "uint8"
    assert "intensity_mapping" in card["input"] and card["training_data"]["name"] == "phantom"
    m = card["test_metrics"]
    assert m["split"] == "test" and len(m["acc_ci"]) == 2 and len(m["auc_ci"]) == 2 and 0 <= m["ece"] <= 1
    assert "not a medical device" in card["intended_use"] and card["meddx_version"]
    (f,) = card["files"]
    assert f["sha256"] == hashlib.sha256((serve_run / f["name"]).read_bytes()).hexdigest()
    assert client.get("/v1/models/tiny").json() == card
    assert client.get("/v1/models/nope").status_code == 404


def test_health_metrics_docs_page(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json()["ready"] is True
    assert client.get("/openapi.json").json()["paths"]["/v1/models/{name}/predict"]["post"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "gradcam" in page.text
    text = client.get("/metrics").text
    assert 'meddx_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert "meddx_http_request_duration_seconds_bucket" in text and "meddx_queue_depth 0" in text
    assert "access-control-allow-origin" not in client.get("/v1/models", headers={"Origin": "http://x"}).headers


def test_predict_formats_match_predictor(client, serve_run, tmp_path):
    """PNG, 16-bit PNG, .npy and DICOM uploads: the same dict ``Predictor.predict_files`` gives (plus runtime)."""
    from pydicom.data import get_testdata_file

    from meddx.engine.predict import Predictor

    ref = reference_image()
    (tmp_path / "ref.png").write_bytes(_png(ref))
    expected = Predictor(serve_run, device="cpu", runtime="torch").predict_files([tmp_path / "ref.png"])[0]
    for name, data in {"ref.png": _png(ref), "ref16.png": _png(ref.astype(np.uint16) * 257),
                       "ref.npy": _npy(ref), "no_suffix": _png(ref)}.items():
        r = _post(client, data, name)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["file"] == name and got["runtime"] == "torch" and got["notices"] == []
        assert got["label"] == expected["label"] and got["probabilities"] == pytest.approx(expected["probabilities"])
    ct = Path(get_testdata_file("CT_small.dcm"))  # 128x128 16-bit CT: resized to 28x28 with a notice
    got = _post(client, ct.read_bytes(), "CT_small.dcm").json()
    want = Predictor(serve_run, device="cpu", runtime="torch").predict_files([ct])[0]
    assert got["probabilities"] == pytest.approx(want["probabilities"])
    assert any("resized 128x128 to the model's 28x28" in n and n.startswith("upload:") for n in got["notices"])


def test_file_name_never_becomes_a_path(client):
    r = _post(client, _png(reference_image()), "../../etc/passwd\x00.npz")
    label = r.json()["file"]  # a display label: the last component, printable characters only
    assert r.status_code == 200 and label.startswith("passwd") and label.endswith(".npz") and "/" not in label
    # a PNG sent as .npy, an .npy sent as .png: the bytes decide
    assert _post(client, _png(reference_image()), "x.npy").status_code == 200
    assert _post(client, _npy(reference_image()), "x.png").status_code == 200


def test_explain_overlay(client):
    from PIL import Image

    r = _post(client, _png(reference_image()), query="?explain=saliency")
    assert r.status_code == 200, r.text
    ex = r.json()["explanation"]
    assert ex["method"] == "saliency" and ex["target"] == r.json()["label"]
    for key in ("overlay_png", "heatmap_png", "image_png"):
        im = Image.open(io.BytesIO(base64.b64decode(ex[key])))
        assert im.format == "PNG" and min(im.size) >= 28
    assert Image.open(io.BytesIO(base64.b64decode(ex["heatmap_png"]))).mode == "RGBA"
    detail = _one_line_4xx(_post(client, _png(reference_image()), query="?explain=nonsense"))
    assert "gradcam" in detail


def test_bad_requests_are_one_line_4xx(client):
    assert "file" in _one_line_4xx(client.post("/v1/models/tiny/predict"))
    assert _post(client, b"hello, not an image" * 3).status_code == 415
    assert "truncated" in _one_line_4xx(_post(client, _png(reference_image())[:60]))
    assert _one_line_4xx(_post(client, b""))
    assert "outside the model's 8-bit input range" in _one_line_4xx(_post(client, _npy(-np.ones((28, 28)))))
    assert client.post("/v1/models/other/predict", files={"file": ("a.png", b"x")}).status_code == 404


def test_token(serve_run):
    with TestClient(create_app([serve_run], runtime="torch", token="s3cret")) as c:
        assert c.get("/v1/models").status_code == 401
        assert c.get("/metrics").status_code == 401
        r = _post(c, _png(reference_image()))
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["detail"]
        assert _post(c, _png(reference_image()), headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": "Bearer s3cret"}
        assert _post(c, _png(reference_image()), headers=ok).status_code == 200
        assert c.get("/v1/models", headers=ok).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200


def test_upload_cap_queue_and_timeout(serve_run):
    big = _png(np.random.default_rng(0).integers(0, 255, (200, 200), dtype=np.uint8))
    with TestClient(create_app([serve_run], runtime="torch", limits=Limits(max_upload_bytes=2000))) as c:
        assert "too large" in _one_line_4xx(_post(c, big)) and _post(c, big).status_code == 413
        # a body that claims less than it sends (no reliable Content-Length): the streamed bytes are counted
        r = c.post("/v1/models/tiny/predict", content=(b"x" * 50_000 for _ in range(4)),
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
        assert r.status_code == 413
        assert _post(c, _png(reference_image())).status_code == 200
    with TestClient(create_app([serve_run], runtime="torch", limits=Limits(max_queue=0))) as c:
        r = _post(c, _png(reference_image()))
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "meddx_rejected_queue_full_total 1" in c.get("/metrics").text
    app = create_app([serve_run], runtime="torch", limits=Limits(timeout_s=0.3))
    predictor = app.state.served["tiny"].predictor
    slow = predictor.predict_tensor
    predictor.predict_tensor = lambda x: (time.sleep(1.0), slow(x))[1]
    with TestClient(app) as c:
        r = _post(c, _png(reference_image()))
        assert r.status_code == 504 and "longer than 0.3 s" in r.json()["detail"]
        assert c.get("/healthz").status_code == 200


def test_micro_batching_merges_concurrent_requests(serve_run):
    import httpx

    app = create_app([serve_run], runtime="torch", limits=Limits(max_batch=32, max_wait_ms=300))
    images = [reference_image(seed) for seed in range(12)]

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
                rs = await asyncio.gather(*[c.post("/v1/models/tiny/predict", files={"file": ("a.png", _png(im))})
                                            for im in images])
                single = [(await c.post("/v1/models/tiny/predict", files={"file": ("a.png", _png(im))})).json()
                          for im in images[:3]]
                return rs, single, app.state.batchers["tiny"]

    rs, single, batcher = asyncio.run(main())
    assert all(r.status_code == 200 for r in rs)
    assert batcher.items == 15 and batcher.batches <= 3 + 6  # 12 concurrent requests in at most a few calls
    for r, s in zip(rs, single):
        assert r.json()["probabilities"] == pytest.approx(s["probabilities"], abs=1e-5)


def test_fuzz_corpus_uploads(client, tmp_path):
    """>= 200 files: broken ones 4xx with one line, valid ones 200, zero 5xx, the server healthy afterwards."""
    cases, _ = make_corpus(tmp_path / "corpus")
    files = [(p, e) for p, e in cases if p.is_file() and not p.is_symlink() and p.stat().st_mode & 0o444]
    before = client.get("/metrics").text
    statuses = {}
    for path, expect in files:
        r = _post(client, path.read_bytes(), path.name)
        statuses[path.name] = r.status_code
        assert r.status_code < 500, (path.name, r.text[:300])
        if expect == "ok":
            assert r.status_code == 200, (path.name, r.text[:300])
        elif expect == "error" or r.status_code != 200:
            _one_line_4xx(r)
    assert len(files) >= 200 and sum(400 <= s < 500 for s in statuses.values()) >= 150
    assert 'status="500"' not in before and 'status="500"' not in client.get("/metrics").text
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").json()["ready"]
    assert _post(client, _png(reference_image())).status_code == 200


def test_detection_run_returns_boxes_and_picture(tmp_path):
    from PIL import Image

    from meddx.data.detection import load_phantom_boxes
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    data = load_phantom_boxes(64, splits={"train": 16, "val": 4, "test": 4})
    run = fit(TrainConfig(data="phantom", task="detection", size=64, epochs=1, batch_size=16, progress=False,
                          out=str(tmp_path), name="det2d", device="cpu"), data=data).path
    with TestClient(create_app([run], runtime="auto"), raise_server_exceptions=False) as c:
        card = c.get("/v1/models/det2d").json()
        assert card["task"] == "detection" and card["test_metrics"] is None
        img = (data.test.images[0].numpy()[0]).astype(np.uint8)
        r = c.post("/v1/models/det2d/predict", files={"file": ("slice.png", _png(img))})
        assert r.status_code == 200, r.text
        res = r.json()
        assert res["file"] == "slice.png" and isinstance(res["detections"], list) and "image_with_boxes" not in res
        assert Image.open(io.BytesIO(base64.b64decode(res["image_with_boxes_png"]))).size == (64, 64)
        assert "heat-map explanations are for classification" in _one_line_4xx(
            c.post("/v1/models/det2d/predict?explain=gradcam", files={"file": ("s.png", _png(img))}))


def test_cli_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from meddx.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["serve", str(tmp_path / "missing")])
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output
    r = runner.invoke(app, ["serve", str(tmp_path), "--runtime", "tpu"])
    assert r.exit_code == 2 and "runtime must be auto" in r.output


def _zip(members: dict[str, bytes]) -> bytes:
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, body in members.items():
            z.writestr(name, body)
    return buf.getvalue()


def test_a_zipped_dicom_series_becomes_a_volume_with_its_geometry(tmp_path):
    """A zip of the real 20-slice CT series: a temporary folder meddx names itself (a member called
    ``../../x.dcm`` stays inside it), read by the volume reader sorted by position with its spacing."""
    from meddx.data.volumes import read_volume
    from meddx.serve.uploads import upload_file

    from .conftest import shared_path

    series = sorted(p for p in shared_path("totalsegmentator_examples", "example_ct_dicom").rglob("*") if p.is_file())
    members = {f"../../{i}/{p.name}": p.read_bytes() for i, p in enumerate(series)} | {"README.txt": b"notes"}
    reference = read_volume(series[0].parent)
    with upload_file(_zip(members), folder=str(tmp_path)) as path:
        assert path.is_dir() and path.parent == tmp_path and len(list(path.iterdir())) == len(series)
        vol = read_volume(path)
        assert vol.shape == reference.shape and np.allclose(vol.spacing, reference.spacing)
        assert np.array_equal(vol.array, reference.array)
    assert list(tmp_path.iterdir()) == []  # removed afterwards, nothing written beside it


def test_zip_uploads_that_are_no_series_are_4xx(client, monkeypatch):
    from meddx.serve import uploads

    assert "no DICOM file" in _one_line_4xx(_post(client, _zip({"a.txt": b"hello"}), "s.zip"))
    monkeypatch.setattr(uploads, "MAX_SERIES_BYTES", 1000)  # a zip bomb: sizes from the zip directory
    assert "at most" in _one_line_4xx(_post(client, _zip({"a.dcm": bytes(5000)}), "s.zip"))
    # a series to a 2D model: one line, not a crash
    from pydicom.data import get_testdata_file

    ct = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    assert _one_line_4xx(_post(client, _zip({"1.dcm": ct, "2.dcm": ct}), "s.zip"))
