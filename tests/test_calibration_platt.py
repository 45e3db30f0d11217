"""Platt scaling after training (meddx.engine.calibration): the fit, the fold into the head, and a real run.

The end-to-end test trains the same binary phantom model twice (seed fixed), with and without calibration: the
calibrated run's validation probabilities must be the uncalibrated run's through the fitted map, its AUC must be
unchanged (the map is monotone), and its validation NLL no higher (the map is the NLL's minimiser on validation).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from meddx.engine.calibration import fold_into_head
from meddx.metrics.calibration import binary_logit, fit_platt


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


def test_binary_logit_inverts_the_softmax():
    z = np.array([-3.0, 0.0, 2.5])
    p1 = expit(z)
    assert np.allclose(binary_logit(np.stack([1 - p1, p1], 1)), z, atol=1e-6)


def test_fold_into_head_gives_the_platt_probabilities():
    torch.manual_seed(0)
    head = torch.nn.Linear(5, 2)
    x = torch.randn(7, 5)
    z = head(x).detach()
    fold_into_head(head, 0.4, -1.3)
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
    z = binary_logit(np.stack([1 - probs["none"], probs["none"]], 1))
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
    scale, shift = _composed({"scale": 0.5, "shift": -1.0}, 2.0, 0.3)
    assert np.allclose(scale * z + shift, 2.0 * (0.5 * z - 1.0) + 0.3)
    assert _composed(None, 2.0, 0.3) == (2.0, 0.3)


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
