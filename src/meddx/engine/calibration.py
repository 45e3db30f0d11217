"""After training: a binary classifier's probabilities settled on validation (Platt scaling), folded into its head.

A small set trained to a low loss is often mis-calibrated: on BreastMNIST the shipped models called the majority
class too often at p = 0.5 (the ACC-best validation threshold on p(benign) was 0.6-0.9), and on the phantom's
3,000-image binary set validation ACC was 0.84 at an AUC of 0.94. Platt scaling fits ``sigmoid(a * logit + b)`` to
the validation labels (:func:`meddx.metrics.calibration.fit_platt`); ``a > 0`` keeps the ranking, so AUC is
unchanged, while the 0.5 threshold (MedMNIST's ACC, ``meddx predict``'s label) moves to where validation says.
The map is folded into the head's last linear layer (logits ``z0, z1`` -> ``a z0, a z1 + b``: the softmax then
gives ``sigmoid(a (z1 - z0) + b)``), so every runtime that reads the checkpoint (PyTorch, ONNX, int8, the server)
gives the calibrated probabilities without knowing of it. The choice and its numbers: benchmarks/RESULTS.md,
"Binary decision threshold settled on validation".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn

from meddx.kinds import BINARY


def calibrate_shipped(run: Any, cfg: Any, data: Any, device: torch.device, batch_size: int = 512) -> dict | None:
    """Platt-scale the shipped binary model (``best.safetensors``) on ``data.val``; rewrite it with the map folded
    into its head and ``meta["calibration"]``; write ``calibration.json``. None when nothing applies (not binary,
    ``--calibrate none``, ``--select last``: the end-of-schedule checkpoint is kept as trained)."""
    if cfg.calibrate == "none" or data.task != BINARY or cfg.select != "best" or not run.best.is_file():
        return None
    from meddx.engine.checkpoint import load_model, save_checkpoint
    from meddx.metrics.calibration import binary_logit, fit_platt

    y_true = data.val.labels.numpy().reshape(-1)
    if len(y_true) == 0:
        info = {"method": "platt", "applied": False, "n_val": 0, "reason": "no validation images"}
        run.write_json(run.path / "calibration.json", info)
        return info
    model, meta = load_model(run.best, device)
    head = _head(model, meta["model"])
    before = _val_scores(model, meta, data, device, batch_size)
    fitted = fit_platt(y_true, binary_logit(before)) if head is not None else None
    info: dict[str, Any] = {"method": "platt", "applied": fitted is not None, "n_val": int(len(y_true)),
                            "before": _summary(y_true, before)}
    if fitted is None:
        info["reason"] = ("the head is not one linear layer with 2 outputs" if head is None else
                          "validation too small or perfectly separated, or the slope is not positive")
    else:
        fold_into_head(head, *fitted)
        scale, shift = _composed(meta.get("calibration"), *fitted)
        # "after" is scored on the folded model itself (not derived from the map): it is what ships
        info |= {"scale": scale, "shift": shift,
                 "after": _summary(y_true, _val_scores(model, meta, data, device, batch_size))}
        save_checkpoint(run.best, model, meta | {"calibration": {"method": "platt", "scale": scale, "shift": shift}})
    run.write_json(run.path / "calibration.json", info)
    return info


def fold_into_head(head: nn.Linear, scale: float, shift: float) -> None:
    """Logits (z0, z1) -> (scale * z0, scale * z1 + shift): class 1's softmax becomes
    ``sigmoid(scale * (z1 - z0) + shift)``."""
    with torch.no_grad():
        head.weight.mul_(scale)
        head.bias.mul_(scale)
        head.bias[1] += shift


def _composed(earlier: dict[str, Any] | None, scale: float, shift: float) -> tuple[float, float]:
    """The map from the trained logit when the checkpoint was calibrated before (a finished run resumed and shipped
    again with its peak epoch): ``a2 (a1 z + b1) + b2``."""
    if not earlier:
        return scale, shift
    return scale * earlier["scale"], scale * earlier["shift"] + shift


def _head(model: nn.Module, name: str) -> nn.Linear | None:
    from meddx.models import get_model_spec

    head = model.get_submodule(get_model_spec(name).head)
    ok = isinstance(head, nn.Linear) and head.out_features == 2 and head.bias is not None
    return head if ok else None


def _val_scores(model: nn.Module, meta: dict[str, Any], data: Any, device: torch.device,
                batch_size: int) -> np.ndarray:
    from meddx.data.augment import Normalization
    from meddx.models.inference import predict
    from meddx.tasks import task_from_meta

    norm = Normalization(**meta["normalization"])
    return predict(model, data.val.images, task_from_meta(meta), norm, batch_size=batch_size, device=device)[0]


def _summary(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Validation ACC at 0.5 (MedMNIST's), negative log-likelihood and ECE (in-sample once fitted: the map was
    fitted here)."""
    from sklearn.metrics import log_loss

    from meddx.metrics.calibration import compute_ece
    from meddx.metrics.scores import compute_acc

    return {"acc": compute_acc(y_true, y_score, BINARY),
            "nll": float(log_loss(y_true, y_score[:, 1].astype(np.float64), labels=[0, 1])),
            "ece": compute_ece(y_true, y_score, BINARY)}
