"""End to end through the CLI: phantom train -> evaluate -> report -> predict, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from meddx.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    r = invoke("train", "--data", "phantom", "--size", "32", "--epochs", "2", "--model", "seednet",
               "--out", out, "--name", "ph")
    assert r.exit_code == 0, r.output
    return out / "ph"


def test_train_evaluate_report_predict(phantom_run, tmp_path):
    metrics = json.loads((phantom_run / "metrics.json").read_text())
    assert 0.0 <= metrics["acc"] <= 1.0 and 0.0 <= metrics["auc"] <= 1.0 and metrics["n"] == 800
    html = (phantom_run / "report.html").read_text()
    assert f"{metrics['auc']:.3f}" in html and "data:image/png;base64," in html
    r = invoke("evaluate", phantom_run, "--bootstrap", "50")
    assert r.exit_code == 0 and "AUC" in r.output
    img = tmp_path / "slice.png"
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(img)
    npy = tmp_path / "slice.npy"
    np.save(npy, np.full((48, 48), 90.0, np.float32))  # resized to the model's 32 px
    r = invoke("predict", phantom_run, img, npy, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert [x["label"] for x in res][0] in ("no nodule", "nodule")
    assert abs(sum(res[0]["probabilities"].values()) - 1) < 1e-5
    assert res[0]["probabilities"] == res[1]["probabilities"]  # same content, same answer
    r = invoke("predict", phantom_run, img)
    assert r.exit_code == 0 and "slice.png" in r.output


def test_models_and_datasets_commands():
    r = invoke("models")
    assert r.exit_code == 0 and "resnet18_slim" in r.output and "efficientnet_b0" in r.output
    r = invoke("datasets")
    assert r.exit_code == 0 and "chestmnist" in r.output and "phantom" in r.output


@pytest.mark.parametrize("make,expect", [
    (lambda p: p.write_bytes(b"\x89PNG\r\n garbage"), "not a readable image"),
    (lambda p: None, "file not found"),
    (lambda p: Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(p), None),  # RGB -> grey is converted
])
def test_predict_bad_images(phantom_run, tmp_path, make, expect):
    p = tmp_path / "x.png"
    make(p)
    r = invoke("predict", phantom_run, p)
    if expect is None:
        assert r.exit_code == 0
        return
    assert r.exit_code == 2
    line = r.output.strip()
    assert line.startswith("error: ") and str(p) in line and expect in line and "\n" not in line


@pytest.mark.parametrize("arr,expect", [
    (np.full((32, 32), np.nan, np.float32), "NaN"),
    (np.zeros((2, 32, 32), np.float32), "has 2 channels"),
    (np.full((32, 32), 1000.0, np.float32), "outside the model's 8-bit input range"),
])
def test_predict_bad_arrays(phantom_run, tmp_path, arr, expect):
    p = tmp_path / "x.npy"
    np.save(p, arr)
    r = invoke("predict", phantom_run, p)
    assert r.exit_code == 2 and expect in r.output and str(p) in r.output


def test_train_bad_inputs(tmp_path):
    r = invoke("train", "--data", tmp_path / "missing.npz", "--out", tmp_path)
    assert r.exit_code == 2 and "missing.npz" in r.output and "error:" in r.output
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"nope")
    r = invoke("train", "--data", bad, "--out", tmp_path)
    assert r.exit_code == 2 and "not a readable .npz" in r.output
    r = invoke("train", "--data", "phantom", "--model", "nosuchnet", "--out", tmp_path, "--epochs", "1")
    assert r.exit_code == 2 and "unknown model 'nosuchnet'" in r.output
    r = invoke("evaluate", tmp_path)
    assert r.exit_code == 2 and "not a meddx run folder" in r.output


def test_predict_jpeg_and_tensorboard_logging(phantom_run, tmp_path, fake_npz):
    jpg = tmp_path / "slice.jpg"
    Image.fromarray(np.full((40, 40, 3), 120, np.uint8)).save(jpg, quality=90)
    r = invoke("predict", phantom_run, jpg, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)[0]["file"].endswith("slice.jpg")
    r = invoke("train", "--data", fake_npz, "--model", "seednet", "--epochs", "1", "--out", tmp_path, "--name", "tb",
               "--tensorboard", "--no-evaluate")
    assert r.exit_code == 0, r.output
    assert list((tmp_path / "tb" / "tensorboard").glob("events.out.tfevents.*"))
