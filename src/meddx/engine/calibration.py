"""After training: a classifier's probabilities settled on validation (Platt or vector scaling), folded into its
head.

A small set trained to a low loss is often mis-calibrated: on BreastMNIST the shipped models called the majority
class too often at p = 0.5 (the ACC-best validation threshold on p(benign) was 0.6-0.9), and on the phantom's
3,000-image binary set validation ACC was 0.84 at an AUC of 0.94. Platt scaling fits ``sigmoid(a * logit + b)`` to
the validation labels (:func:`meddx.metrics.calibration.fit_platt`); ``a > 0`` keeps the ranking, so AUC is
unchanged, while the 0.5 threshold (MedMNIST's ACC, ``meddx predict``'s label) moves to where validation says.

* binary: one map of the logit difference (logits ``z0, z1`` -> ``a z0, a z1 + b``: the softmax then gives
  ``sigmoid(a (z1 - z0) + b)``);
* multi-label: one map per label (``z_j`` -> ``a_j z_j + b_j``), each label's sigmoid its own binary problem;
  labels that cannot be fitted (too few positives on validation, perfectly separated) keep their logit;
* multi-class and ordinal: vector scaling, ``softmax(a * z + b)`` with one ``a_k > 0`` and ``b_k`` per class
  (:func:`meddx.metrics.calibration.fit_vector_scaling`). Unlike the two above it can change the argmax and a
  class's one-vs-rest ranking: it was adopted because it raised ACC on validation by cross-fitting without
  lowering AUC (RESULTS).

Every map is an affine map of each output logit, folded into the head's last linear layer, so every runtime that
reads the checkpoint (PyTorch, ONNX, int8, the server) gives the calibrated probabilities without knowing of it.
The choice and its numbers: benchmarks/RESULTS.md, "Binary decision threshold settled on validation" and
"Multi-label and multi-class outputs settled on validation".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from meddx.metrics.calibration import MIN_PER_CLASS

METHODS = {BINARY: "platt", MULTI_LABEL: "platt-per-label", MULTI_CLASS: "vector-scaling",
           ORDINAL: "vector-scaling"}
NOT_FITTED = {  # why a fit was refused, as calibration.json says it (meddx.metrics.calibration)
    "platt": f"fewer than {MIN_PER_CLASS} validation images of a class, classes perfectly separated, or the slope "
             "not positive",
    "platt-per-label": f"no label could be fitted: each has fewer than {MIN_PER_CLASS} validation positives or "
                       "negatives, is perfectly separated, or its slope is not positive",
    "vector-scaling": f"fewer than {MIN_PER_CLASS} validation images of a class, or every validation image already "
                      "right"}


def calibrate_shipped(run: Any, cfg: Any, data: Any, device: torch.device, batch_size: int = 512) -> dict | None:
    """Calibrate the shipped model (``best.safetensors``) on ``data.val``; rewrite it with the map folded into
    its head and ``meta["calibration"]``; write ``calibration.json``. None when nothing applies (a kind without a
    map, ``--calibrate none``, ``--select last``: the end-of-schedule checkpoint is kept as trained)."""
    if cfg.calibrate == "none" or data.task not in METHODS or cfg.select != "best" or not run.best.is_file():
        return None
    from meddx.engine.checkpoint import load_model, save_checkpoint

    method, y_true = METHODS[data.task], data.val.labels.numpy()
    y_true = y_true if data.task == MULTI_LABEL else y_true.reshape(-1)
    if len(y_true) == 0:
        info = {"method": method, "applied": False, "n_val": 0, "reason": "no validation images"}
        run.write_json(run.path / "calibration.json", info)
        return info
    model, meta = load_model(run.best, device)
    head = _head(model, meta["model"], data.num_classes)
    logits = _val_logits(model, meta, data, device, batch_size)
    fitted = _fit(data.task, y_true, logits) if head is not None else None
    info: dict[str, Any] = {"method": method, "applied": fitted is not None, "n_val": int(len(y_true)),
                            "before": _summary(y_true, logits, meta)}
    if fitted is None:
        info["reason"] = ("the head is not one linear layer with one output per class" if head is None else
                          NOT_FITTED[method])
    else:
        fold_affine(head, *_affine(data.task, fitted))
        mapping = {"method": method} | _composed(meta.get("calibration"), fitted)
        # "after" is scored on the folded model itself (not derived from the map): it is what ships
        after = _val_logits(model, meta, data, device, batch_size)
        info |= mapping | {"after": _summary(y_true, after, meta)}
        save_checkpoint(run.best, model, meta | {"calibration": mapping})
    run.write_json(run.path / "calibration.json", info)
    return info


def _fit(kind: str, y_true: np.ndarray, logits: np.ndarray) -> dict[str, Any] | None:
    """The map fitted on validation, as recorded: binary ``scale``/``shift`` of the logit difference;
    multi-class/ordinal lists of them per class; multi-label lists per label, with ``fitted`` saying which labels
    were (the others keep scale 1, shift 0). None when nothing could be fitted."""
    from meddx.metrics.calibration import fit_platt, fit_platt_per_label, fit_vector_scaling

    if kind == BINARY:
        pair = fit_platt(y_true, logits[:, 1] - logits[:, 0])
        return None if pair is None else {"scale": pair[0], "shift": pair[1]}
    if kind != MULTI_LABEL:
        vector = fit_vector_scaling(y_true, logits)
        return None if vector is None else {"scale": vector[0], "shift": vector[1]}
    pairs = fit_platt_per_label(y_true, logits)
    if all(p is None for p in pairs):
        return None
    return {"scale": [p[0] if p else 1.0 for p in pairs], "shift": [p[1] if p else 0.0 for p in pairs],
            "fitted": [p is not None for p in pairs]}


def _affine(kind: str, fitted: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Per output logit, the scale and shift that realise ``fitted`` (binary: the shift on class 1's logit)."""
    if kind == BINARY:
        return [fitted["scale"]] * 2, [0.0, fitted["shift"]]
    return fitted["scale"], fitted["shift"]


def fold_affine(head: nn.Linear, scale: Any, shift: Any) -> None:
    """Output logit k -> ``scale[k] * z_k + shift[k]``, by rewriting the head's weights and bias."""
    s = torch.as_tensor(scale, dtype=head.weight.dtype)
    t = torch.as_tensor(shift, dtype=head.weight.dtype)
    with torch.no_grad():
        head.weight.mul_(s[:, None])
        head.bias.mul_(s).add_(t)


def _composed(earlier: dict[str, Any] | None, fitted: dict[str, Any]) -> dict[str, Any]:
    """The map from the trained logit when the checkpoint was calibrated before (a finished run resumed and shipped
    again with its peak epoch): ``a2 (a1 z + b1) + b2``, per label for multi-label."""
    if not earlier:
        return fitted
    a1, b1 = np.asarray(earlier["scale"]), np.asarray(earlier["shift"])
    a2, b2 = np.asarray(fitted["scale"]), np.asarray(fitted["shift"])
    out = fitted | {"scale": (a2 * a1).tolist(), "shift": (a2 * b1 + b2).tolist()}
    if "fitted" in earlier:
        out["fitted"] = [bool(x or y) for x, y in zip(earlier["fitted"], fitted["fitted"])]
    return out


def _head(model: nn.Module, name: str, n_outputs: int) -> nn.Linear | None:
    from meddx.models import get_model_spec

    head = model.get_submodule(get_model_spec(name).head)
    ok = isinstance(head, nn.Linear) and head.out_features == n_outputs and head.bias is not None
    return head if ok else None


class _RawOutputs:
    """A stand-in task for :func:`meddx.models.inference.predict` that keeps the head's raw logits (vector scaling
    needs them: softmax probabilities fix the logits only up to a constant per image)."""

    @staticmethod
    def probabilities(out: torch.Tensor) -> torch.Tensor:
        return out


def _val_logits(model: nn.Module, meta: dict[str, Any], data: Any, device: torch.device,
                batch_size: int) -> np.ndarray:
    from meddx.data.augment import Normalization
    from meddx.models.inference import predict

    norm = Normalization(**meta["normalization"])
    out = predict(model, data.val.images, _RawOutputs(), norm, batch_size=batch_size, device=device)[0]
    return out.astype(np.float64)


def _summary(y_true: np.ndarray, logits: np.ndarray, meta: dict[str, Any]) -> dict[str, float]:
    """Validation ACC (MedMNIST's: argmax, or 0.5 for binary and multi-label), negative log-likelihood
    (multi-label: mean over labels) and ECE (in-sample once fitted: the map was fitted here)."""
    from sklearn.metrics import log_loss

    from meddx.metrics.calibration import compute_ece
    from meddx.metrics.scores import compute_acc
    from meddx.tasks import task_from_meta

    task = task_from_meta(meta)
    p = task.probabilities(torch.from_numpy(logits)).numpy()
    if task.kind == MULTI_LABEL:
        nll = np.mean([log_loss(y_true[:, j], p[:, j], labels=[0, 1]) for j in range(y_true.shape[1])])
    else:
        nll = log_loss(y_true, p, labels=list(range(p.shape[1])))
    return {"acc": compute_acc(y_true, p, task.kind), "nll": float(nll), "ece": compute_ece(y_true, p, task.kind)}
