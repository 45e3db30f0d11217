"""Binary, multi-label and ordinal runs through the CLI: train -> evaluate -> predict, with every number checked.

* the label kind is inferred from the file (an unknown name with (N, K) labels is multi-label; a file named
  after a known MedMNIST set, ``retinamnist.npz``, takes that set's task, ordinal regression, and class names);
* ``metrics.json`` is recomputed from ``predictions_test.npz`` with scikit-learn (MedMNIST's AUC and ACC);
* ``evaluate --split val`` writes ``metrics_val.json`` / ``predictions_val.npz`` with the validation numbers
  and leaves the test metrics alone;
* ``predict --json`` on a test image saved as PNG returns the probabilities the evaluation scored for it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import accuracy_score, roc_auc_score
from typer.testing import CliRunner

from meddx.cli import app
from tests.conftest import write_fake_medmnist

runner = CliRunner()

KINDS = {
    # name: (file name, write_fake_medmnist options, expected task, expected class names)
    "binary": ("fakebin.npz", {"classes": 2}, "binary-class", ["0", "1"]),
    "multilabel": ("fakeml.npz", {"multilabel": 4}, "multi-label, binary-class", ["0", "1", "2", "3"]),
    "ordinal": ("retinamnist.npz", {"classes": 5, "channels": 3}, "ordinal-regression",
                ["0", "1", "2", "3", "4"]),
}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def sk_auc(y: np.ndarray, s: np.ndarray, task: str) -> float:
    if task == "binary-class":
        return roc_auc_score(y.reshape(-1), s[:, -1])
    if task == "multi-label, binary-class":
        return roc_auc_score(y, s, average="macro")
    return roc_auc_score(y.reshape(-1), s, multi_class="ovr", average="macro")


def sk_acc(y: np.ndarray, s: np.ndarray, task: str) -> float:
    if task == "binary-class":
        return accuracy_score(y.reshape(-1), s[:, -1] > 0.5)
    if task == "multi-label, binary-class":  # MedMNIST: mean of per-label accuracies (not subset accuracy)
        return float(np.mean([accuracy_score(y[:, k], s[:, k] > 0.5) for k in range(y.shape[1])]))
    return accuracy_score(y.reshape(-1), s.argmax(1))


@pytest.fixture(scope="module", params=list(KINDS))
def kind_run(request, tmp_path_factory):
    name = request.param
    fname, opts, task, classes = KINDS[name]
    root = tmp_path_factory.mktemp(f"kind-{name}")
    npz = write_fake_medmnist(root / fname, n=(48, 20, 20), seed=3, **opts)
    r = invoke("train", "--data", npz, "--model", "seednet", "--epochs", "2", "--batch-size", "16",
               "--out", root, "--name", "run")
    assert r.exit_code == 0, r.output
    return name, npz, root / "run", task, classes


def test_label_kind_metrics_match_sklearn(kind_run):
    name, npz, run, task, classes = kind_run
    m = json.loads((run / "metrics.json").read_text())
    data = json.loads((run / "data.json").read_text())
    assert data["kind"] == task and data["classes"] == classes
    assert m["kind"] == task and m["task"] == "classification" and m["split"] == "test" and m["n"] == 20
    pred = np.load(run / "predictions_test.npz")
    y, s = pred["y_true"], pred["y_score"]
    with np.load(npz) as f:
        labels = f["test_labels"]
    assert np.array_equal(y.reshape(len(y), -1), labels.reshape(len(labels), -1))
    assert s.shape == (20, len(classes)) and ((s >= 0) & (s <= 1)).all()
    if task == "multi-label, binary-class":
        assert not np.allclose(s.sum(1), 1.0)  # one sigmoid per label
    else:
        np.testing.assert_allclose(s.sum(1), 1.0, atol=1e-5)  # softmax rows
    assert m["auc"] == pytest.approx(sk_auc(y, s, task), abs=1e-12)
    assert m["acc"] == pytest.approx(sk_acc(y, s, task), abs=1e-12)
    assert m["acc_ci"][0] <= m["acc"] <= m["acc_ci"][1] and m["auc_ci"][0] <= m["auc"] <= m["auc_ci"][1]


def test_evaluate_val_split_writes_val_metrics(kind_run):
    name, npz, run, task, classes = kind_run
    test_before = (run / "metrics.json").read_text()
    r = invoke("evaluate", run, "--split", "val", "--bootstrap", "0")
    assert r.exit_code == 0, r.output
    assert (run / "metrics.json").read_text() == test_before  # test metrics untouched
    m = json.loads((run / "metrics_val.json").read_text())
    pred = np.load(run / "predictions_val.npz")
    y, s = pred["y_true"], pred["y_score"]
    with np.load(npz) as f:
        assert np.array_equal(y.reshape(len(y), -1), f["val_labels"].reshape(len(y), -1))
    assert m["split"] == "val" and m["n"] == 20
    assert m["auc"] == pytest.approx(sk_auc(y, s, task), abs=1e-12)
    assert m["acc"] == pytest.approx(sk_acc(y, s, task), abs=1e-12)
    assert not m.get("acc_ci") and not m.get("auc_ci")  # --bootstrap 0: no intervals


def test_predict_returns_the_evaluated_probabilities(kind_run, tmp_path):
    name, npz, run, task, classes = kind_run
    with np.load(npz) as f:
        images = f["test_images"][:2]
    files = []
    for i, img in enumerate(images):
        files.append(tmp_path / f"t{i}.png")
        Image.fromarray(img).save(files[-1])
    r = invoke("predict", run, *files, "--json")
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    scores = np.load(run / "predictions_test.npz")["y_score"][:2]
    for row, want in zip(res, scores):
        got = np.array([row["probabilities"][c] for c in classes])
        np.testing.assert_allclose(got, want, atol=1e-5)
        if task == "multi-label, binary-class":
            assert row["labels"] == [c for c, v in zip(classes, want) if v > 0.5] and "label" not in row
        else:
            assert row["label"] == classes[int(want.argmax())]
            assert row["probability"] == pytest.approx(float(want.max()), abs=1e-5)
