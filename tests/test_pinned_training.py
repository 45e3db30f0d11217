"""Training options pinned by value: class weights, label smoothing, SGD, warm-up + multistep learning rates,
early stopping's epoch count and the best checkpoint's epoch.

Losses are checked end to end: the validation loss that ``fit`` records in ``history.jsonl`` is recomputed by
hand from the saved model's validation probabilities (weighted / smoothed cross-entropy written out).
Internal names used: ``meddx.engine.fit.build_optimizer``, ``meddx.tasks.classification.ClassificationTask``
(``validate`` is replaced by a scripted one for early stopping), ``meddx.tasks.task_for_training``,
``meddx.engine.checkpoint.read_checkpoint`` (state JSON ``optim.param_groups``).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from meddx.data import load_data
from meddx.engine.checkpoint import read_checkpoint
from meddx.engine.config import TrainConfig
from meddx.engine.evaluate import evaluate_run
from meddx.engine.fit import build_optimizer, fit
from meddx.engine.predict import Predictor
from meddx.models import create_model
from meddx.tasks import task_for_training

TRAIN_COUNTS = (30, 12, 6)  # imbalanced: n = 48, k = 3


@pytest.fixture(scope="module")
def imbalanced_npz(tmp_path_factory):
    """MedMNIST layout, 3 classes, train counts 30/12/6 (val 8/6/6, test 4/4/4), class k = square at k's place."""
    rng = np.random.default_rng(5)
    arrays = {}
    for split, counts in (("train", TRAIN_COUNTS), ("val", (8, 6, 6)), ("test", (4, 4, 4))):
        y = np.repeat(np.arange(3), counts)
        rng.shuffle(y)
        x = rng.integers(0, 60, size=(len(y), 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            x[i, k * 7:k * 7 + 8, k * 5:k * 5 + 8] = 200
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None].astype(np.uint8)
    path = tmp_path_factory.mktemp("imb") / "imbalanced.npz"
    np.savez_compressed(path, **arrays)
    return path


def _cfg(tmp_path, data, **kw):
    base = dict(data=str(data), model="seednet", epochs=1, batch_size=16, out=str(tmp_path / "runs"),
                progress=False, augment="none", label_smoothing=0.0, select="last")
    return TrainConfig(**(base | kw))


def _val_log_probs(run, data):
    probs = Predictor(run.path).predict_tensor(data.val.images)  # last.safetensors: the model after the epoch
    return np.log(probs.astype(np.float64)), data.val.labels.numpy()


# --------------------------------------------------------------------------- losses


def test_class_weights_are_n_over_k_count_and_weight_the_loss(tmp_path, imbalanced_npz):
    cfg = _cfg(tmp_path, imbalanced_npz, class_weights=True, name="cw")
    data = load_data(str(imbalanced_npz))
    expected = torch.tensor([48 / (3 * 30), 48 / (3 * 12), 48 / (3 * 6)])
    task = task_for_training(cfg, data)
    assert torch.allclose(task.class_weights, expected)
    assert task_for_training(_cfg(tmp_path, imbalanced_npz), data).class_weights is None
    run = fit(cfg)
    logp, y = _val_log_probs(run, data)
    w = expected.numpy()[y]
    weighted = float((w * -logp[np.arange(len(y)), y]).sum() / w.sum())
    plain = float(-logp[np.arange(len(y)), y].mean())
    recorded = run.read_history()[0]["val_loss"]
    assert recorded == pytest.approx(weighted, rel=1e-5)
    assert abs(weighted - plain) > 1e-4  # the weights made a difference


def test_multilabel_class_weights_are_bce_pos_weight():
    from meddx.tasks.classification import MULTI_LABEL, balanced_class_weights

    labels = torch.tensor([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 0, 0]], dtype=torch.float32)
    assert balanced_class_weights(labels, MULTI_LABEL, 3).tolist() == pytest.approx([1 / 3, 3.0, 3.0])  # neg/pos


def test_label_smoothing_loss_by_hand(tmp_path, imbalanced_npz):
    eps = 0.2
    run = fit(_cfg(tmp_path, imbalanced_npz, label_smoothing=eps, name="ls"))
    logp, y = _val_log_probs(run, load_data(str(imbalanced_npz)))
    nll = -logp[np.arange(len(y)), y]
    smoothed = float(((1 - eps) * nll + eps * (-logp).mean(1)).mean())
    assert run.read_history()[0]["val_loss"] == pytest.approx(smoothed, rel=1e-5)
    assert abs(smoothed - float(nll.mean())) > 1e-3


# --------------------------------------------------------------------------- optimiser and learning rates


def test_sgd_optimizer_settings_reach_the_checkpoint(tmp_path, imbalanced_npz):
    run = fit(_cfg(tmp_path, imbalanced_npz, optimizer="sgd", name="sgd"))
    _, _, state = read_checkpoint(run.last)
    groups = state["optim"]["param_groups"]
    assert len(groups) == 2
    for g, wd in zip(groups, (0.05, 0.0)):  # no weight decay on biases (and norms)
        assert g["momentum"] == 0.9 and g["nesterov"] is True and g["initial_lr"] == 0.05
        assert g["weight_decay"] == wd and g["dampening"] == 0
    model = create_model("seednet", 1, 3, 28)
    opt, _ = build_optimizer(TrainConfig(optimizer="sgd"), model, 10, 2)
    assert type(opt) is torch.optim.SGD
    opt, _ = build_optimizer(TrainConfig(), model, 10, 2)
    assert type(opt) is torch.optim.AdamW and opt.param_groups[0]["lr"] == pytest.approx(2e-3 / 10)  # warm-up


def _lrs(cfg, steps_per_epoch, epochs, at):
    model = torch.nn.Linear(2, 2)
    opt, sched = build_optimizer(cfg, model, steps_per_epoch, epochs)
    out = {}
    for step in range(max(at) + 1):
        if step in at:
            out[step] = opt.param_groups[0]["lr"]
        opt.step()
        sched.step()
    return out


def test_warmup_then_multistep_lr_at_given_steps():
    # 10 steps/epoch, 4 epochs, 1 warm-up epoch: linear warm-up over steps 0-9, then x0.1 at 50% and 75% of the
    # 30 post-warm-up steps (steps 25 and 33)
    got = _lrs(TrainConfig(lr=0.1, schedule="multistep", warmup_epochs=1), 10, 4, [0, 4, 9, 10, 24, 25, 32, 33, 39])
    want = {0: 0.01, 4: 0.05, 9: 0.1, 10: 0.1, 24: 0.1, 25: 0.01, 32: 0.01, 33: 0.001, 39: 0.001}
    assert got == pytest.approx(want)


def test_warmup_then_cosine_and_warmup_capped_at_half():
    got = _lrs(TrainConfig(lr=0.1, warmup_epochs=1), 10, 4, [0, 9, 10, 25, 39])
    want = {0: 0.01, 9: 0.1, 10: 0.1, 25: 0.05, 39: 0.1 * 0.5 * (1 + math.cos(math.pi * 29 / 30))}
    assert got == pytest.approx(want)
    # 3 warm-up epochs of a 4-epoch run: warm-up is capped at half of the 40 steps
    got = _lrs(TrainConfig(lr=0.1, schedule="multistep", warmup_epochs=3), 10, 4, [0, 19, 20, 29, 30, 35])
    assert got == pytest.approx({0: 0.005, 19: 0.1, 20: 0.1, 29: 0.1, 30: 0.01, 35: 0.001})


def test_history_lr_follows_warmup_and_multistep(tmp_path, imbalanced_npz):
    # 48 images / batch 16 = 3 steps per epoch; 4 epochs = 12 steps; 2 warm-up epochs = 6 steps
    run = fit(_cfg(tmp_path, imbalanced_npz, epochs=4, lr=0.01, schedule="multistep", warmup_epochs=2, name="ms"))
    lrs = [r["lr"] for r in run.read_history()]
    assert lrs == pytest.approx([0.01 * 4 / 6, 0.01, 0.001, 0.0001])


# --------------------------------------------------------------------------- early stopping


def test_early_stopping_epoch_count_and_best_checkpoint(tmp_path, imbalanced_npz, monkeypatch):
    from meddx.tasks.classification import ClassificationTask

    scripted = iter([0.5, float("nan"), 0.7, 0.6, 0.7, 0.95, 0.99, 0.99])

    def validate(self, model, split, normalize, **kw):
        return {"loss": 0.1, "auc": next(scripted), "acc": 0.5}

    monkeypatch.setattr(ClassificationTask, "validate", validate)
    run = fit(_cfg(tmp_path, imbalanced_npz, epochs=8, patience=2, select="best", name="es"))
    hist = run.read_history()
    # epoch 0 best (0.5); 1 NaN: stale 1; 2 best (0.7); 3 stale 1; 4 ties 0.7 (no gain): stale 2 -> stop
    assert [r["epoch"] for r in hist] == [0, 1, 2, 3, 4]
    assert read_checkpoint(run.best)[1]["epoch"] == 2 and read_checkpoint(run.best)[1]["monitor_value"] == 0.7
    assert read_checkpoint(run.last)[1]["epoch"] == 4
    monkeypatch.undo()
    m = evaluate_run(run.path, n_bootstrap=0, report=False)
    assert m["checkpoint"] == "best.safetensors" and m["epoch"] == 2
