"""The default recipe (issue #18): selection, weight averaging with BatchNorm, the size-driven schedule and the
time budget that always anneals."""

from __future__ import annotations

import json
import math

import pytest
import torch

from meddx.data.augment import Normalization
from meddx.engine import recipe
from meddx.engine.averaging import TailAverage, make_ema, recalibrate_bn
from meddx.engine.config import TrainConfig
from meddx.engine.fit import fit
from meddx.engine.selection import choose, peak
from meddx.utils.checkpoints import read_checkpoint


def _cfg(tmp_path, data, **kw):
    base = dict(data=str(data), model="seednet", batch_size=16, out=str(tmp_path / "runs"), progress=False)
    return TrainConfig(**(base | kw))


# --------------------------------------------------------------------------- selection


def _history(aucs):
    return [{"epoch": i, "val_auc": a} for i, a in enumerate(aucs)]


def test_selection_ships_the_peak_when_the_average_fell_behind():
    # over-fitting schedule: validation AUC peaks at epoch 2 and falls; the tail average is 0.05 below the peak
    hist = _history([0.70, 0.85, 0.93, float("nan"), 0.88, 0.82, 0.80])
    assert peak(hist, "auc") == (2, 0.93)
    sel = choose(hist, "auc", average_score=0.88)
    assert sel.shipped == "peak-epoch" and sel.peak_epoch == 2 and sel.gap == 0.0
    assert sel.last_score == 0.80  # the old default (--select last) would have shipped 0.13 below the peak


def test_selection_prefers_the_average_within_tolerance():
    hist = _history([0.70, 0.93, 0.90, 0.91])
    sel = choose(hist, "auc", average_score=0.915, average_epochs=2)
    assert sel.shipped == "tail-average" and sel.gap == pytest.approx(0.015)
    assert sel.to_dict()["shipped_score"] == 0.915
    assert choose(hist, "auc", average_score=float("nan")).shipped == "peak-epoch"
    assert choose(hist, "auc", average_score=None).shipped == "peak-epoch"
    # no finite validation point at all (e.g. a class missing from validation): the average is shipped
    assert choose(_history([float("nan")] * 3), "auc", average_score=float("nan")).shipped == "peak-epoch"
    assert choose(_history([float("nan")] * 3), "auc", average_score=0.5).shipped == "tail-average"


# --------------------------------------------------------------------------- averaging with BatchNorm


def _bn_net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 2))


def test_ema_bn_recalibration_gives_the_training_statistics():
    net = _bn_net()
    images = (torch.rand(64, 1, 12, 12) * 200 + 30).to(torch.uint8)
    norm = Normalization.fit(images)
    ema = make_ema(net, 0.9)
    bn = ema.module[1]
    assert torch.equal(bn.running_mean, torch.zeros(4))  # the copy's statistics: never updated by averaging
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        net(norm(images)).sum().backward()
        opt.step()
        ema.update_parameters(net)
    recalibrate_bn(ema.module, images, norm, batch_size=64)  # one batch: the exact statistics
    with torch.no_grad():
        feats = ema.module[0](norm(images))
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, feats.var((0, 2, 3)), rtol=1e-3)
    assert torch.isfinite(ema.module(norm(images))).all() and not ema.module.training


def test_tail_average_is_the_mean_of_the_tail_snapshots_and_round_trips():
    net = _bn_net()
    avg = TailAverage(net, start=2)
    snaps = []
    for epoch in range(4):
        with torch.no_grad():
            net[5].weight.add_(1.0)
        avg.update(net, epoch)
        if epoch >= 2:
            snaps.append(net[5].weight.clone())
    assert avg.count == 2
    assert torch.allclose(avg.averaged.module[5].weight, torch.stack(snaps).mean(0))
    other = TailAverage(_bn_net(), start=2)
    other.load_state_tensors(avg.state_tensors())
    assert other.count == 2 and torch.equal(other.averaged.module[5].weight, avg.averaged.module[5].weight)
    assert TailAverage(_bn_net(), 5).settled_model(torch.zeros(4, 1, 8, 8), Normalization(1.0, [0.0], [1.0]),
                                                   "cpu", None) is None  # nothing averaged yet


# --------------------------------------------------------------------------- size-driven schedule


def test_schedule_scales_with_training_set_size():
    assert recipe.auto_batch_size(300, 2, 128) == 32 and recipe.auto_batch_size(546, 2, 128) == 32
    assert recipe.auto_batch_size(1500, 2, 128) == 64 and recipe.auto_batch_size(4708, 2, 128) == 128
    assert recipe.auto_batch_size(1188, 3, 16) == 16  # volumes keep the task's default
    epochs = [recipe.auto_epochs(n) for n in (300, 1000, 3000, 10_000, 100_000)]
    assert epochs == sorted(epochs, reverse=True) and epochs[0] == 80 and epochs[-1] == 20
    strength = [recipe.augment_strength(n) for n in (100, 500, 1581, 5000, 50_000)]
    assert strength == [1.5, 1.5, 1.25, 1.0, 1.0]
    assert recipe.auto_label_smoothing("multi-class") == 0.1
    assert recipe.auto_label_smoothing("ordinal-regression") == 0.1
    assert recipe.auto_label_smoothing("binary-class") == 0.0
    assert recipe.auto_label_smoothing("multi-label, binary-class") == 0.0
    assert [recipe.tail_start(n) for n in (1, 2, 8, 80)] == [0, 1, 6, 60]
    assert recipe.budget_seconds(None, 3) == 900 and recipe.budget_seconds(None, 2) is None  # no 2D default
    assert recipe.budget_seconds(4, 2) == 240


def test_a_task_can_plan_its_schedule_in_steps_and_minutes():
    from meddx.tasks.reconstruction import ReconstructionTask

    ct, mri = ReconstructionTask("lowdose", (128, 128)), ReconstructionTask("mri4x", (128, 128))
    assert recipe.planned_epochs(98, 2, 16, ct.default_steps) == 1000  # 6 steps an epoch: 6000 steps
    assert recipe.planned_epochs(131, 2, 8, mri.default_steps) == 250
    assert recipe.planned_epochs(1000, 2, 32, None) == recipe.auto_epochs(1000)  # the classifiers' rule
    assert recipe.budget_seconds(None, 2, ct.default_minutes) == 900  # the task's budget for 2D too
    assert recipe.budget_seconds(5, 2, ct.default_minutes) == 300  # --max-minutes wins


def test_budget_planner_fits_the_schedule_from_the_first_steps(monkeypatch):
    clock = {"t": 100.0}
    monkeypatch.setattr(recipe.time, "time", lambda: clock["t"])
    shortened = []
    planner = recipe.BudgetPlanner(budget_s=900, steps=75, planned=60, shorten=shortened.append, val_share=0.0)
    planner.start()
    for step in range(10):
        planner.on_step(step)
        clock["t"] += 1.0  # one second per step: 75 s per epoch -> 12 epochs fit 15 minutes
    assert shortened == [12] and planner.planned == 12
    clock["t"] = 100.0 + 3 * 100.0  # the epochs turned out slower (100 s): refined after epoch 3
    planner.after_epoch(3)
    assert shortened == [12, 9]
    clock["t"] = 100.0 + 4 * 400.0  # way over budget after epoch 4: one more epoch, which anneals
    planner.after_epoch(4)
    assert shortened[-1] == 5
    floored = recipe.BudgetPlanner(budget_s=60, steps=75, planned=60, shorten=shortened.append, floor=10)
    floored.start()
    for step in range(10):
        floored.on_step(step)
        clock["t"] += 1.0
    assert floored.planned == 10  # the default budget never plans fewer than the floor
    resumed = recipe.BudgetPlanner(budget_s=150, steps=75, planned=60, shorten=shortened.append, first=20)
    resumed.start()
    for step in range(10):
        resumed.on_step(step)
        clock["t"] += 1.0
    assert resumed.planned == 22  # a resumed run: 2 more epochs fit this session's budget
    short = recipe.BudgetPlanner(budget_s=1, steps=3, planned=60, shorten=shortened.append)
    short.start()
    for step in range(3):
        short.on_step(step)
        clock["t"] += 1.0
    assert short.planned == 2  # planned at the epoch's last step: one more epoch, which anneals


def test_auto_schedule_ends_annealed_with_settled_bn_and_selection(tmp_path, fake_npz, monkeypatch):
    """A budget that allows 2 epochs (of 56 s + validation): the schedule is fitted from the first steps, the LR
    reaches zero, the tail average gets BatchNorm statistics from training images, the shipped model is recorded."""
    import meddx.engine.fit as fit_module

    # 60 images at batch 8: 7 steps an epoch
    cfg = _cfg(tmp_path, fake_npz, name="auto", max_minutes=2.5, batch_size=8, model="resnet18_slim")
    clock = {"t": 0.0}
    monkeypatch.setattr(recipe.time, "time", lambda: clock["t"])
    real_step = fit_module.EpochSettings.__init__

    def timed_settings(self, *a, **k):
        real_step(self, *a, **k)
        inner = self.on_step
        self.on_step = lambda i, loss: (clock.__setitem__("t", clock["t"] + 8.0), inner(i, loss))  # 56 s/epoch

    monkeypatch.setattr(fit_module.EpochSettings, "__init__", timed_settings)
    run = fit(cfg)
    hist = run.read_history()
    assert len(hist) == 2 and hist[-1]["lr"] == pytest.approx(0.0, abs=1e-9)
    sel = json.loads((run.path / "selection.json").read_text())
    assert sel["gap"] <= 0.02 and sel["shipped"] in ("tail-average", "peak-epoch")
    stored = json.loads(run.config.read_text())
    assert stored["label_smoothing"] == 0.0 and stored["select"] == "best"  # binary labels: resolved, unsmoothed
    tensors, meta, _ = read_checkpoint(run.best)
    means = [v for k, v in tensors.items() if k.endswith("running_mean")]
    assert means and all(torch.isfinite(m).all() for m in means)
    if sel["shipped"] == "tail-average":
        assert meta["averaged_epochs"] == 1 and math.isclose(meta["monitor_value"], sel["average_score"])


# --------------------------------------------------------------------------- colour augmentation


def test_colour_augmentation_changes_colour_not_geometry_and_round_trips():
    from skimage.color import rgb2hed

    from meddx.data.augment import POLICIES, augment_batch, colour_jitter, hed_jitter

    gen = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16) * 0.8 + 0.1
    assert torch.allclose(colour_jitter(x, gen, strength=0.0, hue_deg=0.0), x, atol=1e-5)
    assert torch.allclose(hed_jitter(x, gen, sigma=0.0), x, atol=1e-4)  # deconvolution and back: identity
    # our batched stain separation is scikit-image's
    hed = torch.einsum("nchw,cs->nshw", torch.log(x.clamp_min(1e-6)) / math.log(1e-6),
                       torch.as_tensor(__import__("skimage.color.colorconv").color.colorconv.hed_from_rgb,
                                       dtype=torch.float32)).clamp_min(0)
    assert torch.allclose(hed[0].permute(1, 2, 0), torch.as_tensor(rgb2hed(x[0].permute(1, 2, 0).numpy()),
                                                                   dtype=torch.float32), atol=1e-4)
    jittered = colour_jitter(x, gen)
    assert jittered.shape == x.shape and 0 <= float(jittered.min()) and float(jittered.max()) <= 1
    assert (jittered - x).abs().mean() > 0.01
    raw = (x * 255).to(torch.uint8)
    norm = Normalization.fit(raw)
    out = augment_batch(raw, norm, POLICIES["pathology"], gen)
    assert out.shape == raw.shape and torch.isfinite(out).all()
    gray = raw[:, :1]  # 1-channel images: colour policies leave the intensities alone
    no_affine = POLICIES["none"]
    assert torch.equal(augment_batch(gray, Normalization.fit(gray), no_affine, gen), Normalization.fit(gray)(gray))
    assert POLICIES["fundus"].colour == "jitter" and POLICIES["dermoscopy"].colour == "jitter"


# --------------------------------------------------------------------------- ordinal loss


def test_squared_emd_penalises_far_grades_more_and_keeps_softmax_outputs():
    from meddx.tasks.classification import ClassificationTask, squared_emd

    target = torch.tensor([3])
    near = torch.tensor([[0.0, 0.0, 5.0, 0.0, 0.0]])  # confident grade 2 for a grade-3 image
    far = torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]])  # confident grade 0
    assert float(squared_emd(far, target)) > 2 * float(squared_emd(near, target))
    exact = torch.tensor([[0.0, 0.0, 0.0, 20.0, 0.0]])
    assert float(squared_emd(exact, target)) < 1e-6
    task = ClassificationTask("ordinal-regression", 5, ordinal_loss="emd")
    ce = torch.nn.functional.cross_entropy(far, target)
    assert float(task.loss(far, target)) == pytest.approx(float(ce + squared_emd(far, target)))
    assert torch.allclose(task.probabilities(far).sum(1), torch.ones(1))
    assert ClassificationTask("multi-class", 5, ordinal_loss="emd").ordinal_loss == "ce"  # ordinal kinds only
    with pytest.raises(Exception, match="ordinal loss must be ce or emd"):
        TrainConfig(ordinal_loss="corn").validate()


def test_multilabel_thresholds_are_chosen_on_validation_and_reported_beside_the_official_acc():
    import numpy as np

    from meddx.tasks.classification import per_label_thresholds, validation_thresholds

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, (400, 2))
    # label 0 is calibrated (0.5 is right); label 1's scores are squeezed below 0.5 (0.3 separates)
    s = np.stack([np.where(y[:, 0] == 1, 0.8, 0.2), np.where(y[:, 1] == 1, 0.4, 0.1)], 1) + rng.normal(0, .02, (400, 2))
    t = per_label_thresholds(y[:200], s[:200])
    assert t[0] == 0.5 and 0.1 < t[1] < 0.4
    m = validation_thresholds(y[200:], s[200:], y[:200], s[:200])
    assert m["acc_val_thresholds"] > 0.99 and m["val_thresholds"] == [float(v) for v in t]
