"""``fit(config)``: data -> model -> epochs of train/validate -> checkpoints, resumable after a crash."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from meddx.data import DataBundle, load_data
from meddx.data.augment import POLICIES, Normalization
from meddx.engine import distributed, recipe
from meddx.engine.averaging import TailAverage, make_ema, recalibrate_bn
from meddx.engine.calibration import calibrate_shipped
from meddx.engine.checkpoint import model_state, read_checkpoint, restore_optimizer, save_checkpoint
from meddx.engine.config import TrainConfig, augment_policy
from meddx.engine.loop import EpochSettings, run_epoch
from meddx.engine.progress import EpochProgress
from meddx.engine.run import RunDir
from meddx.engine.selection import finish
from meddx.errors import Interrupted, MeddxError
from meddx.models import DEFAULT_MODEL, create_model, get_model_spec, load_pretrained
from meddx.tasks import task_for_training
from meddx.utils.checkpoints import FORMAT
from meddx.utils.runtime import pick_device, seed_everything


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module, steps_per_epoch: int, epochs: int):
    """AdamW or SGD(momentum, nesterov) with warmup + cosine or multistep decay, stepped per batch."""
    lr = cfg.resolved_lr()
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


def positive_class(cfg: TrainConfig, data: DataBundle) -> int | None:
    """The binary finding's class id (``--positive-class``, else the data set's declared finding)."""
    from meddx.metrics.operating import data_positive_class  # sklearn: only when needed

    return data_positive_class(data, cfg.positive_class)


def checkpoint_meta(cfg: TrainConfig, data: DataBundle, norm: Normalization, kind: str,
                    epoch: int, metric: float) -> dict[str, Any]:
    """Everything needed to rebuild the model and preprocess a new image, stored with the weights
    (format :data:`meddx.utils.checkpoints.FORMAT`; older formats are upgraded when read)."""
    return {
        "format": FORMAT, "model": cfg.model, "task": cfg.task, "kind": kind, "classes": data.class_names,
        "num_outputs": data.num_classes, "in_channels": data.in_channels, "input_size": data.image_size[0],
        "image_shape": list(data.image_size), "spatial_dims": data.spatial_dims, "normalization": norm.to_dict(),
        "modality": data.modality, "dataset": data.name, "epoch": epoch, "monitor_value": metric,
        "input_dtype": str(data.train.images.dtype).replace("torch.", ""),
        "spacing": data.extra.get("spacing"),  # mm per pixel/voxel where known (segmentation resamples to it)
        "patch": cfg.patch,  # segmentation's sliding-window side (None: the task's default)
        # how the training files' pixels became the stored values (16-bit range, DICOM window, ...): prediction
        # applies the same mapping (meddx.data.intensity)
        "intensity_mapping": data.extra.get("intensity_mapping"),
        "positive_class": positive_class(cfg, data),  # binary: the finding's class id
        "label_smoothing": cfg.label_smoothing,  # the loss a reloaded model reports is the one validation logged
        "degrade": cfg.degrade,  # reconstruction: the simulated degradation
    }


@dataclass
class Training:
    """What the epoch loop works on, built once per ``fit`` call (fresh, or restored from ``last``)."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: torch.optim.swa_utils.AveragedModel | None
    norm: Normalization
    policy: Any
    device: torch.device
    steps: int  # optimiser steps per epoch
    epochs: int  # planned epochs (a time budget may lower it)
    average: TailAverage | None = None  # the tail average (meddx.engine.averaging), shipped when it validates


@dataclass
class Progress:
    """Where the run stands: next epoch, best monitored value, epochs since it improved, the history rows."""

    start_epoch: int = 0
    best: float = -math.inf
    stale: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def record(self, row: dict[str, Any], score: float) -> bool:
        """Append ``row``; True when ``score`` beats the best so far (NaN never does)."""
        self.history.append(row)
        improved = not math.isnan(score) and score > self.best
        self.best, self.stale = (score, 0) if improved else (self.best, self.stale + 1)
        return improved


def fit(cfg: TrainConfig, resume: str | Path | None = None, data: DataBundle | None = None,
        console: Any = None) -> RunDir:
    """Train according to ``cfg`` (or continue the run folder ``resume``); return the run folder.

    Ctrl-C raises :class:`meddx.errors.Interrupted` naming the checkpoint that exists (or saying none does).
    """
    resume = distributed.resume_after_restart(cfg, resume)  # torchrun --max-restarts: continue the run
    run, cfg = (RunDir.open(resume), None) if resume is not None else (None, cfg)
    cfg = cfg or TrainConfig.load(run.config)
    cfg.validate()
    device = distributed.setup(pick_device(cfg.device))  # joins the process group when torchrun started us
    seed_everything(cfg.seed)
    data = data or load_data(cfg.data, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed, task=cfg.task)
    recipe.resolve_losses(cfg, data)  # label smoothing; stored resolved in config.json
    task = task_for_training(cfg, data)
    if cfg.model == DEFAULT_MODEL and task.default_model:  # e.g. detection: a detector
        cfg.model = task.default_model
    cfg.batch_size = recipe.resolve_batch_size(cfg, data, task)  # stored resolved, so a resume uses the same
    restart = run is None or not run.last.is_file()  # a run interrupted before its first checkpoint starts over
    training = build_training(cfg, data, task, device, pretrained=restart)
    if restart:
        run = RunDir(distributed.start_on_main(start_run, run, cfg, data, training))  # rank 0 writes
        progress = Progress()
    else:
        progress = restore_training(run, training, task.monitor)
    task = distributed.wrap_task(task, training.model, device, cfg)  # DDP: sharded batches, gathered validation
    try:
        train_epochs(run, cfg, data, task, training, progress, console)
    except KeyboardInterrupt:
        raise Interrupted(interrupt_message(run)) from None
    distributed.shutdown()
    return run


def build_training(cfg: TrainConfig, data: DataBundle, task: Any, device: torch.device,
                   pretrained: bool = True) -> Training:
    """Model (with ``cfg.pretrained`` weights when ``pretrained``), optimiser, schedule, EMA and augmentation."""
    policy = augment_policy(cfg, data.modality)
    if cfg.augment not in ("auto", "none") and policy is None:
        raise MeddxError(f"unknown augmentation policy {cfg.augment!r}; available: auto, {', '.join(POLICIES)}")
    if cfg.augment == "auto" and policy is not None:
        policy = policy.scaled(recipe.augment_strength(len(data.train)))
    epochs = cfg.epochs or recipe.planned_epochs(len(data.train), data.spatial_dims, cfg.batch_size,
                                                 task.default_steps)
    model = create_model(cfg.model, data.in_channels, task.num_outputs, data.image_size[0], data.spatial_dims)
    if cfg.pretrained and pretrained:
        load_pretrained(model, cfg.pretrained, get_model_spec(cfg.model).head)
    model.to(device)
    steps = max(1, len(data.train) // cfg.batch_size)
    optimizer, scheduler = build_optimizer(cfg, model, steps, epochs)
    if cfg.ema_decay > 0 and not task.is_classifier:  # same reason as the tail average below
        raise MeddxError(f"--ema-decay is for classification runs (its BatchNorm is re-estimated on the training "
                         f"images); this is a {task.name} run")
    ema = make_ema(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    # the tail average's BatchNorm is re-estimated on the training images themselves: only a classifier takes
    # them as its input (segmentation crops patches, registration/reconstruction build inputs in make_batch)
    tail = cfg.average == "tail" and task.is_classifier
    average = TailAverage(model, recipe.tail_start(epochs)) if tail else None
    return Training(model, optimizer, scheduler, ema, Normalization.fit(data.train.images), policy, device,
                    steps, epochs, average)


def start_run(run: RunDir | None, cfg: TrainConfig, data: DataBundle, training: Training) -> RunDir:
    """A new run folder (or the given one, started over) with ``config.json`` and ``data.json``."""
    if run is None:
        run = RunDir.create(cfg.out, cfg.name, f"{data.name}-{cfg.model}")
    run.write_json(run.config, cfg.to_dict())
    run.write_json(run.data, data.summary() | {"normalization": training.norm.to_dict(),
                                               "augmentation": training.policy.to_dict() if training.policy else None,
                                               "epochs": training.epochs,
                                               "positive_class": positive_class(cfg, data),
                                               "intensity_mapping": data.extra.get("intensity_mapping")})
    run.write_history([])
    return run


def restore_training(run: RunDir, training: Training, monitor: str) -> Progress:
    """Load weights, optimiser, schedule and EMA from ``last``; the history up to it."""
    tensors, meta, state = read_checkpoint(run.last)
    live = {k[len("live."):]: v for k, v in tensors.items() if k.startswith("live.")}
    training.model.load_state_dict(live or model_state(tensors))
    restore_optimizer(training.optimizer, tensors, state)
    extra = state["extra"]
    training.scheduler.load_state_dict(extra["scheduler"])
    # a time budget may have shortened the schedule
    training.epochs = int(training.scheduler.lr_lambdas[0].total // training.steps)
    if training.ema is not None:
        training.ema.module.load_state_dict(model_state(tensors))
        training.ema.n_averaged.fill_(int(extra.get("ema_n", 0)))
    if training.average is not None:
        training.average.start = recipe.tail_start(training.epochs)
        training.average.load_state_tensors(tensors)
    start = meta["epoch"] + 1
    if start >= training.epochs:
        raise MeddxError(f"run already finished all {training.epochs} epochs; nothing to resume", run.path)
    history = [r for r in run.read_history() if r["epoch"] < start]
    stale = 0
    if history:
        best_epoch = max(history, key=lambda r: r.get(f"val_{monitor}", -math.inf))["epoch"]
        stale = history[-1]["epoch"] - best_epoch
    return Progress(start, extra["best"], stale, history)


def train_epochs(run: RunDir, cfg: TrainConfig, data: DataBundle, task: Any, training: Training,
                 progress: Progress, console: Any = None) -> None:
    """The loop: one epoch, its checkpoints and history row, early stopping and the time budget."""
    writer = _tensorboard(run.path) if cfg.tensorboard and distributed.is_main() else None
    patience = cfg.patience or math.inf
    start = progress.start_epoch
    with EpochProgress(training.epochs, training.steps, enabled=cfg.progress, console=console) as bar:
        planner = time_budget(cfg, data, training, bar, progress.start_epoch, task.default_minutes)
        settings = EpochSettings(training.norm, cfg.batch_size, cfg.eval_batch_size, training.device,
                                 training.policy, cfg.amp, _both(bar.step, planner and planner.on_step), training.ema)
        epoch = start
        while epoch < training.epochs:
            torch.manual_seed(cfg.seed * 100_003 + epoch)  # dropout etc.: identical after a resume
            gen = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
            bar.start_epoch(epoch)
            row = {"epoch": epoch, **run_epoch(training.model, task, (data.train, data.val), training.optimizer,
                                               training.scheduler, settings, gen, _ema_bn(training, data, epoch))}
            row["train_loss"] = distributed.mean_over_ranks(row["train_loss"])
            if training.average is not None:
                training.average.update(training.model, epoch)
            score = row[f"val_{task.monitor}"]
            improved = progress.record(row, score)
            distributed.on_main(save_epoch, run, cfg, data, training, progress, improved, score)
            _log_scalars(writer, row)
            bar.end_epoch(row, task.monitor, improved)
            if progress.stale >= patience:
                bar.note(f"early stop: no {task.monitor} gain on validation for {patience} epochs")
                break
            if planner is not None:
                planner.after_epoch(epoch + 1 - start, start)
            epoch += 1
        ship(run, cfg, data, task, training, progress, bar)
    if writer is not None:
        writer.close()


def time_budget(cfg: TrainConfig, data: DataBundle, training: Training, bar: Any,
                start: int = 0, task_minutes: float | None = None) -> recipe.BudgetPlanner | None:
    """The planner that fits the schedule to ``--max-minutes`` (or, for the automatic schedule, the default
    budget: :func:`meddx.engine.recipe.budget_seconds`); None when neither applies."""
    budget = recipe.budget_seconds(cfg.max_minutes, data.spatial_dims, task_minutes)
    if budget is None or (not cfg.max_minutes and cfg.epochs):
        return None
    planner = recipe.BudgetPlanner(budget, training.steps,
                                   training.epochs, lambda n: shorten_schedule(training, n, bar),
                                   len(data.val) / max(1, len(data.train)),
                                   recipe.EPOCH_FLOOR.get(data.spatial_dims, 1) if not cfg.max_minutes else 1, start,
                                   agree=distributed.broadcast_json)  # DDP: rank 0's plan on every rank
    planner.start()
    return planner


def shorten_schedule(training: Training, epochs: int, bar: Any) -> None:
    """Lower the planned epochs; the warm-up and learning-rate decay are fitted to the new length."""
    lam = training.scheduler.lr_lambdas[0]
    training.epochs, lam.total = epochs, training.steps * epochs
    lam.warm = min(lam.warm, max(1, lam.total // 10))
    if training.average is not None:
        training.average.start = recipe.tail_start(epochs)
    bar.set_epochs(epochs)
    bar.note(f"time budget: schedule fitted to {epochs} epochs")


def ship(run: RunDir, cfg: TrainConfig, data: DataBundle, task: Any, training: Training, progress: Progress,
         bar: Any) -> None:
    """The selection rule (:mod:`meddx.engine.selection`): the tail average goes to ``best`` when it validates
    within 0.02 of the peak epoch; ``selection.json`` records why."""
    def save_best(model: torch.nn.Module, score: float) -> None:
        meta = checkpoint_meta(cfg, data, training.norm, data.task, progress.history[-1]["epoch"], score)
        distributed.on_main(save_checkpoint, run.best, model, meta | {"averaged_epochs": training.average.count})

    chosen = finish(progress.history, task, data, training, save_best, cfg.eval_batch_size)
    distributed.on_main(run.write_json, run.path / "selection.json", chosen.to_dict())
    bar.note(f"shipped ({cfg.select} -> best.safetensors): {chosen.shipped}, validation {task.monitor} "
             f"{chosen.shipped_score:.4f} (peak {chosen.peak_score:.4f})")
    calibrated = distributed.on_main(calibrate_shipped, run, cfg, data, training.device, cfg.eval_batch_size)
    if calibrated and calibrated["applied"]:
        bar.note(f"calibrated ({calibrated['method']}, validation): ACC {calibrated['before']['acc']:.3f} -> "
                 f"{calibrated['after']['acc']:.3f}, NLL {calibrated['before']['nll']:.3f} -> "
                 f"{calibrated['after']['nll']:.3f}")
    elif calibrated:
        bar.note(f"not calibrated: {calibrated['reason']} (calibration.json)")


def _both(*callbacks: Any) -> Any:
    live = [c for c in callbacks if c]
    return lambda *a: [c(*a) for c in live]


def _ema_bn(training: Training, data: DataBundle, epoch: int) -> Any:
    """After an epoch: the EMA's BatchNorm statistics re-estimated on training images (it averages weights only)."""
    if training.ema is None:
        return None
    return lambda: recalibrate_bn(training.ema.module, data.train.images, training.norm, n=2048,
                                  device=training.device, policy=training.policy, seed=epoch)


def save_epoch(run: RunDir, cfg: TrainConfig, data: DataBundle, training: Training, progress: Progress,
               improved: bool, score: float) -> None:
    """``best`` when the monitored metric improved, ``last`` always (with optimiser state), the history."""
    row = progress.history[-1]
    eval_model = training.ema.module if training.ema is not None else training.model
    meta = checkpoint_meta(cfg, data, training.norm, data.task, row["epoch"], score)
    if improved:
        save_checkpoint(run.best, eval_model, meta)
    # last.safetensors: "model.*" is the evaluation model (the EMA when used), "live.*" the raw weights
    live = {f"live.{k}": v for k, v in training.model.state_dict().items()} if training.ema is not None else {}
    live |= training.average.state_tensors() if training.average is not None else {}
    ema_n = int(training.ema.n_averaged) if training.ema is not None else 0
    save_checkpoint(run.last, eval_model, meta, training.optimizer,
                    {"scheduler": training.scheduler.state_dict(), "best": progress.best, "ema_n": ema_n}, live)
    run.write_history(progress.history)


def interrupt_message(run: RunDir) -> str:
    """What Ctrl-C leaves behind, truthfully: the checkpoint that exists, or that none does."""
    history = run.read_history()
    if run.last.is_file() and history:
        return (f"interrupted; epoch {history[-1]['epoch'] + 1} is saved in {run.last} "
                f"(continue with --resume {run.path})")
    return (f"interrupted before the first epoch ended; no checkpoint was saved (--resume {run.path} "
            "starts the run over)")


def _log_scalars(writer: Any, row: dict[str, Any]) -> None:
    if writer is not None:
        for k, v in row.items():
            if k != "epoch" and isinstance(v, float):
                writer.add_scalar(k, v, row["epoch"])


def _tensorboard(path: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise MeddxError("--tensorboard needs the tensorboard package (pip install 'meddx[tensorboard]')") from None
    return SummaryWriter(str(path / "tensorboard"))
