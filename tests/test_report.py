"""The self-contained HTML report and its figures."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from meddx.metrics import evaluate_classification
from meddx.report import ReportSection, img_tag, plots, render_report, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def _data(task: str, n: int = 300, k: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    if task == "multi-label, binary-class":
        y = (rng.random((n, k)) < 0.3).astype(int)
        return y, 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(size=(n, k)))))
    k = 2 if task == "binary-class" else k
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.5
    return y, np.exp(logits) / np.exp(logits).sum(1, keepdims=True)


HISTORY = [
    {
        "epoch": e,
        "train_loss": 1.0 / e,
        "val_loss": 1.1 / e + 0.1,
        "val_auc": 0.7 + 0.02 * e,
        "val_acc": 0.6 + 0.02 * e,
        "lr": 1e-3 * 0.9**e,
    }
    for e in range(1, 8)
]


@pytest.fixture(scope="module")
def multiclass_metrics():
    y, s = _data("multi-class")
    return evaluate_classification(
        y, s, "multi-class", ["normal", "benign", "malignant", "other"], n_bootstrap=200
    )


def test_write_report_is_self_contained(tmp_path, multiclass_metrics):
    m = multiclass_metrics
    names = m["class_names"]
    extra = ReportSection("Grad-CAM heat maps", "<p id='extra-marker'>saliency goes here</p>")
    run_info = {
        "dataset": "pathmnist",
        "model": "resnet18",
        "task": "multi-class",
        "date": "2025-03-01 12:00",
        "config": {"epochs": 5, "lr": 0.001, "augment": ["flip", "rotate"]},
    }
    out = write_report(
        tmp_path / "reports" / "report.html",
        title="PathMNIST evaluation",
        run_info=run_info,
        metrics=m,
        history=HISTORY,
        sections=[extra],
        class_names=names,
    )
    assert out.exists()
    html = out.read_text(encoding="utf-8")
    assert html.startswith("<!DOCTYPE html>")
    lo, hi = m["auc_ci"]
    assert f"AUC {m['auc']:.3f} (95% CI {lo:.3f}–{hi:.3f})" in html
    lo, hi = m["acc_ci"]
    assert f"ACC {m['acc']:.3f} (95% CI {lo:.3f}–{hi:.3f})" in html
    assert html.count('<img src="data:image/png;base64,') == 4  # confusion, ROC, reliability, training
    assert "http" not in html  # no external resources (nor links) at all
    assert "<script" not in html and "<link" not in html and "url(" not in html
    assert "Grad-CAM heat maps" in html and "<p id='extra-marker'>saliency goes here</p>" in html
    assert html.index("Grad-CAM heat maps") < html.index("How to read this report")
    for text in (
        "pathmnist",
        "resnet18",
        "2025-03-01 12:00",
        "300",
        "malignant",
        "ECE",
        "Sensitivity",
        "Specificity",
        "config.epochs",
        "flip, rotate",
    ):
        assert text in html
    for row in m["per_class"]:
        assert f"{row['sensitivity']:.3f}" in html
    # every embedded image decodes to a PNG
    import base64

    for b64 in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html):
        assert base64.b64decode(b64).startswith(PNG)


def test_user_strings_are_escaped(multiclass_metrics):
    m = dict(multiclass_metrics)
    evil = ["<script>alert(1)</script>", "a & b", 'quote"d', "$x$"]
    m["per_class"] = [dict(r, name=n) for r, n in zip(m["per_class"], evil, strict=True)]
    m["roc"] = {n: c for n, c in zip(evil, m["roc"].values(), strict=True)}
    html = render_report(
        title="<b>Title</b>",
        run_info={"dataset": "<i>ds</i>", "note": "<img src=x onerror=alert(1)>"},
        metrics=m,
        class_names=evil,
    )
    assert "<script>alert" not in html and "<b>Title</b>" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "a &amp; b" in html
    assert "&lt;b&gt;Title&lt;/b&gt;" in html and "&lt;i&gt;ds&lt;/i&gt;" in html


@pytest.mark.parametrize("task", ["binary-class", "multi-label, binary-class", "ordinal-regression"])
def test_other_tasks_render(task):
    y, s = _data(task, n=150)
    k = 2 if task == "binary-class" else 4
    names = [f"finding {i}" for i in range(k)]
    m = evaluate_classification(y, s, task, names, n_bootstrap=0)
    html = render_report(title="t", run_info={}, metrics=m, class_names=names)
    assert f"ACC {m['acc']:.3f}" in html and f"AUC {m['auc']:.3f}" in html
    assert "No confidence intervals" in html
    assert "Training curves" not in html
    if task == "multi-label, binary-class":
        assert "Found (TP)" in html  # per-label counts table instead of a C x C heat map
    if task == "binary-class":
        assert "positive class, <em>finding 1</em>" in html


def test_undefined_auc_and_nan_values_render():
    y = np.array([0, 1, 0, 1, 1, 0, 0, 1])
    s = np.full((8, 3), 0.1)
    s[np.arange(8), y] = 0.8
    m = evaluate_classification(y, s, "multi-class", ["a", "b", "never seen"], n_bootstrap=20)
    html = render_report(title="t", run_info={"dataset": "x"}, metrics=m)  # class names from metrics
    assert "AUC is undefined for never seen" in html
    assert "—" in html  # undefined cells
    m2 = dict(m, ece=float("nan"), auc=float("nan"))  # NaN instead of None must work too
    assert "Calibration could not be computed" in render_report(title="t", run_info={}, metrics=m2)


def test_calibration_sentence_direction():
    from meddx.report.classification import calibration_sentence

    over = {
        "ece": 0.2,
        "reliability": {"mode": "top-label", "confidence": [0.9], "accuracy": [0.7], "count": [10]},
    }
    under = {
        "ece": 0.2,
        "reliability": {"mode": "top-label", "confidence": [0.5], "accuracy": [0.7], "count": [1]},
    }
    good = {
        "ece": 0.01,
        "reliability": {"mode": "top-label", "confidence": [0.9], "accuracy": [0.89], "count": [1]},
    }
    assert "over-confident" in calibration_sentence(over) and "poorly calibrated" in calibration_sentence(
        over
    )
    assert "under-confident" in calibration_sentence(under)
    assert "ECE 0.010" in calibration_sentence(good) and "well calibrated" in calibration_sentence(good)


def test_img_tag():
    tag = img_tag(b"\x89PNGfake", alt='a "b" <c>', width=300)
    assert tag.startswith('<img src="data:image/png;base64,')
    assert 'alt="a &quot;b&quot; &lt;c&gt;"' in tag and 'width="300"' in tag


def test_plots_return_png(multiclass_metrics):
    m = multiclass_metrics
    assert plots.plot_confusion_matrix(m["confusion"], m["class_names"]).startswith(PNG)
    assert plots.plot_roc_curves(m["roc"]).startswith(PNG)
    assert plots.plot_reliability(m["reliability"], m["ece"]).startswith(PNG)
    assert plots.plot_training_curves(HISTORY).startswith(PNG)


def test_training_curves_plot_whatever_exists():
    assert plots.plot_training_curves([]) is None
    assert plots.plot_training_curves([{"epoch": 1}, {"epoch": 2}]) is None
    only_loss = [{"train_loss": 1.0}, {"train_loss": 0.5, "note": "text"}, {"train_loss": math.nan}]
    assert plots.plot_training_curves(only_loss).startswith(PNG)
    partial = [{"epoch": 1, "val_auc": 0.7}, {"epoch": 2, "val_auc": None, "lr": 0.01}]
    assert plots.plot_training_curves(partial).startswith(PNG)
