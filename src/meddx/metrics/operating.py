"""Operating points of a binary classifier for its FINDING (the positive class), and honesty checks.

* The positive class is the finding (malignant, pneumonia, ...), declared by the data set's metadata or
  chosen at training time; sensitivity, specificity, PPV, NPV and the ROC curve are for that class.
* Thresholds on P(positive) are chosen on a REFERENCE split (the validation split), never on the split being
  scored: Youden's J (max sensitivity + specificity - 1) and the highest threshold whose reference
  sensitivity reaches :data:`TARGET_SENSITIVITY`; each is then applied to the scored split.
* ``default`` (threshold 0.5) uses MedMNIST's hard-prediction rule, the one behind ACC and the confusion matrix.
* :func:`majority_baseline` and :func:`never_predicted` say what a trivial model would score, and which
  classes the model never outputs.

Threshold rule for the chosen thresholds: an image is called positive when ``P(positive) >= threshold``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from meddx.errors import MeddxError
from meddx.kinds import BINARY, MULTI_LABEL
from meddx.metrics._inputs import check_class_names, check_inputs
from meddx.metrics.scores import _defined, _downsample, predict_labels

TARGET_SENSITIVITY = 0.9
THRESHOLD_KEYS = ("0.5", "youden", "sens90")


def _f(x: float) -> float | None:
    return float(x) if np.isfinite(x) else None


def _div(a: float, b: float) -> float | None:
    return float(a / b) if b > 0 else None


def binary_stats(is_pos: np.ndarray, called: np.ndarray) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV (``None`` when undefined) with the four counts."""
    is_pos, called = np.asarray(is_pos, bool), np.asarray(called, bool)
    tp, fn = int((is_pos & called).sum()), int((is_pos & ~called).sum())
    fp, tn = int((~is_pos & called).sum()), int((~is_pos & ~called).sum())
    return {"sensitivity": _div(tp, tp + fn), "specificity": _div(tn, tn + fp), "ppv": _div(tp, tp + fp),
            "npv": _div(tn, tn + fn), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def positive_scores(y_score: np.ndarray, positive: int) -> np.ndarray:
    """P(positive class) from binary scores: ``(N, 2)`` columns, or ``(N,)``/``(N, 1)`` P(class 1)."""
    ys = np.asarray(y_score, dtype=np.float64)
    if ys.ndim == 2 and ys.shape[1] == 2:
        return ys[:, positive]
    p1 = ys.reshape(len(ys), -1)[:, -1]
    return p1 if positive == 1 else 1.0 - p1


def choose_thresholds(is_pos: np.ndarray, score: np.ndarray,
                      target: float = TARGET_SENSITIVITY) -> dict[str, float | None]:
    """Youden's J and target-sensitivity thresholds on P(positive) (``None`` where not computable)."""
    is_pos = np.asarray(is_pos).astype(np.int64)
    if not _defined(is_pos):
        return {"youden": None, "sens90": None}
    fpr, tpr, thr = roc_curve(is_pos, score, drop_intermediate=False)
    thr = np.minimum(thr, 1.0)  # sklearn's first threshold is +inf: "call nothing positive"
    youden = float(thr[int(np.argmax(tpr - fpr))])
    reach = np.flatnonzero(tpr >= target - 1e-12)
    return {"youden": youden, "sens90": float(thr[reach[0]]) if reach.size else None}


def operating_points(y_true: Any, y_score: Any, class_names: Sequence[str] | None = None,
                     positive_class: int | None = None, reference: tuple[Any, Any] | None = None,
                     threshold: float = 0.5) -> dict[str, Any]:
    """Binary-task keys for ``metrics.json``: positive_class, positive_name, sensitivity, specificity, ppv,
    npv (at ``threshold`` by MedMNIST's rule), thresholds {"0.5", "youden", "sens90"} and the positive
    class's ROC curve with its operating points.

    ``positive_class``: the finding's class id (default: the last class). ``reference``: ``(y_true,
    y_score)`` of the split the youden/sens90 thresholds are chosen on; without it they are ``None``.
    """
    c = check_inputs(y_true, y_score, BINARY, require_prob=True)
    names = check_class_names(class_names, c.n_classes)
    pos = 1 if positive_class is None else int(positive_class)
    if pos not in (0, 1):
        raise MeddxError(f"positive class of a binary task must be 0 or 1, got {positive_class}")
    is_pos, score = c.y_true == pos, positive_scores(c.y_score, pos)
    default = binary_stats(is_pos, predict_labels(c.y_score, BINARY, threshold) == pos)
    thresholds: dict[str, Any] = {"0.5": {"threshold": float(threshold), **default}}
    chosen = {"youden": None, "sens90": None}
    if reference is not None:
        r = check_inputs(reference[0], reference[1], BINARY, require_prob=True)
        r_pos, r_score = r.y_true == pos, positive_scores(r.y_score, pos)
        chosen = choose_thresholds(r_pos, r_score)
    for key, t in chosen.items():
        if t is None:
            thresholds[key] = None
            continue
        ref = binary_stats(r_pos, r_score >= t)
        thresholds[key] = {"threshold": t, **binary_stats(is_pos, score >= t), "reference_n": int(len(r_pos)),
                           "reference_sensitivity": ref["sensitivity"], "reference_specificity": ref["specificity"]}
    out = {"positive_class": pos, "positive_name": names[pos],
           **{k: default[k] for k in ("sensitivity", "specificity", "ppv", "npv")}, "thresholds": thresholds}
    if _defined(is_pos.astype(np.int64)):
        fpr, tpr, _ = roc_curve(is_pos.astype(np.int64), score, drop_intermediate=True)
        fl, tl = _downsample(fpr, tpr)
        out["roc"] = {names[pos]: {"fpr": fl, "tpr": tl, "auc": float(roc_auc_score(is_pos, score)),
                                   "points": roc_points(thresholds)}}
    return out


def roc_points(thresholds: dict[str, Any]) -> list[dict[str, Any]]:
    """(1 - specificity, sensitivity) of each threshold with both defined, for marking on the ROC curve."""
    pts = []
    for key, row in thresholds.items():
        if row and row.get("sensitivity") is not None and row.get("specificity") is not None:
            pts.append({"name": key, "threshold": row["threshold"], "fpr": 1.0 - row["specificity"],
                        "tpr": row["sensitivity"]})
    return pts


def majority_baseline(y_true: Any, y_score: Any, task: str, class_names: Sequence[str] | None = None
                      ) -> dict[str, Any]:
    """ACC of always answering the split's most frequent class (per label for multi-label); its AUC is 0.5.

    Counted on the scored split itself, so it is the best any constant answer could do there.
    """
    c = check_inputs(y_true, y_score, task)
    names = check_class_names(class_names, c.n_classes)
    if task == MULTI_LABEL:
        rate = c.y_true.mean(axis=0)
        return {"strategy": "majority", "class": None, "acc": _f(np.maximum(rate, 1 - rate).mean()), "auc": 0.5}
    counts = np.bincount(c.y_true, minlength=c.n_classes)
    k = int(np.argmax(counts))
    return {"strategy": "majority", "class": names[k], "acc": _f(counts[k] / max(1, counts.sum())), "auc": 0.5}


def never_predicted(y_score: Any, task: str, class_names: Sequence[str], threshold: float = 0.5) -> list[str]:
    """Classes (multi-label: findings) the hard predictions never name, by the report's prediction rule."""
    pred = predict_labels(y_score, task, threshold)
    if task == MULTI_LABEL:
        return [n for i, n in enumerate(class_names) if not pred[:, i].any()]
    seen = set(np.unique(pred).tolist())
    return [n for i, n in enumerate(class_names) if i not in seen]


def data_positive_class(data: Any, choice: str | int | None = None) -> int | None:
    """The finding of a binary data bundle: ``choice`` (a class name or id, e.g. ``--positive-class``), else
    the one its metadata declares (``data.extra["positive_class"]``), else the last class. ``None`` for
    other tasks (where ``choice`` must be unset)."""
    names = [str(n) for n in data.class_names]
    if data.task != BINARY:
        if choice not in (None, ""):
            raise MeddxError(f"--positive-class applies to binary tasks; this data set is {data.task}")
        return None
    if choice in (None, ""):
        declared = (data.extra or {}).get("positive_class")
        return int(declared) if declared in (0, 1) else 1
    if str(choice) in names:
        return names.index(str(choice))
    if str(choice).strip() in ("0", "1"):
        return int(str(choice).strip())
    raise MeddxError(f"positive class {choice!r} is not one of this data set's classes: "
                     f"{', '.join(repr(n) for n in names)} (or 0 / 1)")
