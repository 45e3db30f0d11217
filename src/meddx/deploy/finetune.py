"""Fine-tunes after compression: precise BatchNorm re-estimation and a short fine-tune on the engine's epoch
runner (:func:`meddx.engine.loop.run_epoch`), keeping the state with the best validation metric."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from meddx.data.augment import Normalization
from meddx.engine.averaging import recalibrate_bn
from meddx.engine.config import TrainConfig, augment_policy, batch_size_for
from meddx.engine.loop import EpochSettings, run_epoch


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps in one fine-tune epoch (full batches, at least one; a batch never exceeds the images)."""
    return max(1, n_train // max(1, min(batch_size, n_train)))


@dataclass
class FinetunePlan:
    """A short AdamW (or SGD with momentum, ``optimizer="sgd"``) + cosine fine-tune: ``epochs`` at ``lr``,
    at most ``max_train`` training images per epoch; BatchNorm statistics re-estimated after each epoch
    (``bn_recalibration``; off for QAT, whose BatchNorms are folded); ``keep_start`` counts the starting state
    as a candidate (QAT starts from the calibrated int8 model, which a fine-tune must beat)."""

    epochs: int
    lr: float
    max_train: int | None = None
    seed: int = 0
    device: str = "cpu"
    bn_recalibration: bool = True
    optimizer: str = "adamw"
    keep_start: bool = False


def finetune(model: torch.nn.Module, data: Any, task: Any, norm: Normalization, cfg: TrainConfig,
             plan: FinetunePlan | None = None, **plan_fields: Any) -> list[dict[str, Any]]:
    """Fine-tune ``model`` by ``plan`` (or :class:`FinetunePlan` fields as keywords) with the run's augmentation;
    keeps the state with the best validation metric. The kept entry of the returned history has
    ``"kept": True`` (epoch -1: the start)."""
    plan = replace(plan, **plan_fields) if plan is not None else FinetunePlan(**plan_fields)
    epochs, lr, max_train, seed, device = plan.epochs, plan.lr, plan.max_train, plan.seed, plan.device
    bn_recalibration, optimizer, keep_start = plan.bn_recalibration, plan.optimizer, plan.keep_start
    if epochs <= 0:
        return []
    policy = augment_policy(cfg, data.modality)
    train = data.train
    if max_train and max_train < len(train):
        train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:max_train])
    batch = min(batch_size_for(cfg, task), len(train))
    steps = steps_per_epoch(len(train), batch) * epochs
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.SGD(params, lr=lr, momentum=0.9) if optimizer == "sgd"
           else torch.optim.AdamW(params, lr=lr, weight_decay=0.0))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * min(s / steps, 1.0))))
    history, best, best_state, kept = [], -np.inf, None, None
    if keep_start:
        val = task.validate(model, data.val, norm, device=torch.device(device), batch_size=cfg.eval_batch_size)
        history.append({"epoch": -1, **{f"val_{k}": v for k, v in val.items()}})
        best, best_state, kept = val[task.monitor], copy.deepcopy(model.state_dict()), 0
    dev = torch.device(device)
    settings = EpochSettings(norm, batch, cfg.eval_batch_size, dev, policy)
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 7919 + epoch)

        def precise_bn(epoch: int = epoch) -> None:
            recalibrate_bn(model, data.train.images, norm, device=device, policy=policy, seed=seed + epoch)

        row = run_epoch(model, task, (train, data.val), opt, sched, settings, gen,
                        after_train=precise_bn if bn_recalibration else None)
        history.append({"epoch": epoch, **row})
        score = row[f"val_{task.monitor}"]
        if not np.isnan(score) and score > best:
            best, best_state, kept = score, copy.deepcopy(model.state_dict()), len(history) - 1
    if best_state is not None:
        model.load_state_dict(best_state)
        history[kept]["kept"] = True
    model.eval()
    return history
