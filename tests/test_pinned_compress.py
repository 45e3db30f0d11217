"""Compression deltas checked against the source run's OWN ``metrics.json`` (written by ``evaluate_run``), and
the compressed run's numbers against a fresh ``evaluate_run`` of the new folder: ``delta_x`` must be
(what evaluate says about the new run) - (what evaluate said about the source run).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from meddx.deploy.compress import compress_run
from meddx.engine.config import TrainConfig
from meddx.engine.evaluate import evaluate_run
from meddx.engine.fit import fit
from tests.conftest import write_fake_medmnist


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("compress")
    npz = write_fake_medmnist(root / "fake.npz", n=(64, 24, 40), seed=2)
    run = fit(TrainConfig(data=str(npz), model="seednet", epochs=1, batch_size=16, out=str(root), name="src",
                          progress=False, augment="none"))
    evaluate_run(run.path, n_bootstrap=0, report=False)
    return run.path


@pytest.mark.parametrize("method,kw", [("prune", {"amount": 0.9, "epochs": 0}), ("ptq", {"calibration_samples": 32})])
def test_deltas_equal_new_minus_source_metrics_json(source_run, tmp_path, method, kw):
    before = json.loads((source_run / "metrics.json").read_text())
    new = compress_run(source_run, method, out=tmp_path, name="c", n_bootstrap=0, **kw)
    m = json.loads((new.path / "metrics.json").read_text())
    assert m["method"] == method and m["n"] == before["n"] == 40
    for key in ("acc", "auc"):
        assert m[f"source_{key}"] == pytest.approx(before[key], abs=1e-12)
        assert m[f"delta_{key}"] == pytest.approx(m[key] - before[key], abs=1e-12)
    again = evaluate_run(new.path, n_bootstrap=0, report=False)  # the new run scored on its own
    assert again["acc"] == pytest.approx(m["acc"], abs=1e-12) and again["auc"] == pytest.approx(m["auc"], abs=1e-12)
    if method == "prune":
        # 90% of the weights gone without fine-tuning: the scores really changed, so the deltas mean something
        new_scores = np.load(new.path / "predictions_test.npz")["y_score"]
        old_scores = np.load(source_run / "predictions_test.npz")["y_score"]
        assert np.abs(new_scores - old_scores).max() > 1e-3
        assert json.loads((new.path / "compress.json").read_text())["sparsity"] >= 0.9 - 0.005
    else:
        assert again["runtime"] == "onnxruntime int8" and before["runtime"] == "torch"
