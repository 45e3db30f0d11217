"""A run folder written by the "format 1" code (checked in under tests/data, built by tests/make_format1_run.py)
must keep loading and give the numbers recorded when it was made: ``meddx evaluate`` / ``evaluate_run`` and
``Predictor.predict_files`` / ``meddx predict`` on a scratch copy (the checked-in folder is never written to).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meddx.cli import app
from meddx.engine.checkpoint import read_checkpoint
from meddx.engine.evaluate import evaluate_run
from meddx.engine.predict import Predictor

DATA = Path(__file__).resolve().parent / "data"
EXPECTED = json.loads((DATA / "format1_expected.json").read_text())
IMAGES = [DATA / "format1_images" / name for name in EXPECTED["predictions"]]
# the folder as the format-1 code wrote it; a test that changes these files defeats the purpose
FORMAT1_KEYS = {"format", "model", "task", "task_kind", "classes", "num_outputs", "in_channels", "input_size",
                "image_shape", "spatial_dims", "normalization", "modality", "dataset", "epoch", "monitor_value",
                "input_dtype", "spacing", "patch"}


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """A copy of the run and its data in a scratch folder, which is also the working directory (the run's
    config names its data by the relative path ``format1_data.npz``)."""
    before = _digest(DATA / "format1_run")
    shutil.copytree(DATA / "format1_run", tmp_path / "format1_run")
    shutil.copyfile(DATA / "format1_data.npz", tmp_path / "format1_data.npz")
    monkeypatch.chdir(tmp_path)
    yield tmp_path / "format1_run"
    assert _digest(DATA / "format1_run") == before


def test_checked_in_folder_is_format1():
    files = sorted(p.name for p in (DATA / "format1_run").iterdir())
    assert files == ["best.safetensors", "config.json", "data.json", "history.jsonl"]
    from safetensors import safe_open

    with safe_open(str(DATA / "format1_run" / "best.safetensors"), framework="pt") as f:
        raw = json.loads(f.metadata()["meddx"])
    assert raw["format"] == 1 and set(raw) == FORMAT1_KEYS
    # the reader upgrades it to today's words
    _, meta, _ = read_checkpoint(DATA / "format1_run" / "best.safetensors")
    assert meta["format"] == 2 and meta["kind"] == raw["task_kind"] and "task_kind" not in meta
    assert meta["intensity_mapping"] is None
    assert {k: v for k, v in meta.items() if k not in ("format", "kind", "intensity_mapping")} == {
        k: v for k, v in raw.items() if k not in ("format", "task_kind")}
    assert sum(p.stat().st_size for p in (DATA / "format1_run").iterdir()) < 300_000


def _check_metrics(m):
    want = EXPECTED["metrics"]
    assert m["kind"] == want["task"] and m["task"] == "classification"  # format 1 wrote the kind as "task"
    for key in ("n", "epoch", "checkpoint", "dataset", "model"):
        assert m[key] == want[key], key
    for key in ("acc", "auc", "loss"):
        assert m[key] == pytest.approx(want[key], abs=1e-6), key
    for key in ("acc_ci", "auc_ci"):
        assert m[key] == pytest.approx(want[key], abs=1e-6), key


def test_evaluate_run_gives_the_recorded_numbers(old_run):
    m = evaluate_run(old_run, n_bootstrap=EXPECTED["n_bootstrap"], device="cpu", report=False)
    _check_metrics(m)
    assert json.loads((old_run / "metrics.json").read_text())["auc"] == m["auc"]


def test_predictor_gives_the_recorded_probabilities(old_run):
    res = Predictor(old_run, device="cpu").predict_files(IMAGES)
    for r, path in zip(res, IMAGES):
        want = EXPECTED["predictions"][path.name]
        assert r["label"] == want["label"]
        assert r["probabilities"].keys() == want["probabilities"].keys()
        for k, v in want["probabilities"].items():
            assert r["probabilities"][k] == pytest.approx(v, abs=1e-6), (path.name, k)
    # the checkpoint file alone (no run folder around it) loads the same model
    alone = Predictor(old_run / "best.safetensors", device="cpu").predict_files(IMAGES[:1])
    assert alone[0]["probabilities"] == pytest.approx(res[0]["probabilities"], abs=1e-7)


def test_cli_evaluate_and_predict_on_the_old_folder(old_run):
    runner = CliRunner()
    r = runner.invoke(app, ["evaluate", str(old_run), "--bootstrap", str(EXPECTED["n_bootstrap"])],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    _check_metrics(json.loads((old_run / "metrics.json").read_text()))
    assert (old_run / "report.html").is_file()
    r = runner.invoke(app, ["predict", str(old_run), *map(str, IMAGES), "--json", "--device", "cpu"],
                      catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for row, path in zip(json.loads(r.output), IMAGES):
        want = EXPECTED["predictions"][path.name]["probabilities"]
        assert row["probabilities"] == pytest.approx(want, abs=1e-6)
