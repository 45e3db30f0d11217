"""Engine: checkpoints, resume after a crash, reproducibility, early stopping."""

from __future__ import annotations

import json

import pytest
import torch

from meddx.engine import fit as fit_module
from meddx.engine import loop as loop_module
from meddx.engine.checkpoint import load_model, read_checkpoint, save_checkpoint
from meddx.engine.config import TrainConfig, auto_epochs
from meddx.engine.fit import fit
from meddx.errors import Interrupted, MeddxError
from meddx.models import create_model


def _cfg(tmp_path, data, **kw):
    base = dict(
        data=str(data),
        model="seednet",
        epochs=3,
        batch_size=16,
        out=str(tmp_path / "runs"),
        progress=False,
        augment="none",
    )
    return TrainConfig(**(base | kw))


def test_checkpoint_round_trip_is_exact_and_atomic(tmp_path):
    m = create_model("seednet", 1, 2, 28)
    meta = {"model": "seednet", "in_channels": 1, "num_outputs": 2, "input_size": 28, "classes": ["a", "b"]}
    opt = torch.optim.AdamW(m.parameters())
    m(torch.randn(4, 1, 28, 28)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp_path / "c.safetensors", m, meta, opt, {"best": 0.5})
    assert [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]  # no temp files left behind
    tensors, meta2, state = read_checkpoint(path)
    assert meta2 == meta and state["extra"] == {"best": 0.5}
    m2, _ = load_model(path)
    for (k, v), v2 in zip(m.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v, v2), k


def test_corrupt_and_foreign_checkpoints(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 20)
    with pytest.raises(MeddxError, match="not a readable safetensors"):
        read_checkpoint(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(MeddxError, match="no meddx metadata"):
        read_checkpoint(tmp_path / "plain.safetensors")


def test_run_folder_contents_and_reproducibility(tmp_path, fake_npz):
    a = fit(_cfg(tmp_path, fake_npz, name="a"))
    b = fit(_cfg(tmp_path, fake_npz, name="b"))
    for f in ("config.json", "data.json", "history.jsonl", "last.safetensors", "best.safetensors"):
        assert (a.path / f).is_file(), f
    ha, hb = a.read_history(), b.read_history()
    assert len(ha) == 3 and [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]
    _, meta, _ = read_checkpoint(a.best)
    assert meta["classes"] == ["0", "1"] and meta["normalization"]["scale"] == pytest.approx(1 / 255)
    assert json.loads((a.path / "config.json").read_text())["model"] == "seednet"


def test_resume_after_crash_matches_uninterrupted(tmp_path, fake_npz, monkeypatch):
    full = fit(_cfg(tmp_path, fake_npz, name="full", epochs=4, augment="auto", ema_decay=0.9))
    real = loop_module.train_one_epoch
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "train_one_epoch", crashing)
    with pytest.raises(Interrupted, match="epoch 2 is saved in"):
        fit(_cfg(tmp_path, fake_npz, name="crash", epochs=4, augment="auto", ema_decay=0.9))
    monkeypatch.setattr(loop_module, "train_one_epoch", real)
    crashed = fit_module.RunDir.open(tmp_path / "runs" / "crash")
    assert len(crashed.read_history()) == 2
    resumed = fit(TrainConfig(), resume=crashed.path)
    assert [r["train_loss"] for r in resumed.read_history()] == [r["train_loss"] for r in full.read_history()]
    t_full, _, _ = read_checkpoint(full.last)
    t_res, _, _ = read_checkpoint(resumed.last)
    for k in t_full:
        assert torch.equal(t_full[k], t_res[k]), k


def test_early_stopping_and_time_budget(tmp_path, fake_npz):
    run = fit(_cfg(tmp_path, fake_npz, name="es", epochs=30, patience=2, lr=1e-9))
    assert len(run.read_history()) < 30


def test_auto_epochs_and_config_validation():
    assert auto_epochs(546) == 100 and auto_epochs(4708) == 64 and auto_epochs(100_000) == 15
    with pytest.raises(MeddxError, match="optimizer must be adamw or sgd"):
        TrainConfig(optimizer="adam").validate()
    with pytest.raises(MeddxError, match="unknown config keys: bogus"):
        TrainConfig.from_dict({"bogus": 1})


def test_model_checkpoint_follows_select(tmp_path, fake_npz):
    last = fit(_cfg(tmp_path, fake_npz, name="l", epochs=2, ema_decay=0.9, select="last"))
    best = fit(_cfg(tmp_path, fake_npz, name="b", epochs=2, select="best"))
    assert last.model_checkpoint().name == "last.safetensors"
    assert best.model_checkpoint().name == "best.safetensors"
    tensors, _, state = read_checkpoint(last.last)
    assert any(k.startswith("live.") for k in tensors) and state["extra"]["ema_n"] > 0
    with pytest.raises(MeddxError, match="select must be last or best"):
        TrainConfig(select="worst").validate()


def test_time_budget_shortens_schedule_and_finishes_decay(tmp_path, fake_npz, monkeypatch):
    clock = {"t": 0.0}
    monkeypatch.setattr(fit_module.recipe.time, "time", lambda: clock["t"])
    real = loop_module.train_one_epoch

    def slow_epoch(*a, **k):
        clock["t"] += 60.0  # every epoch "takes" a minute
        return real(*a, **k)

    monkeypatch.setattr(loop_module, "train_one_epoch", slow_epoch)
    run = fit(_cfg(tmp_path, fake_npz, name="budget", epochs=20, max_minutes=4))
    hist = run.read_history()
    assert len(hist) == 4
    assert hist[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine decay completed inside the budget


def test_epochs_within_budget():
    from meddx.engine.recipe import epochs_within

    assert epochs_within(600, 60, 100, 3) == 10
    assert epochs_within(600, 5, 100, 3) == 100
    assert epochs_within(60, 60, 100, 3) == 3  # over budget: the epoch after the last one run still anneals
