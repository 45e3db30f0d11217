"""Detection metrics: COCO-style mAP for 2D boxes (pycocotools) and FROC / CPM for nodules (LUNA16).

Boxes are ``[x1, y1, x2, y2]`` in pixels (inclusive-exclusive, so width is ``x2 - x1``). A prediction is a
dict with ``boxes`` (k, 4), ``scores`` (k,) and ``labels`` (k,) class indices; a ground truth is a dict
with ``boxes`` and ``labels``.

FROC is hand-written because no installed library implements it: it follows the LUNA16 evaluation
script (``noduleCADEvaluationLUNA16.py``): a candidate is a hit when its centre lies within the radius
of a reference nodule; of several hits on one nodule only the best-scoring one counts, the others are
ignored (neither true nor false positives); every candidate hitting no nodule is a false positive.
Sensitivities at 1/8 .. 8 false positives per scan are read off the FROC curve by linear interpolation
(as ``np.interp`` in the LUNA16 script), and CPM is their mean.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from meddx.errors import MeddxError
from meddx.metrics.bootstrap import bootstrap_ci

FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def coco_map(ground_truth: Sequence[dict[str, Any]], predictions: Sequence[dict[str, Any]],
             class_names: Sequence[str]) -> dict[str, Any]:
    """COCO mAP@[.5:.95], mAP@0.5, mAP@0.75 and per-class AP@0.5 with pycocotools' ``COCOeval``.

    ``ground_truth`` and ``predictions`` are per-image lists of the same length. Classes without any
    ground-truth box are left out of the means (COCO's rule); AP is 101-point interpolated.
    """
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError:
        raise MeddxError("detection metrics need pycocotools (pip install 'meddx[detection]')") from None
    if len(ground_truth) != len(predictions):
        raise MeddxError(f"{len(ground_truth)} ground-truth images but {len(predictions)} predictions")
    images, anns, dets = [], [], []
    for i, (gt, pr) in enumerate(zip(ground_truth, predictions)):
        images.append({"id": i + 1})
        for box, label in zip(np.asarray(gt["boxes"], float).reshape(-1, 4), np.asarray(gt["labels"]).reshape(-1)):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(label) + 1, "iscrowd": 0,
                         "bbox": [float(box[0]), float(box[1]), float(w), float(h)], "area": float(w * h)})
        for box, score, label in zip(np.asarray(pr["boxes"], float).reshape(-1, 4),
                                     np.asarray(pr["scores"], float).reshape(-1),
                                     np.asarray(pr["labels"]).reshape(-1)):
            dets.append({"image_id": i + 1, "category_id": int(label) + 1, "score": float(score),
                         "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    out: dict[str, Any] = {"n_images": len(images), "n_boxes": len(anns), "n_detections": len(dets)}
    present = sorted({a["category_id"] - 1 for a in anns})
    if not dets or not anns:
        return out | {"map": 0.0, "map50": 0.0, "map75": 0.0,
                      "ap50_per_class": {class_names[k]: 0.0 for k in present}}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns,
                        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)]}
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(dets), "bbox")
        evaluator.params.maxDets = [1, 10, max(100, max(len(p["scores"]) for p in predictions))]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)

    def ap(iou_index: slice | int, k: int) -> float:
        p = precision[iou_index, :, k, 0, -1]
        p = p[p > -1]
        return float(p.mean()) if p.size else 0.0

    per_class50 = {class_names[k]: ap(0, k) for k in present}
    return out | {
        "map": float(np.mean([ap(slice(None), k) for k in present])),
        "map50": float(np.mean(list(per_class50.values()))),
        "map75": float(np.mean([ap(5, k) for k in present])),
        "ap50_per_class": per_class50,
        "ap_per_class": {class_names[k]: ap(slice(None), k) for k in present},
    }


def froc(candidates: Sequence[dict[str, Any]], nodules: Sequence[dict[str, Any]],
         fp_rates: Sequence[float] = FROC_FP_RATES) -> dict[str, Any]:
    """FROC analysis over scans: LUNA16 hit criterion, sensitivities at ``fp_rates`` and CPM.

    ``candidates[i]``: ``centres`` (k, d) and ``scores`` (k,) for scan ``i``; ``nodules[i]``: ``centres``
    (m, d) and ``diameters`` (m,), all in the same units (voxels or mm). Returns ``sensitivity`` (per FP
    rate), ``cpm``, the curve (``fps``, ``sens``) and counts.
    """
    if len(candidates) != len(nodules):
        raise MeddxError(f"{len(candidates)} scans of candidates but {len(nodules)} scans of nodules")
    n_scans = len(nodules)
    total = int(sum(len(np.asarray(n["diameters"]).reshape(-1)) for n in nodules))
    best_hit: list[float] = []  # per detected nodule: the best score of a candidate hitting it
    fp_scores: list[float] = []
    for cand, ref in zip(candidates, nodules):
        scores = np.asarray(cand["scores"], float).reshape(-1)
        radii = np.asarray(ref["diameters"], float).reshape(-1) / 2.0
        if len(radii) == 0 or len(scores) == 0:
            fp_scores.extend(scores.tolist())
            continue
        centres = np.asarray(cand["centres"], float).reshape(len(scores), -1)
        ref_c = np.asarray(ref["centres"], float).reshape(len(radii), -1)
        dist = np.sqrt(((centres[:, None, :] - ref_c[None, :, :]) ** 2).sum(-1))
        hits = dist <= radii[None, :]  # (candidates, nodules)
        fp_scores.extend(scores[~hits.any(1)].tolist())
        for j in range(len(radii)):
            if hits[:, j].any():
                best_hit.append(float(scores[hits[:, j]].max()))
    thresholds = np.unique(np.concatenate([best_hit, fp_scores]))[::-1] if (best_hit or fp_scores) else np.zeros(0)
    tp_sorted, fp_sorted = np.sort(best_hit), np.sort(fp_scores)
    # counts of scores >= t, via searchsorted on ascending arrays
    tp = len(tp_sorted) - np.searchsorted(tp_sorted, thresholds, side="left")
    fp = len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")
    fps = np.concatenate([[0.0], fp / max(n_scans, 1)])
    sens = np.concatenate([[0.0], tp / total if total else np.zeros(len(tp))])
    last = np.r_[fps[1:] != fps[:-1], True]  # one point per FP rate (the highest sensitivity), for np.interp
    fps, sens = fps[last], sens[last]
    at = {float(r): float(np.interp(r, fps, sens)) for r in fp_rates}
    return {
        "sensitivity": at,
        "cpm": float(np.mean(list(at.values()))) if at else float("nan"),
        "fps": fps.tolist(), "sens": sens.tolist(),
        "n_scans": n_scans, "n_nodules": total, "n_detected": len(best_hit),
        "n_candidates": len(best_hit) + len(fp_scores), "max_sensitivity": float(sens[-1]) if total else float("nan"),
    }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes ``[lo..., hi...]`` in any dimension (2D: x1 y1 x2 y2; 3D: z1 y1 x1 z2 y2 x2)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a.shape[-1] // 2
    lo = np.maximum(a[:, None, :d], b[None, :, :d])
    hi = np.minimum(a[:, None, d:], b[None, :, d:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    va, vb = (a[:, d:] - a[:, :d]).prod(-1), (b[:, d:] - b[:, :d]).prod(-1)
    return inter / np.maximum(va[:, None] + vb[None, :] - inter, 1e-12)


def nodule_reference(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """FROC reference of one scan: the given centres/diameters, else box centres and mean box side."""
    if "centres" in t:
        return {"centres": t["centres"], "diameters": t["diameters"]}
    boxes = np.asarray(t["boxes"], np.float32).reshape(-1, 6)
    return {"centres": (boxes[:, :3] + boxes[:, 3:]) / 2 - 0.5, "diameters": (boxes[:, 3:] - boxes[:, :3]).mean(1)}


def cpm_bootstrap(dets: list[dict[str, np.ndarray]], refs: list[dict[str, np.ndarray]], n_bootstrap: int = 1000,
                  seed: int = 0) -> list[float]:
    """95% percentile-bootstrap interval of CPM over scans (as the LUNA16 evaluation does).

    Scans are resampled by :func:`meddx.metrics.bootstrap.bootstrap_ci`; resamples without nodules are skipped.
    """
    if not refs or n_bootstrap < 1:
        return [math.nan] * 2

    def cpm(rows: np.ndarray, _: np.ndarray) -> float:
        m = froc([dets[i] for i in rows], [refs[i] for i in rows])
        return m["cpm"] if m["n_nodules"] else math.nan

    index = np.arange(len(refs))
    return list(bootstrap_ci(index, index, cpm, n_bootstrap, alpha=0.05, seed=seed))
