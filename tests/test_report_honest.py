"""Honest reports: the finding is the positive class, NPV beside PPV, thresholds chosen on validation and
applied to test, the majority-class baseline, the never-predicted warning, and the run facts in the report."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from meddx.engine.config import TrainConfig
from meddx.errors import MeddxError
from meddx.metrics import compute_auc, evaluate_classification
from meddx.metrics.operating import (
    binary_stats,
    data_positive_class,
    majority_baseline,
    never_predicted,
    operating_points,
)
from meddx.report.classification import render_report
from meddx.report.page import run_facts
from tests.conftest import shared_path, write_fake_medmnist

BIN = "binary-class"


def two_columns(p1: list[float]) -> np.ndarray:
    p1 = np.asarray(p1, dtype=float)
    return np.stack([1 - p1, p1], axis=1)


def test_binary_stats_ppv_npv_by_value():
    is_pos = np.array([1, 1, 1, 0, 0, 0, 0], bool)
    called = np.array([1, 1, 0, 1, 0, 0, 0], bool)  # tp 2, fn 1, fp 1, tn 3
    s = binary_stats(is_pos, called)
    assert (s["tp"], s["fn"], s["fp"], s["tn"]) == (2, 1, 1, 3)
    assert s["sensitivity"] == pytest.approx(2 / 3) and s["specificity"] == pytest.approx(3 / 4)
    assert s["ppv"] == pytest.approx(2 / 3) and s["npv"] == pytest.approx(3 / 4)
    none_called = binary_stats(is_pos, np.zeros(7, bool))
    assert none_called["ppv"] is None and none_called["npv"] == pytest.approx(4 / 7)


def test_positive_class_zero_gives_the_findings_numbers_and_the_same_auc():
    y = np.array([0, 0, 1, 1, 1])  # class 0 is the finding (as BreastMNIST's "malignant")
    s = two_columns([0.1, 0.7, 0.4, 0.8, 0.9])  # P(class 0) = .9 .3 .6 .2 .1
    m = evaluate_classification(y, s, BIN, ["malignant", "benign"], n_bootstrap=0)
    official = m["auc"]
    m |= operating_points(y, s, ["malignant", "benign"], positive_class=0)
    # MedMNIST rule at 0.5 predicts [0, 1, 0, 1, 1]: malignant found once (tp 1, fn 1), one false alarm
    assert m["positive_class"] == 0 and m["positive_name"] == "malignant"
    assert m["sensitivity"] == pytest.approx(0.5) and m["specificity"] == pytest.approx(2 / 3)
    assert m["ppv"] == pytest.approx(0.5) and m["npv"] == pytest.approx(2 / 3)
    assert m["auc"] == official == pytest.approx(compute_auc(y, s, BIN)) == pytest.approx(5 / 6)
    assert list(m["roc"]) == ["malignant"] and m["roc"]["malignant"]["auc"] == pytest.approx(5 / 6)


def test_thresholds_are_chosen_on_validation_and_applied_to_test():
    val_y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    val_s = two_columns([0.1, 0.2, 0.5, 0.6, 0.4, 0.7, 0.8, 0.9])
    # validation: at 0.7 sensitivity 3/4, specificity 1 (J .75, the best); 0.4 is the highest threshold
    # with sensitivity >= 0.9 (1.0)
    test_y = np.array([0, 0, 0, 0, 1, 1, 1])
    test_s = two_columns([0.2, 0.45, 0.5, 0.75, 0.5, 0.72, 0.95])
    m = operating_points(test_y, test_s, ["no", "yes"], positive_class=1, reference=(val_y, val_s))
    t = m["thresholds"]
    assert set(t) == {"0.5", "youden", "sens90"}
    youden, sens90 = t["youden"], t["sens90"]
    assert youden["threshold"] == pytest.approx(0.7) and sens90["threshold"] == pytest.approx(0.4)
    assert youden["reference_sensitivity"] == pytest.approx(0.75) and youden["reference_specificity"] == 1.0
    assert youden["reference_n"] == 8
    # on test, >= 0.7 flags .72 .95 (tp) and .75 (fp): sens 2/3, spec 3/4, PPV 2/3, NPV 3/4
    assert (youden["tp"], youden["fn"], youden["fp"], youden["tn"]) == (2, 1, 1, 3)
    assert youden["ppv"] == pytest.approx(2 / 3) and youden["npv"] == pytest.approx(3 / 4)
    # >= 0.4 flags every positive and 3 of 4 negatives
    assert sens90["sensitivity"] == 1.0 and sens90["specificity"] == pytest.approx(1 / 4)
    assert sens90["ppv"] == pytest.approx(0.5) and sens90["npv"] == 1.0
    assert t["0.5"]["threshold"] == 0.5 and t["0.5"]["sensitivity"] == pytest.approx(2 / 3)
    pts = {p["name"]: (p["fpr"], p["tpr"]) for p in m["roc"]["yes"]["points"]}
    assert pts["youden"] == pytest.approx((0.25, 2 / 3)) and pts["sens90"] == pytest.approx((0.75, 1.0))


def test_without_a_reference_no_threshold_is_chosen():
    y = np.array([0, 1, 0, 1])
    m = evaluate_classification(y, two_columns([0.2, 0.8, 0.4, 0.6]), BIN, ["a", "b"], n_bootstrap=0)
    assert m["thresholds"]["youden"] is None and m["thresholds"]["sens90"] is None
    assert m["positive_class"] == 1 and m["npv"] == 1.0


def test_majority_baseline():
    y = np.array([0, 1, 1, 2, 1])
    s = np.full((5, 3), 1 / 3)
    b = majority_baseline(y, s, "multi-class", ["a", "b", "c"])
    assert b == {"strategy": "majority", "class": "b", "acc": pytest.approx(0.6), "auc": 0.5}
    yml = np.array([[1, 0], [1, 0], [0, 0], [1, 1]])
    bml = majority_baseline(yml, np.full((4, 2), 0.5), "multi-label, binary-class", ["x", "y"])
    assert bml["acc"] == pytest.approx(0.75) and bml["class"] is None


def test_never_predicted_and_its_banner():
    y = np.array([0, 1, 2, 0, 1, 2])
    s = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.5, 0.4, 0.1]] * 2)  # class c never has the top score
    assert never_predicted(s, "multi-class", ["a", "b", "c"]) == ["c"]
    m = evaluate_classification(y, s, "multi-class", ["a", "b", "c"], n_bootstrap=0)
    assert m["never_predicted"] == ["c"]
    html = render_report(title="t", run_info={}, metrics=m)
    assert 'id="never-predicted"' in html and "never predicted the class <em>c</em>" in html
    ok = evaluate_classification(y, np.eye(3)[y] * 0.8 + 0.2 / 3, "multi-class", ["a", "b", "c"], n_bootstrap=0)
    assert ok["never_predicted"] == [] and 'id="never-predicted"' not in render_report(title="t", run_info={},
                                                                                       metrics=ok)


def _bundle(task=BIN, names=("malignant", "normal, benign"), extra=None):
    return SimpleNamespace(task=task, class_names=list(names), extra=extra or {})


def test_positive_class_choice():
    assert data_positive_class(_bundle(extra={"positive_class": 0})) == 0
    assert data_positive_class(_bundle()) == 1  # nothing declared: the last class
    assert data_positive_class(_bundle(extra={"positive_class": 0}), "normal, benign") == 1
    assert data_positive_class(_bundle(), "0") == 0
    with pytest.raises(MeddxError, match="not one of this data set's classes"):
        data_positive_class(_bundle(), "benign")
    with pytest.raises(MeddxError, match="applies to binary tasks"):
        data_positive_class(_bundle("multi-class", ("a", "b", "c")), "a")
    assert data_positive_class(_bundle("multi-class", ("a", "b", "c"))) is None


def test_medmnist_findings_from_label_names(tmp_path):
    from meddx.data.medmnist import load_medmnist, medmnist_info

    bundle = load_medmnist(write_fake_medmnist(tmp_path / "breastmnist.npz", n=(10, 4, 4)))
    assert bundle.class_names[data_positive_class(bundle)] == "malignant"
    for name, finding in [("pneumoniamnist", "pneumonia"), ("adrenalmnist3d", "hyperplasia"),
                          ("nodulemnist3d", "malignant"), ("vesselmnist3d", "aneurysm")]:
        info = medmnist_info()[name]
        assert info["labels"][str(info["positive"])] == finding


def test_real_breastmnist_finding_is_malignant():
    from meddx.data.medmnist import load_medmnist

    bundle = load_medmnist(shared_path("breastmnist", "breastmnist.npz"))
    assert bundle.class_names[data_positive_class(bundle)] == "malignant"
    assert data_positive_class(bundle) == 0


def test_report_shows_the_new_parts():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    p1 = np.clip(0.35 * y + rng.uniform(0, 0.65, 80), 0, 1)
    vy = rng.integers(0, 2, 40)
    vp1 = np.clip(0.35 * vy + rng.uniform(0, 0.65, 40), 0, 1)
    names = ["malignant", "normal, benign"]
    m = evaluate_classification(y, two_columns(p1), BIN, names, n_bootstrap=0)
    m |= operating_points(y, two_columns(p1), names, 0, (vy, two_columns(vp1)))
    m |= {"runtime": "onnxruntime int8", "runtime_files": ["/runs/x/model_int8.onnx"]}
    history = [{"epoch": 0, "seconds": 50.0}, {"epoch": 1, "seconds": 75.5}]
    model = torch.nn.Linear(3, 2)  # 8 parameters
    info = {"dataset": "breastmnist"} | run_facts(TrainConfig(), model, history)
    html = render_report(title="t", run_info=info, metrics=m, history=history, class_names=names)
    for text in ("Finding (positive class)", "Finding: <em>malignant</em>", "Youden's J",
                 "Sensitivity ≥ 90%", "NPV", "Always answering", "Scored by",
                 "onnxruntime int8 · model_int8.onnx", "0.002 (default for adamw)", "parameters",
                 "2 min 06 s (2 epochs)", "versions.torch", f"{m['thresholds']['youden']['npv']:.3f}",
                 "Markers show where each decision threshold"):
        assert text in html or text.replace("'", "&#x27;") in html, text
    assert "Recall</th>" not in html and ">Sensitivity</th>" in html


def test_cli_positive_class_reaches_data_json_checkpoint_and_metrics(tmp_path):
    from typer.testing import CliRunner

    from meddx.cli import app
    from meddx.engine.checkpoint import read_checkpoint

    npz = write_fake_medmnist(tmp_path / "breastmnist.npz", n=(64, 24, 24))
    r = CliRunner().invoke(app, ["train", "--data", str(npz), "--epochs", "1", "--model", "seednet",
                                 "--out", str(tmp_path / "runs"), "--name", "b", "--positive-class",
                                 "normal, benign"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    run = tmp_path / "runs" / "b"
    assert json.loads((run / "data.json").read_text())["positive_class"] == 1
    assert read_checkpoint(run / "last.safetensors")[1]["positive_class"] == 1
    m = json.loads((run / "metrics.json").read_text())
    assert m["positive_class"] == 1 and m["positive_name"] == "normal, benign"
    assert set(m["thresholds"]) == {"0.5", "youden", "sens90"} and m["thresholds"]["youden"]["reference_n"] == 24
    assert {"npv", "baseline", "never_predicted"} <= set(m)
    html = (run / "report.html").read_text()
    assert "Finding: <em>normal, benign</em>" in html and "learning rate" in html
