"""Classification metrics: MedMNIST definitions, per-class numbers, calibration, bootstrap, input errors."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from meddx.errors import MeddxError
from meddx.metrics import (
    ClassificationMetric,
    acc_metric,
    auc_metric,
    auc_per_class,
    bootstrap_ci,
    compute_acc,
    compute_auc,
    compute_ece,
    confusion,
    evaluate_classification,
    per_class_metrics,
    predict_labels,
    reliability_bins,
)
from meddx.metrics.bootstrap import bootstrap_replicates

BIN, MC, ML, ORD = "binary-class", "multi-class", "multi-label, binary-class", "ordinal-regression"


# --- reference implementation, written from medmnist/evaluator.py's definitions ---------------------------


def ref_get_auc(y_true, y_score, task):
    y_true = np.squeeze(np.asarray(y_true))
    y_score = np.asarray(y_score)
    if task == ML:
        total = 0.0
        for i in range(y_score.shape[1]):
            total += roc_auc_score(y_true[:, i], y_score[:, i])
        return total / y_score.shape[1]
    if task == BIN:
        if y_score.ndim == 2:
            y_score = y_score[:, -1]
        return roc_auc_score(y_true, y_score)
    total = 0.0
    for i in range(y_score.shape[1]):
        total += roc_auc_score((y_true == i).astype(float), y_score[:, i])
    return total / y_score.shape[1]


def ref_get_acc(y_true, y_score, task, threshold=0.5):
    y_true = np.squeeze(np.asarray(y_true))
    y_score = np.asarray(y_score)
    if task == ML:
        y_pre = y_score > threshold
        total = 0.0
        for i in range(y_true.shape[1]):
            total += accuracy_score(y_true[:, i], y_pre[:, i])
        return total / y_true.shape[1]
    if task == BIN:
        if y_score.ndim == 2:
            y_score = y_score[:, -1]
        return accuracy_score(y_true, y_score > threshold)
    return accuracy_score(y_true, np.argmax(y_score, axis=-1))


def make_data(task: str, n: int = 300, c: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fixed, seeded, informative scores; ``y_true`` as MedMNIST stores it ((N, 1) or (N, C))."""
    rng = np.random.default_rng(seed)
    if task == ML:
        y = (rng.random((n, c)) < 0.3).astype(np.int64)
        s = 1 / (1 + np.exp(-(2.0 * y - 1 + rng.normal(size=(n, c)))))
        return y, s
    k = 2 if task == BIN else c
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k))
    logits[np.arange(n), y] += 1.2
    s = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y[:, None], s


# --- MedMNIST equivalence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [BIN, MC, ML, ORD])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference_implementation(task, seed):
    y, s = make_data(task, seed=seed)
    assert compute_auc(y, s, task) == pytest.approx(ref_get_auc(y, s, task), abs=1e-12)
    assert compute_acc(y, s, task) == pytest.approx(ref_get_acc(y, s, task), abs=1e-12)
    assert compute_acc(y, s, task, threshold=0.3) == pytest.approx(ref_get_acc(y, s, task, 0.3), abs=1e-12)


def test_binary_accepts_1d_and_single_column_scores():
    y, s = make_data(BIN)
    for scores in (s[:, 1], s[:, 1:]):
        assert compute_auc(y, scores, BIN) == pytest.approx(ref_get_auc(y, s, BIN))
        assert compute_acc(y, scores, BIN) == pytest.approx(ref_get_acc(y, s, BIN))


def test_hand_checked_binary():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.4, 0.35, 0.8])
    # pairs (pos, neg): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 -> 3/4; predictions 0,0,0,1 -> 3/4 right
    assert compute_auc(y, np.stack([1 - p, p], 1), BIN) == pytest.approx(0.75)
    assert compute_acc(y, p, BIN) == pytest.approx(0.75)
    assert predict_labels(p, BIN).tolist() == [0, 0, 0, 1]


@pytest.mark.parametrize("task", [MC, ORD])
def test_hand_checked_multiclass(task):
    y = np.array([0, 1, 2, 2])
    s = np.array([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.1, 0.3, 0.6], [0.3, 0.4, 0.3]])
    # class 0: 1.0; class 1: 1.0; class 2: positives .6,.3 vs negatives .1,.3 -> (1+1+1+0.5)/4 = 0.875
    assert auc_per_class(y, s, task) == pytest.approx([1.0, 1.0, 0.875])
    assert compute_auc(y, s, task) == pytest.approx((1 + 1 + 0.875) / 3)
    assert predict_labels(s, task).tolist() == [0, 1, 2, 1]
    assert compute_acc(y, s, task) == pytest.approx(0.75)


def test_hand_checked_multilabel():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.2, 0.7]])
    # column 0: AUC 1, acc 1; column 1: AUC 2/4, predictions 0,1,0,1 vs 0,1,1,0 -> acc 2/4
    assert compute_auc(y, s, ML) == pytest.approx(0.75)
    assert compute_acc(y, s, ML) == pytest.approx(0.75)
    assert predict_labels(s, ML).tolist() == [[1, 0], [0, 1], [1, 0], [0, 1]]


# --- per-class metrics and confusion ------------------------------------------------------------------------


def _from_confusion(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and one-hot-ish scores whose argmax reproduces the confusion matrix ``cm``."""
    ys, scores = [], []
    k = len(cm)
    for t in range(k):
        for p in range(k):
            for _ in range(cm[t, p]):
                row = np.full(k, 0.1 / (k - 1))
                row[p] = 0.9
                ys.append(t)
                scores.append(row)
    return np.array(ys), np.array(scores)


def test_per_class_sensitivity_specificity_on_hand_made_confusion():
    cm = np.array([[5, 1, 0], [2, 3, 1], [0, 0, 4]])  # 16 samples
    y, s = _from_confusion(cm)
    assert confusion(y, s, MC).tolist() == cm.tolist()
    rows = per_class_metrics(y, s, MC, ["a", "b", "c"])
    expect = {  # name: (sensitivity, specificity, precision, support)
        "a": (5 / 6, 8 / 10, 5 / 7, 6),  # TP 5, FN 1, FP 2, TN 8
        "b": (3 / 6, 9 / 10, 3 / 4, 6),  # TP 3, FN 3, FP 1, TN 9
        "c": (4 / 4, 11 / 12, 4 / 5, 4),  # TP 4, FN 0, FP 1, TN 11
    }
    for r in rows:
        sens, spec, prec, support = expect[r["name"]]
        assert r["sensitivity"] == pytest.approx(sens)
        assert r["recall"] == pytest.approx(sens)
        assert r["specificity"] == pytest.approx(spec)
        assert r["precision"] == pytest.approx(prec)
        assert r["f1"] == pytest.approx(2 * prec * sens / (prec + sens))
        assert r["support"] == support
        assert r["tp"] + r["fp"] + r["fn"] + r["tn"] == 16
        assert set(r) >= {"name", "precision", "recall", "f1", "sensitivity", "specificity", "support", "auc"}


def test_binary_per_class_is_symmetric():
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.2, 0.6, 0.3, 0.7, 0.8, 0.4, 0.9])
    neg, pos = per_class_metrics(y, p, BIN, ["healthy", "disease"])
    assert pos["sensitivity"] == pytest.approx(3 / 4) and pos["specificity"] == pytest.approx(2 / 3)
    assert neg["sensitivity"] == pytest.approx(pos["specificity"])
    assert neg["specificity"] == pytest.approx(pos["sensitivity"])
    assert pos["auc"] == pytest.approx(compute_auc(y, p, BIN))
    assert confusion(y, p, BIN).tolist() == [[2, 1], [1, 3]]


def test_multilabel_per_class_and_confusion():
    y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    s = np.array([[0.9, 0.2], [0.4, 0.6], [0.6, 0.4], [0.2, 0.7]])
    cm = confusion(y, s, ML)
    assert cm.shape == (2, 2, 2)
    assert cm[1].tolist() == [[1, 1], [1, 1]]  # [[tn, fp], [fn, tp]]
    a, b = per_class_metrics(y, s, ML, ["x", "y"])
    assert (a["sensitivity"], a["specificity"], a["support"], a["auc"]) == (1.0, 1.0, 2, 1.0)
    assert (b["sensitivity"], b["specificity"], b["support"], b["auc"]) == (0.5, 0.5, 2, 0.5)


@pytest.mark.filterwarnings("error")
def test_absent_class_gives_nan_auc_without_warnings():
    y = np.array([0, 1, 0, 1, 1, 0])  # class 2 never occurs
    s = np.array(
        [[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.5, 0.2, 0.3], [0.3, 0.3, 0.4], [0.1, 0.8, 0.1], [0.4, 0.4, 0.2]]
    )
    per = auc_per_class(y, s, MC)
    assert np.isnan(per[2]) and np.isfinite(per[:2]).all()
    assert compute_auc(y, s, MC) == pytest.approx(per[:2].mean())
    rows = per_class_metrics(y, s, MC, ["a", "b", "c"])
    assert np.isnan(rows[2]["auc"]) and np.isnan(rows[2]["sensitivity"]) and rows[2]["support"] == 0
    out = evaluate_classification(y, s, MC, ["a", "b", "c"], n_bootstrap=50)
    assert out["auc_undefined_classes"] == ["c"]
    assert out["per_class"][2]["auc"] is None
    assert "c" not in out["roc"]
    json.dumps(out, allow_nan=False)  # strict JSON: undefined values are null


@pytest.mark.filterwarnings("error")
def test_single_class_binary_auc_is_nan():
    y = np.zeros(5, dtype=int)
    p = np.array([0.1, 0.2, 0.7, 0.4, 0.3])
    assert np.isnan(compute_auc(y, p, BIN))
    out = evaluate_classification(y, p, BIN, ["neg", "pos"], n_bootstrap=20)
    assert out["auc"] is None and out["auc_ci"] == [None, None]
    assert out["auc_undefined_classes"] == ["neg", "pos"]
    assert out["acc"] == pytest.approx(0.8)


# --- calibration --------------------------------------------------------------------------------------------


def test_ece_hand_made_top_label():
    y = np.array([0, 2, 1, 1])
    s = np.array([[0.85, 0.10, 0.05], [0.85, 0.05, 0.10], [0.25, 0.65, 0.10], [0.35, 0.33, 0.32]])
    # 10 bins: (0.8,0.9] conf .85 acc .5 (2 items); (0.6,0.7] conf .65 acc 1; (0.3,0.4] conf .35 acc 0
    expect = 0.5 * 0.35 + 0.25 * 0.35 + 0.25 * 0.35
    assert compute_ece(y, s, MC, n_bins=10) == pytest.approx(expect)
    rel = reliability_bins(y, s, MC, n_bins=10)
    assert len(rel["bin_edges"]) == 11 and sum(rel["count"]) == 4
    assert rel["count"][8] == 2 and rel["accuracy"][8] == pytest.approx(0.5)
    assert rel["confidence"][8] == pytest.approx(0.85)
    assert rel["confidence"][0] is None and rel["accuracy"][0] is None
    assert rel["mode"] == "top-label"


def test_ece_binary_uses_confidence_of_prediction():
    y = np.array([1, 0, 0, 1])
    p = np.array([0.9, 0.1, 0.3, 0.2])  # confidences .9 .9 .7 .8, correct T T T F
    # bins (0.8,0.9]: .9,.9 -> acc 1 -> gap .1 (weight .5); (.7,.8]: .8 acc 0 -> .8 (weight .25);
    # (.6,.7]: .7 acc 1 -> .3 (weight .25)
    assert compute_ece(y, p, BIN, n_bins=10) == pytest.approx(0.5 * 0.1 + 0.25 * 0.8 + 0.25 * 0.3)


def test_ece_multilabel_is_mean_of_columns():
    y = np.array([[1, 1], [0, 1], [0, 1], [0, 1]])
    s = np.array([[0.25, 0.8]] * 4)
    # column 0: predicted .25, observed .25 -> 0; column 1: predicted .8, observed 1 -> .2
    assert compute_ece(y, s, ML) == pytest.approx(0.1)
    rel = reliability_bins(y, s, ML)
    assert rel["mode"] == "positive-rate" and sum(rel["count"]) == 8


def test_perfect_confidence_has_zero_ece():
    y = np.array([0, 1, 2])
    assert compute_ece(y, np.eye(3), MC) == pytest.approx(0.0)


# --- bootstrap ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", [BIN, MC, ML, ORD])
def test_bootstrap_batched_matches_plain_loop(task):
    y, s = make_data(task, n=120, seed=3)
    for fast, slow in (
        (auc_metric(task), lambda a, b: compute_auc(a, b, task)),
        (acc_metric(task), lambda a, b: compute_acc(a, b, task)),
    ):
        r_fast = bootstrap_replicates(y, s, fast, n_bootstrap=40, seed=5)
        r_slow = bootstrap_replicates(y, s, slow, n_bootstrap=40, seed=5)
        np.testing.assert_allclose(r_fast, r_slow, rtol=0, atol=1e-12)


def test_bootstrap_ci_contains_estimate_and_is_deterministic():
    y, s = make_data(MC, n=400, seed=1)
    metric = auc_metric(MC)
    point = compute_auc(y, s, MC)
    lo, hi = bootstrap_ci(y, s, metric, n_bootstrap=300, seed=7)
    assert lo < point < hi and hi - lo < 0.2
    assert bootstrap_ci(y, s, metric, n_bootstrap=300, seed=7) == (lo, hi)
    assert bootstrap_ci(y, s, metric, n_bootstrap=300, seed=8) != (lo, hi)
    lo90, hi90 = bootstrap_ci(y, s, metric, n_bootstrap=300, alpha=0.1, seed=7)
    assert lo <= lo90 and hi90 <= hi


def _strict_auc(y_true, y_score):
    if len(np.unique(y_true)) < 2:
        raise ValueError("Only one class present in y_true")
    return roc_auc_score(y_true, y_score)


def test_bootstrap_skips_undefined_resamples():
    y = np.array([0, 0, 0, 0, 0, 0, 0, 1])  # one positive: about a third of resamples lose it
    p = np.linspace(0.1, 0.9, 8)
    reps = bootstrap_replicates(y, p, _strict_auc, n_bootstrap=200, seed=0)
    assert 20 < np.isnan(reps).sum() < 150  # the undefined resamples, skipped by bootstrap_ci
    lo, hi = bootstrap_ci(y, p, _strict_auc, n_bootstrap=200, seed=0)
    assert np.isfinite([lo, hi]).all() and 0 <= lo <= hi <= 1
    assert bootstrap_ci(y, p, auc_metric(BIN), n_bootstrap=200, seed=0) == pytest.approx((lo, hi))  # NaN path
    assert np.isnan(bootstrap_ci(np.zeros(5), p[:5], _strict_auc, n_bootstrap=20)).all()


def test_bootstrap_1000x1000_auc_batched_path():
    """1000 resamples of 1000 rows go through the batched AUC (no per-resample sklearn call), and its replicates
    equal sklearn's AUC on the same resamples."""
    y, s = make_data(BIN, n=1000, seed=2)
    metric = auc_metric(BIN)
    lo, hi = bootstrap_ci(y, s, metric, n_bootstrap=1000)
    assert lo < compute_auc(y, s, BIN) < hi
    reps = bootstrap_replicates(y, s, metric, n_bootstrap=1000)
    assert reps.shape == (1000,) and np.isfinite(reps).all()
    assert (lo, hi) == pytest.approx(tuple(np.percentile(reps, [2.5, 97.5])))
    from meddx.metrics.bootstrap import resample_indices

    first = next(resample_indices(len(y), 1000))[:5]  # the same draws the batched path scored
    assert reps[:5] == pytest.approx([roc_auc_score(y[r], np.asarray(s)[r][:, -1]) for r in first])


# --- full evaluation and the accumulator --------------------------------------------------------------------


@pytest.mark.parametrize("task", [BIN, MC, ML, ORD])
def test_evaluate_classification_payload(task):
    y, s = make_data(task, n=600, c=4, seed=4)
    k = 2 if task == BIN else 4
    names = [f"class {i}" for i in range(k)]
    out = evaluate_classification(y, s, task, names, n_bootstrap=100, seed=0)
    keys = "task n acc auc acc_ci auc_ci ece per_class confusion macro roc reliability auc_undefined_classes"
    assert set(keys.split()) <= set(out)
    assert out["n"] == 600 and out["kind"] == task and out["task"] == "classification"
    assert out["acc"] == pytest.approx(ref_get_acc(y, s, task))
    assert out["auc"] == pytest.approx(ref_get_auc(y, s, task))
    assert out["acc_ci"][0] <= out["acc"] <= out["acc_ci"][1]
    assert out["auc_ci"][0] <= out["auc"] <= out["auc_ci"][1]
    assert [r["name"] for r in out["per_class"]] == names
    assert set(out["macro"]) >= {"precision", "recall", "f1"}
    assert np.asarray(out["confusion"]).shape == ((k, 2, 2) if task == ML else (k, k))
    assert set(out["roc"]) == ({names[-1]} if task == BIN else set(names))
    for curve in out["roc"].values():
        assert 2 <= len(curve["fpr"]) == len(curve["tpr"]) <= 200
        assert curve["fpr"][0] == 0.0 and curve["tpr"][-1] == 1.0
    json.dumps(out, allow_nan=False)


def test_evaluate_without_bootstrap_has_no_ci():
    y, s = make_data(MC, n=50)
    out = evaluate_classification(y, s, MC, None, n_bootstrap=0)
    assert out["acc_ci"] is None and out["auc_ci"] is None
    assert out["class_names"] == ["0", "1", "2", "3", "4"]


@pytest.mark.parametrize("task", [BIN, MC, ML])
def test_accumulator_equals_one_shot(task):
    y, s = make_data(task, n=250, seed=6)
    names = [f"c{i}" for i in range(2 if task == BIN else 5)]
    metric = ClassificationMetric(task, names)
    for start in range(0, 250, 64):
        metric.update(y[start : start + 64], s[start : start + 64])
    assert len(metric) == 250
    assert metric.compute(n_bootstrap=50, seed=1) == evaluate_classification(
        y, s, task, names, n_bootstrap=50, seed=1
    )
    metric.reset()
    with pytest.raises(MeddxError, match="no data"):
        metric.compute()


def test_accumulator_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    y, s = make_data(MC, n=100, seed=2)
    metric = ClassificationMetric(MC)
    metric.update(torch.from_numpy(y[:50]), torch.from_numpy(s[:50]).to(torch.bfloat16).float())
    metric.update(torch.from_numpy(y[50:]), torch.from_numpy(s[50:]).requires_grad_())
    assert metric.compute()["acc"] == pytest.approx(compute_acc(y, s, MC), abs=0.02)
    exact = ClassificationMetric(MC)  # float64 tensors keep full precision
    exact.update(torch.from_numpy(y[:30]), torch.from_numpy(s[:30]))
    exact.update(torch.from_numpy(y[30:]), torch.from_numpy(s[30:]).requires_grad_())
    assert exact.compute() == evaluate_classification(y, s, MC, None, n_bootstrap=0)


# --- bad inputs ---------------------------------------------------------------------------------------------


def _err(fn, *args, **kwargs) -> str:
    with pytest.raises(MeddxError) as exc:
        fn(*args, **kwargs)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_bad_inputs_raise_one_line_errors():
    y, s = make_data(MC, n=10, c=3)
    assert "unknown task 'multiclass'" in _err(compute_auc, y, s, "multiclass")
    assert _err(compute_acc, y, s[:9], MC) == "y_true has 10 rows but y_score has 9"
    bad = s.copy()
    bad[4, 1] = np.nan
    assert "NaN/inf" in _err(compute_auc, y, bad, MC) and "row 4" in _err(compute_auc, y, bad, MC)
    bad[4, 1] = np.inf
    assert "NaN/inf" in _err(compute_acc, y, bad, MC)
    y5 = y.copy()
    y5[3] = 5
    assert _err(compute_auc, y5, s, MC) == "label 5 out of range for 3 classes"
    y5[3] = -1
    assert _err(per_class_metrics, y5, s, MC, ["a", "b", "c"]) == "label -1 out of range for 3 classes"
    assert "label 2 out of range for 2 classes" == _err(
        compute_auc, np.array([0, 1, 2]), np.full(3, 0.5), BIN
    )
    assert "integer" in _err(compute_auc, np.array([0.0, 1.5, 1.0]), s[:3], MC)
    assert "one-hot" in _err(compute_auc, np.eye(3)[y.ravel()], s, MC)
    assert "1 or 2 columns, got 3" in _err(compute_auc, y, s, BIN)
    yb, pb = np.array([0, 1, 1]), np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert "3 class names given" in _err(evaluate_classification, yb, pb, BIN, ["a", "b", "c"])
    assert "unique" in _err(evaluate_classification, y, s, MC, ["a", "a", "b"], n_bootstrap=0)
    assert "probabilities in [0, 1], found -" in _err(evaluate_classification, y, s * 6 - 3.5, MC, None, 0)
    assert "logits" in _err(compute_ece, y, s * 6 - 3.5, MC)
    assert "empty" in _err(compute_auc, np.array([], dtype=int), np.zeros((0, 3)), MC)


def test_bad_multilabel_inputs():
    y, s = make_data(ML, n=8, c=3)
    assert "must be 0/1, found 2" in _err(compute_auc, y * 2, s, ML)
    assert "shape (N, 3)" in _err(compute_auc, y[:, :2], s, ML)


def test_accumulator_bad_batches():
    m = ClassificationMetric(MC)
    assert "rows" in _err(m.update, np.zeros(4), np.zeros((3, 3)))
    m.update(np.zeros(2), np.full((2, 3), 1 / 3))
    assert "earlier batches" in _err(m.update, np.zeros(2), np.full((2, 4), 0.25))
    assert "unknown task" in _err(ClassificationMetric, "regression")


def test_no_warnings_on_normal_use():
    y, s = make_data(MC, n=200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_classification(y, s, MC, None, n_bootstrap=20)
