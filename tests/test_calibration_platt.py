"""Calibration after training (meddx.engine.calibration): the fits, the fold into the head, and real runs
(binary and multi-label: Platt scaling; multi-class: vector scaling).

The end-to-end test trains the same binary phantom model twice (seed fixed), with and without calibration: the
calibrated run's validation probabilities must be the uncalibrated run's through the fitted map, its AUC must be
unchanged (the map is monotone), and its validation NLL no higher (the map is the NLL's minimiser on validation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit, logit
from sklearn.metrics import roc_auc_score

from meddx.engine.calibration import fold_affine
from meddx.metrics.calibration import fit_platt, fit_platt_per_label


def _logit(p: np.ndarray) -> np.ndarray:
    """The logit of probabilities read back from a model (clipped: float32 can round a probability to 0 or 1)."""
    return logit(np.clip(p, 1e-7, 1 - 1e-7))


def test_fit_platt_recovers_a_known_map():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 2, 20_000)
    y = (rng.random(len(z)) < expit(0.5 * z + 1.0)).astype(int)  # an over-confident model, shifted
    scale, shift = fit_platt(y, z)
    assert scale == pytest.approx(0.5, abs=0.03) and shift == pytest.approx(1.0, abs=0.06)


@pytest.mark.parametrize("case", ["few", "separated", "backwards"])
def test_fit_platt_refuses_what_it_cannot_fit(case):
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, 200)
    y = (z + rng.normal(0, 1, 200) > 0).astype(int)
    if case == "few":
        y = np.zeros(200, int)
        y[:4] = 1
    elif case == "separated":
        y = (z > 0).astype(int)
    else:
        z = -z
    assert fit_platt(y, z) is None


def test_the_binary_fold_gives_the_platt_probabilities():
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 2)
    x = torch.randn(7, 5)
    z = head(x).detach()
    fold_affine(head, [0.4, 0.4], [0.0, -1.3])  # (z0, z1) -> (a z0, a z1 + b)
    p = torch.softmax(head(x), 1)[:, 1].detach().numpy()
    assert np.allclose(p, expit(0.4 * (z[:, 1] - z[:, 0]).numpy() - 1.3), atol=1e-6)


def test_a_binary_run_ships_its_calibrated_model(tmp_path):
    from meddx.data import load_data
    from meddx.engine.checkpoint import read_checkpoint
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor

    data = load_data("phantom", size=28, seed=0)
    probs, runs = {}, {}
    for mode in ("none", "auto"):
        cfg = TrainConfig(data="phantom", size=28, model="seednet", epochs=2, batch_size=32, out=str(tmp_path),
                          name=mode, progress=False, calibrate=mode)
        runs[mode] = fit(cfg, data=data)
        probs[mode] = Predictor(runs[mode].path).predict_tensor(data.val.images)[:, 1].astype(np.float64)
    info = json.loads((runs["auto"].path / "calibration.json").read_text())
    assert not (runs["none"].path / "calibration.json").exists()
    assert info["applied"], info
    meta = read_checkpoint(runs["auto"].best)[1]
    assert meta["calibration"] == {"method": "platt", "scale": info["scale"], "shift": info["shift"]}
    y = data.val.labels.numpy().reshape(-1)
    z = _logit(probs["none"])
    assert np.allclose(probs["auto"], expit(info["scale"] * z + info["shift"]), atol=1e-4)
    assert roc_auc_score(y, probs["auto"]) == pytest.approx(roc_auc_score(y, probs["none"]), abs=1e-6)
    assert info["after"]["nll"] <= info["before"]["nll"] + 1e-9
    metrics = evaluate_run(runs["auto"].path, data=data, n_bootstrap=0)
    assert metrics["calibration"] == meta["calibration"]
    assert "Platt-scaled on the validation split" in runs["auto"].report.read_text()


def test_calibrate_rejects_an_unknown_mode():
    from meddx.engine.config import TrainConfig
    from meddx.errors import MeddxError

    with pytest.raises(MeddxError, match="calibrate must be auto or none"):
        TrainConfig(calibrate="isotonic").validate()


def test_calibrating_twice_records_the_composed_map():
    from meddx.engine.calibration import _composed

    z = np.linspace(-4, 4, 9)
    m = _composed({"scale": 0.5, "shift": -1.0}, {"scale": 2.0, "shift": 0.3})
    assert np.allclose(m["scale"] * z + m["shift"], 2.0 * (0.5 * z - 1.0) + 0.3)
    assert _composed(None, {"scale": 2.0, "shift": 0.3}) == {"scale": 2.0, "shift": 0.3}
    per_label = _composed({"scale": [0.5, 1.0], "shift": [-1.0, 0.0], "fitted": [True, False]},
                          {"scale": [2.0, 0.7], "shift": [0.3, 0.2], "fitted": [True, True]})
    assert np.allclose(per_label["scale"], [1.0, 0.7]) and np.allclose(per_label["shift"], [-1.7, 0.2])
    assert per_label["fitted"] == [True, True]


def test_no_validation_images_is_said_not_guessed(tmp_path):
    from types import SimpleNamespace

    from meddx.engine.calibration import calibrate_shipped
    from meddx.kinds import BINARY

    best = tmp_path / "best.safetensors"
    best.write_bytes(b"")  # never read: the empty validation split is answered first
    run = SimpleNamespace(best=best, path=tmp_path,
                          write_json=lambda path, obj: path.write_text(json.dumps(obj)))
    cfg = SimpleNamespace(calibrate="auto", select="best")
    data = SimpleNamespace(task=BINARY, val=SimpleNamespace(labels=torch.zeros(0, dtype=torch.long)))
    info = calibrate_shipped(run, cfg, data, torch.device("cpu"))
    assert info == {"method": "platt", "applied": False, "n_val": 0, "reason": "no validation images"}
    assert json.loads((tmp_path / "calibration.json").read_text()) == info


def test_fit_platt_per_label_fits_each_label_on_its_own():
    rng = np.random.default_rng(2)
    z = rng.normal(0, 2, (20_000, 3))
    truth = [(0.5, 1.0), (2.0, -0.5)]
    y = np.stack([(rng.random(len(z)) < expit(a * z[:, j] + b)) for j, (a, b) in enumerate(truth)]
                 + [np.zeros(len(z), bool)], 1).astype(int)
    y[:3, 2] = 1  # three positives: too few to fit that label
    fits = fit_platt_per_label(y, z)
    for (a, b), got in zip(truth, fits):
        assert got[0] == pytest.approx(a, abs=0.05) and got[1] == pytest.approx(b, abs=0.06)
    assert fits[2] is None
    with pytest.raises(Exception, match="multi-label labels and logits must both be"):
        fit_platt_per_label(y[:, 0], z[:, 0])


def test_fold_affine_maps_each_output_logit():
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 3)
    x = torch.randn(7, 5)
    z = head(x).detach()
    fold_affine(head, [0.4, 1.0, 2.0], [-1.3, 0.0, 0.5])
    assert torch.allclose(head(x), z * torch.tensor([0.4, 1.0, 2.0]) + torch.tensor([-1.3, 0.0, 0.5]), atol=1e-5)


def _phantom(variant: str):
    """Phantom slices labelled as in benchmarks/recipe_robustness.py, with real signal: ``multilabel`` (a nodule,
    several nodules, a nodule > 2.3 px) or ``count3`` (none, one, several nodules: multi-class)."""
    from meddx.data.dataset import DataBundle
    from meddx.data.phantom import make_slices, to_uint8
    from meddx.data.split import Split
    from meddx.kinds import MULTI_CLASS, MULTI_LABEL

    splits = {}
    for i, (name, n) in enumerate({"train": 400, "val": 200, "test": 100}.items()):
        ph = make_slices(n, size=28, seed=70 + i, nodule_fraction=0.6, max_nodules=3)
        count = np.array([len(d) for d in ph.diameters])
        largest = np.array([d.max() if len(d) else 0.0 for d in ph.diameters])
        y = (np.stack([count > 0, count > 1, largest > 2.3], 1) if variant == "multilabel"
             else np.minimum(count, 2)).astype(np.int64)
        splits[name] = Split(torch.from_numpy(to_uint8(ph.images)[:, None].copy()), torch.from_numpy(y))
    classes = ["nodule", "several", "large"] if variant == "multilabel" else ["none", "one", "several"]
    return DataBundle(name=f"phantom-{variant}", task=MULTI_LABEL if variant == "multilabel" else MULTI_CLASS,
                      class_names=classes, modality="ct", **splits)


def _train_both(tmp_path, data):
    """The same model trained twice (seed fixed), without and with calibration."""
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    runs = {}
    for mode in ("none", "auto"):
        cfg = TrainConfig(data=data.name, size=28, model="seednet", epochs=2, batch_size=32, out=str(tmp_path),
                          name=mode, progress=False, calibrate=mode)
        runs[mode] = fit(cfg, data=data)
    return runs


def test_a_multilabel_run_ships_one_map_per_label(tmp_path):
    from meddx.engine.checkpoint import read_checkpoint
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.predict import Predictor

    data = _phantom("multilabel")
    runs = _train_both(tmp_path, data)
    probs = {k: Predictor(r.path).predict_tensor(data.val.images).astype(np.float64) for k, r in runs.items()}
    info = json.loads((runs["auto"].path / "calibration.json").read_text())
    assert info["method"] == "platt-per-label" and info["applied"], info
    meta = read_checkpoint(runs["auto"].best)[1]
    assert meta["calibration"] == {k: info[k] for k in ("method", "scale", "shift", "fitted")}
    z = _logit(probs["none"])
    for j, fitted in enumerate(info["fitted"]):
        a, b = (info["scale"][j], info["shift"][j]) if fitted else (1.0, 0.0)
        assert np.allclose(probs["auto"][:, j], expit(a * z[:, j] + b), atol=1e-4)
    y = data.val.labels.numpy()
    for j in range(3):  # each label's ranking, hence its AUC, is unchanged
        assert roc_auc_score(y[:, j], probs["auto"][:, j]) == pytest.approx(roc_auc_score(y[:, j], probs["none"][:, j]),
                                                                             abs=1e-6)
    assert info["after"]["nll"] <= info["before"]["nll"] + 1e-9
    metrics = evaluate_run(runs["auto"].path, data=data, n_bootstrap=0)
    assert metrics["calibration"] == meta["calibration"]
    assert "Platt-scaled per label on the validation split" in runs["auto"].report.read_text()


def test_fit_vector_scaling_recovers_a_known_map_and_refuses_what_it_cannot_fit():
    from scipy.special import softmax

    from meddx.metrics.calibration import fit_vector_scaling

    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, (20_000, 3))
    p = softmax(z * [0.5, 1.5, 1.0] + [0.3, -0.7, 0.0], axis=1)
    y = (p.cumsum(1) < rng.random((len(z), 1))).sum(1)  # one draw per row from p
    scale, shift = fit_vector_scaling(y, z)
    assert np.allclose(scale, [0.5, 1.5, 1.0], atol=0.05)
    assert np.allclose(np.subtract(shift, shift[2]), [0.3, -0.7, 0.0], atol=0.12)  # shifts: up to a constant
    assert fit_vector_scaling(np.r_[np.zeros(96, int), np.ones(4, int)], rng.normal(0, 1, (100, 2))) is None
    perfect = np.eye(3)[np.arange(30) % 3] * 4.0
    assert fit_vector_scaling(np.arange(30) % 3, perfect) is None


def test_a_multiclass_run_ships_its_vector_scaled_head(tmp_path):
    from meddx.engine.checkpoint import read_checkpoint
    from meddx.engine.evaluate import evaluate_run
    from meddx.models import get_model_spec

    data = _phantom("count3")
    runs = _train_both(tmp_path, data)
    info = json.loads((runs["auto"].path / "calibration.json").read_text())
    assert info["method"] == "vector-scaling" and info["applied"], info
    weights, meta = read_checkpoint(runs["auto"].best)[:2]
    plain = read_checkpoint(runs["none"].best)[0]
    head = f"model.{get_model_spec('seednet').head}"  # the checkpoint stores the model under "model."
    a, b = torch.tensor(info["scale"]), torch.tensor(info["shift"])
    assert torch.allclose(weights[f"{head}.weight"], plain[f"{head}.weight"] * a[:, None], atol=1e-5)
    assert torch.allclose(weights[f"{head}.bias"], plain[f"{head}.bias"] * a + b, atol=1e-5)
    assert info["after"]["nll"] <= info["before"]["nll"] + 1e-9
    metrics = evaluate_run(runs["auto"].path, data=data, n_bootstrap=0)
    assert metrics["calibration"] == meta["calibration"] == {k: info[k] for k in ("method", "scale", "shift")}
    assert "Vector-scaled on the validation split" in runs["auto"].report.read_text()
