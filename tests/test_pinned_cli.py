"""CLI behaviour pinned: ``meddx demo``, ``train --resume`` after an interrupt, exit code 130 on Ctrl-C.

Internal names used: ``meddx.data.sources.PHANTOM_SPLITS`` (shrunk so that the demo runs in seconds),
``meddx.engine.fit.fit`` and ``meddx.engine.loop.train_one_epoch`` (replaced to simulate Ctrl-C).
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from meddx.cli import app
from meddx.engine import fit as fit_module
from meddx.engine import loop as loop_module

runner = CliRunner()


FORMAT1 = __import__("pathlib").Path(__file__).resolve().parent / "data"
DATA_RUN = FORMAT1 / "format1_run"
DATA_IMG = sorted((FORMAT1 / "format1_images").iterdir())[0]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_demo_trains_evaluates_and_reports(tmp_path, monkeypatch):
    from meddx.data import sources

    monkeypatch.setattr(sources, "PHANTOM_SPLITS", {"train": 128, "val": 64, "test": 96})
    stale = tmp_path / "demo-phantom-seed0"
    stale.mkdir()
    (stale / "leftover.txt").write_text("from an earlier demo")
    r = invoke("demo", "--epochs", "1", "--out", tmp_path)
    assert r.exit_code == 0, r.output
    run = tmp_path / "demo-phantom-seed0"
    assert not (run / "leftover.txt").exists()  # the demo starts from a clean folder
    cfg = json.loads((run / "config.json").read_text())
    assert (cfg["data"], cfg["epochs"], cfg["seed"], cfg["model"]) == ("phantom", 1, 0, "resnet18_slim")
    assert len((run / "history.jsonl").read_text().splitlines()) == 1
    m = json.loads((run / "metrics.json").read_text())
    assert m["n"] == 96 and m["dataset"] == "phantom" and m["kind"] == "binary-class" and m["task"] == "classification"
    assert f"AUC {m['auc']:.4f}" in r.output and "report.html" in r.output
    assert (run / "report.html").stat().st_size > 10_000


def test_keyboard_interrupt_exits_130(tmp_path, monkeypatch, fake_npz):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fit_module, "fit", interrupted)
    r = invoke("train", "--data", fake_npz, "--model", "seednet", "--out", tmp_path, "--epochs", "1")
    assert r.exit_code == 130 and "interrupted" in r.output


def test_interrupt_then_resume_finishes_the_run(tmp_path, monkeypatch, fake_npz):
    real = loop_module.train_one_epoch
    calls = {"n": 0}

    def ctrl_c_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train_one_epoch", ctrl_c_in_second_epoch)
    r = invoke("train", "--data", fake_npz, "--model", "seednet", "--epochs", "3", "--batch-size", "16",
               "--augment", "none", "--select", "last", "--out", tmp_path, "--name", "r")
    assert r.exit_code == 130, r.output
    run = tmp_path / "r"
    assert f"epoch 1 is saved in {run / 'last.safetensors'}" in r.output and f"--resume {run}" in r.output
    assert [json.loads(x)["epoch"] for x in (run / "history.jsonl").read_text().splitlines()] == [0]
    assert not (run / "metrics.json").exists()
    monkeypatch.setattr(loop_module, "train_one_epoch", real)
    r = invoke("train", "--resume", run)
    assert r.exit_code == 0, r.output
    hist = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [0, 1, 2]
    m = json.loads((run / "metrics.json").read_text())
    assert m["epoch"] == 2 and m["checkpoint"] == "last.safetensors"
    r = invoke("train", "--resume", run)  # nothing left to do: one-line error
    assert r.exit_code == 2 and "nothing to resume" in r.output


@pytest.mark.parametrize("args,message", [
    (("train", "--resume", "{tmp}/nowhere"), "not a meddx run folder"),
    (("evaluate", "{tmp}"), "not a meddx run folder"),
    (("evaluate", "{tmp}", "--split", "holdout"), "split must be train, val or test"),  # options before files
    (("evaluate", "{tmp}", "--bootstrap", "-5"), "bootstrap resamples must be >= 0, got -5"),
])
def test_resume_and_evaluate_of_a_missing_run(tmp_path, args, message):
    r = invoke(*[a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and message in r.output


def test_interrupt_in_the_first_epoch_says_nothing_is_saved_and_resume_restarts(tmp_path, monkeypatch, fake_npz):
    real = loop_module.train_one_epoch

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop_module, "train_one_epoch", ctrl_c)
    r = invoke("train", "--data", fake_npz, "--model", "seednet", "--epochs", "2", "--batch-size", "16",
               "--augment", "none", "--out", tmp_path, "--name", "r")
    run = tmp_path / "r"
    assert r.exit_code == 130 and "no checkpoint was saved" in r.output and "--resume" in r.output
    assert not (run / "last.safetensors").exists()
    monkeypatch.setattr(loop_module, "train_one_epoch", real)
    r = invoke("train", "--resume", run, "--no-evaluate")
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["epoch"] for x in (run / "history.jsonl").read_text().splitlines()] == [0, 1]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
@pytest.mark.parametrize("command", ["train", "predict"])
def test_device_cuda_without_a_gpu_is_one_line(tmp_path, fake_npz, command):
    args = (["train", "--data", fake_npz, "--out", tmp_path, "--epochs", "1"] if command == "train"
            else ["predict", DATA_RUN, DATA_IMG])
    r = invoke(*args, "--device", "cuda")
    assert r.exit_code == 2 and "device 'cuda' is not available here" in r.output and "Traceback" not in r.output
