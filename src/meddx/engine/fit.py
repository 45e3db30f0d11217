"""``fit(config)``: data -> model -> epochs of train/validate -> checkpoints, resumable after a crash."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from meddx.data import DataBundle, load_data
from meddx.data.augment import POLICIES, Normalization
from meddx.engine.checkpoint import model_state, read_checkpoint, restore_optimizer, save_checkpoint
from meddx.engine.config import TrainConfig, augment_policy, auto_epochs, batch_size_for
from meddx.engine.loop import train_one_epoch
from meddx.engine.progress import EpochProgress
from meddx.engine.run import RunDir
from meddx.errors import MeddxError
from meddx.models import DEFAULT_MODEL, create_model, get_model_spec, load_pretrained
from meddx.tasks import task_for_training
from meddx.utils.runtime import pick_device, seed_everything


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int, epochs: int):
    """AdamW or SGD(momentum, nesterov) with warmup + cosine or multistep decay, stepped per batch."""
    lr = cfg.lr or (2e-3 if cfg.optimizer == "adamw" else 0.05)
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on norms and biases
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # foreach=True: PyTorch picks the per-tensor loop on CPU by default, which costs ~10x more per step
    # for a ResNet's ~60 small tensors than the multi-tensor kernels.
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, foreach=True)
    else:
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, foreach=True)
    schedule = WarmupSchedule(cfg.schedule, total=max(1, steps_per_epoch * epochs),
                              warm=steps_per_epoch * cfg.warmup_epochs)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


class WarmupSchedule:
    """Linear warm-up, then cosine (or x0.1 at 50%/75%) decay over ``total`` steps.

    A callable object rather than a lambda so that ``LambdaLR.state_dict`` saves its fields (JSON-able),
    and so that ``total`` can shrink when a time budget cuts the run short (the decay still completes).
    """

    def __init__(self, kind: str, total: int, warm: int) -> None:
        self.kind, self.total, self.warm = kind, total, min(total // 2, warm)

    def __call__(self, step: int) -> float:
        if step < self.warm:
            return (step + 1) / self.warm
        t = min(1.0, (step - self.warm) / max(1, self.total - self.warm))
        if self.kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return 0.1 ** sum(t >= m for m in (0.5, 0.75))


def checkpoint_meta(cfg: TrainConfig, data: DataBundle, norm: Normalization, task_kind: str,
                    epoch: int, metric: float) -> dict[str, Any]:
    """Everything needed to rebuild the model and preprocess a new image, stored with the weights."""
    return {
        "format": 1, "model": cfg.model, "task": cfg.task, "task_kind": task_kind, "classes": data.class_names,
        "num_outputs": data.num_classes, "in_channels": data.in_channels, "input_size": data.image_size[0],
        "image_shape": list(data.image_size), "spatial_dims": data.spatial_dims, "normalization": norm.to_dict(),
        "modality": data.modality, "dataset": data.name, "epoch": epoch, "monitor_value": metric,
        "input_dtype": str(data.train.images.dtype).replace("torch.", ""),
        "spacing": data.extra.get("spacing"),  # mm per pixel/voxel where known (segmentation resamples to it)
        "patch": cfg.patch,  # segmentation's sliding-window side (None: the task's default)
    }


def fit(cfg: TrainConfig, resume: str | Path | None = None, data: DataBundle | None = None,
        console: Any = None) -> RunDir:
    """Train according to ``cfg`` (or continue the run folder ``resume``); return the run folder."""
    if resume is not None:
        run = RunDir.open(resume)
        cfg = TrainConfig.load(run.config)
    else:
        cfg.validate()
        run = None
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    data = data or load_data(cfg.data, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed, task=cfg.task)
    task = task_for_training(cfg, data)
    if cfg.model == DEFAULT_MODEL and task.default_model:  # e.g. detection: a detector
        cfg.model = task.default_model
    cfg.batch_size = batch_size_for(cfg, task)  # stored resolved in config.json, so a resume uses the same number
    norm = Normalization.fit(data.train.images)
    policy = augment_policy(cfg, data.modality)
    if cfg.augment not in ("auto", "none") and policy is None:
        raise MeddxError(f"unknown augmentation policy {cfg.augment!r}; available: auto, {', '.join(POLICIES)}")
    epochs = cfg.epochs or auto_epochs(len(data.train))
    patience = cfg.patience or math.inf

    spec = get_model_spec(cfg.model)
    model = create_model(cfg.model, data.in_channels, task.num_outputs, data.image_size[0], data.spatial_dims)
    if cfg.pretrained and resume is None:
        load_pretrained(model, cfg.pretrained, spec.head)
    model.to(device)
    steps = max(1, len(data.train) // cfg.batch_size)
    optimizer, scheduler = build_optimizer(cfg, model, steps, epochs)
    ema = None
    if cfg.ema_decay > 0:
        ema = torch.optim.swa_utils.AveragedModel(
            model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(cfg.ema_decay))

    history: list[dict[str, Any]] = []
    start_epoch, best = 0, -math.inf
    if run is None:
        run = RunDir.create(cfg.out, cfg.name, f"{data.name}-{cfg.model}")
        run.write_json(run.config, cfg.to_dict())
        run.write_json(run.data, data.summary() | {"normalization": norm.to_dict(),
                                                   "augmentation": policy.to_dict() if policy else None,
                                                   "epochs": epochs})
    else:
        tensors, meta, state = read_checkpoint(run.last)
        live = {k[len("live."):]: v for k, v in tensors.items() if k.startswith("live.")}
        model.load_state_dict(live or model_state(tensors))
        restore_optimizer(optimizer, tensors, state)
        extra = state["extra"]
        scheduler.load_state_dict(extra["scheduler"])
        epochs = int(scheduler.lr_lambdas[0].total // steps)  # a time budget may have shortened the schedule
        if ema is not None:
            ema.module.load_state_dict(model_state(tensors))
            ema.n_averaged.fill_(int(extra.get("ema_n", 0)))
        start_epoch, best = meta["epoch"] + 1, extra["best"]
        history = [r for r in run.read_history() if r["epoch"] < start_epoch]
        if start_epoch >= epochs:
            raise MeddxError(f"run already finished all {epochs} epochs; nothing to resume", run.path)

    writer = _tensorboard(run.path) if cfg.tensorboard else None
    t0, stale = time.time(), 0
    if history:
        best_epoch = max(history, key=lambda r: r.get(f"val_{task.monitor}", -math.inf))["epoch"]
        stale = history[-1]["epoch"] - best_epoch
    with EpochProgress(epochs, steps, enabled=cfg.progress, console=console) as bar:
        epoch = start_epoch - 1
        while epoch + 1 < epochs:
            epoch += 1
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: identical after a resume
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            bar.start_epoch(epoch)
            tic = time.time()
            stats = train_one_epoch(model, data.train, task, optimizer, scheduler, norm, batch_size=cfg.batch_size,
                                    device=device, policy=policy, generator=gen, amp=cfg.amp,
                                    on_step=bar.step, ema=ema)
            eval_model = ema.module if ema is not None else model
            val = task.validate(eval_model, data.val, norm, device=device, batch_size=cfg.eval_batch_size, amp=cfg.amp)
            row = {"epoch": epoch, **stats, **{f"val_{k}": v for k, v in val.items()},
                   "lr": optimizer.param_groups[0]["lr"], "seconds": round(time.time() - tic, 3)}
            history.append(row)
            score = val[task.monitor]
            improved = not math.isnan(score) and score > best
            if improved:
                best, stale = score, 0
            else:
                stale += 1
            meta = checkpoint_meta(cfg, data, norm, data.task, epoch, score)
            if improved:
                save_checkpoint(run.best, eval_model, meta)
            # last.safetensors: "model.*" is the evaluation model (the EMA when used), "live.*" the raw weights
            live = {f"live.{k}": v for k, v in model.state_dict().items()} if ema is not None else {}
            save_checkpoint(run.last, eval_model, meta, optimizer,
                            {"scheduler": scheduler.state_dict(), "best": best,
                             "ema_n": int(ema.n_averaged) if ema is not None else 0}, live)
            run.write_history(history)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and isinstance(v, float):
                        writer.add_scalar(k, v, epoch)
            bar.end_epoch(row, task.monitor, improved)
            if stale >= patience:
                bar.note(f"early stop: no {task.monitor} gain on validation for {patience} epochs")
                break
            if cfg.max_minutes:
                fits = _epochs_within_budget(cfg.max_minutes * 60, time.time() - t0, epoch + 1 - start_epoch,
                                             start_epoch, epochs)
                if fits < epochs:
                    epochs = fits
                    scheduler.lr_lambdas[0].total = steps * epochs  # finish the decay inside the budget
                    bar.set_epochs(epochs)
                    bar.note(f"time budget of {cfg.max_minutes} min: schedule shortened to {epochs} epochs")
    if writer is not None:
        writer.close()
    return run


def _epochs_within_budget(budget_s: float, elapsed_s: float, done: int, start: int, planned: int) -> int:
    """How many epochs in total fit in ``budget_s``, from the mean time of the ``done`` epochs so far."""
    per_epoch = elapsed_s / max(done, 1)
    return max(start + done, min(planned, int(budget_s / per_epoch) + start))


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MeddxError("--tensorboard needs the tensorboard package (pip install 'meddx[tensorboard]')") from None
    return SummaryWriter(str(path / "tensorboard"))
