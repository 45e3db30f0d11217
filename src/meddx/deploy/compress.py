"""``compress_run`` and ``export_run``: a trained run -> a smaller/faster model, with the accuracy change measured.

``compress_run`` writes a NEW run folder beside the source run:

    <new>/config.json, data.json   copied from the source run (so evaluate/predict/explain work on it)
    <new>/best.safetensors         the compressed PyTorch weights (pruned; QAT-tuned fp32; PTQ: the source's)
    <new>/model.onnx, model_int8.onnx   ptq/qat: the fp32 export and the int8 ONNX Runtime model
    <new>/compress.json            what was done: method, options, source, sizes, sparsity, channels, timings
    <new>/metrics.json             test metrics of the compressed model, beside the source's, and the deltas
"""

from __future__ import annotations

import copy
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.augment import AugmentPolicy, Normalization, random_affine
from meddx.engine.checkpoint import load_model, save_checkpoint
from meddx.engine.config import TrainConfig, augment_policy, batch_size_for
from meddx.engine.evaluate import evaluate_run
from meddx.engine.loop import train_one_epoch
from meddx.engine.run import RunDir
from meddx.errors import MeddxError
from meddx.models.inference import predict
from meddx.tasks import EvalRequest, task_from_meta

METHODS = ("prune", "prune-structured", "ptq", "qat")
INT8_METHODS = ("ptq", "qat")
# Fine-tune learning rates: AdamW for pruning (a heavily pruned net needs more recovery); SGD with momentum for
# QAT, which only nudges weights towards the fp32 model's outputs. Adam moves every weight by about lr per step
# whatever its gradient (its first step is lr * sign(g)); on the int8 grid that drift outweighed the fit: AdamW
# at 1e-7 already changed the BreastMNIST int8 outputs, at 2e-5 it took the validation mean |p - p_fp32| from
# 0.002 to 0.044. Distillation with SGD at 1e-3 lowered it below PTQ's on all six benchmark models (3e-3
# drifted away on two; benchmarks/RESULTS.md).
DEFAULT_LR = {"prune": 2e-4, "prune-structured": 1e-3, "qat": 1e-3, "ptq": 0.0}
OPTIMIZER = {"prune": "adamw", "prune-structured": "adamw", "qat": "sgd", "ptq": "adamw"}
# Structured pruning removes whole channels and needs a real fine-tune: on the MedMNIST benchmark the lengths
# chosen on validation fidelity were 120 (BreastMNIST, 30 epochs of 4 steps) and 216 optimiser steps
# (PneumoniaMNIST, 6 epochs of 36). Counting steps rather than epochs carries to data sets of other sizes.
STRUCTURED_STEPS, MAX_DEFAULT_EPOCHS = 200, 50


def steps_per_epoch(n_train: int, batch_size: int) -> int:
    """Optimiser steps in one fine-tune epoch (full batches, at least one; a batch never exceeds the images)."""
    return max(1, n_train // max(1, min(batch_size, n_train)))


def default_epochs(method: str, n_train: int, batch_size: int) -> int:
    """Fine-tune epochs when none are given: prune-structured enough for about :data:`STRUCTURED_STEPS`
    optimiser steps (at most :data:`MAX_DEFAULT_EPOCHS`), prune and qat one epoch, ptq none."""
    if method == "ptq":
        return 0
    if method != "prune-structured":
        return 1
    return max(1, min(MAX_DEFAULT_EPOCHS, -(-STRUCTURED_STEPS // steps_per_epoch(n_train, batch_size))))


def _load_run_data(cfg: TrainConfig, data_spec: str | None, why: str | None) -> Any:
    from meddx.data import load_data

    spec = data_spec or cfg.data
    try:
        return load_data(spec, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed, task=cfg.task)
    except MeddxError as exc:
        if why is None:
            raise
        raise MeddxError(f"{why} needs the run's training images as calibration data, which cannot be loaded "
                         f"({exc}); pass --data with the data set") from None


def recalibrate_bn(model: torch.nn.Module, images: torch.Tensor, norm: Normalization, n: int = 8192,
                   batch_size: int = 256, device: str = "cpu", policy: AugmentPolicy | None = None,
                   seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics on up to ``n`` training images ("precise BN").

    Pruning changes every layer's activation statistics; a short fine-tune only half-updates the running
    means/variances (momentum 0.1 over a few steps), which leaves the network miscalibrated: AUC intact, but
    every image pushed to one class. ``torch.optim.swa_utils.update_bn`` re-estimates them from scratch as a
    cumulative average. As in precise BN (pycls/fvcore: 8192 samples from the training loader), the images
    pass through the training augmentation ``policy``: the layers after each BatchNorm were trained on
    augmented batches. The sample size matters: on the PneumoniaMNIST benchmark model, re-estimating from
    2,048 clean images alone (no pruning) moved test ACC by 1.3 pt; the full training set by 0.2 pt.
    """
    gen = torch.Generator().manual_seed(seed)
    count = min(n, len(images))
    order = torch.randperm(len(images), generator=gen)[:count] if count < len(images) else torch.arange(count)

    def batches():  # a generator: one batch in memory at a time
        for i in range(0, count, batch_size):
            x = norm(images[order[i:i + batch_size]].to(device))
            yield random_affine(x, policy, gen) if policy is not None else x

    torch.optim.swa_utils.update_bn(batches(), model)
    model.eval()


def finetune(model: torch.nn.Module, data: Any, task: Any, norm: Normalization, cfg: TrainConfig, *, epochs: int,
             lr: float, max_train: int | None = None, seed: int = 0, device: str = "cpu",
             bn_recalibration: bool = True, optimizer: str = "adamw",
             keep_start: bool = False) -> list[dict[str, Any]]:
    """A short AdamW (or SGD with momentum, ``optimizer="sgd"``) + cosine fine-tune with the run's augmentation,
    BatchNorm statistics re-estimated after each epoch (``bn_recalibration``; off for QAT, whose BatchNorms are
    folded); keeps the state with the best validation metric, counting the starting state with ``keep_start``
    (QAT starts from the calibrated int8 model, which a fine-tune must beat). The kept entry of the returned
    history has ``"kept": True`` (epoch -1: the start)."""
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
    for epoch in range(epochs):
        gen = torch.Generator().manual_seed(seed * 7919 + epoch)
        tic = time.time()
        stats = train_one_epoch(model, train, task, opt, sched, norm, batch_size=batch, device=torch.device(device),
                                policy=policy, generator=gen)
        if bn_recalibration:
            recalibrate_bn(model, data.train.images, norm, device=device, policy=policy, seed=seed + epoch)
        val = task.validate(model, data.val, norm, device=torch.device(device), batch_size=cfg.eval_batch_size)
        history.append({"epoch": epoch, **stats, **{f"val_{k}": v for k, v in val.items()},
                        "seconds": round(time.time() - tic, 2)})
        score = val[task.monitor]
        if not np.isnan(score) and score > best:
            best, best_state, kept = score, copy.deepcopy(model.state_dict()), len(history) - 1
    if best_state is not None:
        model.load_state_dict(best_state)
        history[kept]["kept"] = True
    model.eval()
    return history


def headline_metrics(model: torch.nn.Module, task: Any, data: Any, norm: Normalization,
                     cfg: TrainConfig) -> dict[str, float]:
    """Test-set headline metrics of a model, no bootstrap, no files: classification ACC and AUC; otherwise the
    task's monitored metric (Dice, mAP@0.5, CPM) from its own test scoring (``task.evaluate``)."""
    if task.is_classifier:
        y_score, _ = predict(model, data.test.images, task, norm, batch_size=cfg.eval_batch_size)
        return task.quick_metrics(data.test.labels.numpy(), y_score)
    request = EvalRequest(split=data.test, normalize=norm, class_names=data.class_names,
                          batch_size=cfg.eval_batch_size, n_bootstrap=0, split_extra=data.extra.get("test") or {})
    metrics, _ = task.evaluate(model, request)
    return {task.monitor: float(metrics[task.monitor])}


def _new_run(src: RunDir, out: str | Path | None, name: str | None, method: str) -> RunDir:
    parent = Path(out) if out is not None else src.path.parent
    run = RunDir.create(parent, name, f"{src.path.name}-{method}")
    for f in (src.config, src.data):
        if f.is_file():
            shutil.copyfile(f, run.path / f.name)
    return run


def compress_run(run_path: str | Path, method: str, *, amount: float = 0.5, epochs: int | None = None,
                 lr: float | None = None, max_train: int | None = None, calibration_samples: int = 512,
                 calibration: str = "minmax", data_spec: str | None = None, out: str | Path | None = None,
                 name: str | None = None, n_bootstrap: int = 200, seed: int = 0, distill: bool = True,
                 data: Any = None, float_ends: bool = True) -> RunDir:
    """Compress the best checkpoint of ``run_path`` with ``method``; returns the new run folder.

    ``amount``: fraction of weights (prune) or of channels per layer (prune-structured) removed. ``epochs``:
    fine-tune epochs after pruning / for QAT (default :func:`default_epochs`; ``max_train`` images per epoch at
    most; ``lr`` and optimiser by method, :data:`DEFAULT_LR`, :data:`OPTIMIZER`). ``calibration_samples``
    training images calibrate the int8 ranges (ptq, qat). ``distill``: pruning and QAT fine-tunes of classifiers
    fit the compressed model to the source model's outputs (knowledge distillation, :mod:`meddx.deploy.distill`)
    instead of the labels; QAT keeps its calibrated start unless an epoch beats it on validation. ``data``: the
    run's data set already loaded (else loaded from the run's config/``data_spec``).
    ``float_ends``: int8 keeps the stem and the classifier in float (:mod:`meddx.deploy.quantize`).

    Segmentation and detection runs take both pruning methods (int8 export folds classification
    probabilities only); their change is measured on the task's monitored metric (Dice, mAP@0.5, CPM).
    """
    from meddx.deploy import onnx_export, prune, quantize
    from meddx.deploy.latency import count_parameters, file_mb, weights_mb, zipped_mb
    from meddx.models import get_model_spec

    if method not in METHODS:
        raise MeddxError(f"unknown compression method {method!r}; available: {', '.join(METHODS)}")
    lr = DEFAULT_LR[method] if lr is None else lr
    src = RunDir.open(run_path)
    cfg = TrainConfig.load(src.config)
    ckpt = src.model_checkpoint()
    model, meta = load_model(ckpt)
    if method in INT8_METHODS:
        onnx_export.wrap_for_deploy(model, meta)  # raises a clear error for tasks the int8 path does not support
    if method == "prune-structured" and meta["model"] in prune.STRUCTURED_UNSUPPORTED:
        raise MeddxError(f"structured pruning does not support model {meta['model']!r}: "
                         f"{prune.STRUCTURED_UNSUPPORTED[meta['model']]}", ckpt)
    if method in INT8_METHODS and calibration_samples < 1:
        raise MeddxError(f"{method} needs calibration images; --calibration-samples must be >= 1, "
                         f"got {calibration_samples}")
    if meta.get("compression", {}).get("method") in INT8_METHODS and method != "prune":
        raise MeddxError(f"run is already int8-compressed ({meta['compression']['method']}); compress the fp32 run",
                         src.path)
    if data is None:
        data = _load_run_data(cfg, data_spec, method if method in INT8_METHODS else None)
    if data.class_names != meta["classes"]:
        raise MeddxError(f"data classes {data.class_names} differ from the checkpoint's {meta['classes']}", ckpt)
    task = task_from_meta(meta)
    norm = Normalization(**meta["normalization"])
    if epochs is None:
        n_train = min(len(data.train), max_train or len(data.train))
        epochs = default_epochs(method, n_train, batch_size_for(cfg, task))
    torch.manual_seed(seed)
    t0 = time.time()
    source = headline_metrics(model, task, data, norm, cfg)
    # segmentation/detection (tasks with their own `evaluate`) train on patches: their whole images (volumes)
    # are no BatchNorm batches, and distillation matches class probabilities
    classifier = task.is_classifier
    # weights only: a ``last`` checkpoint also holds the optimiser state
    before = count_parameters(model) | {"channels": prune.channel_count(model), "file_mb": weights_mb(ckpt)}

    run = _new_run(src, out, name, method)
    info: dict[str, Any] = {"method": method, "source_run": str(src.path), "source_checkpoint": str(ckpt),
                            "model": meta["model"], "before": before}
    history: list[dict[str, Any]] = []
    ft_task = task
    if distill and method != "ptq" and epochs > 0 and classifier:
        from meddx.deploy.distill import DistillationTask

        ft_task = DistillationTask(task, load_model(ckpt)[0])  # the uncompressed model as the teacher
        info["distillation"] = {"teacher": str(ckpt), "alpha": ft_task.alpha, "temperature": ft_task.temperature}
    if method == "prune":
        prune.prune_unstructured(model, amount)
        history = finetune(model, data, ft_task, norm, cfg, epochs=epochs, lr=lr, max_train=max_train, seed=seed,
                           bn_recalibration=classifier, optimizer=OPTIMIZER[method])
        prune.make_permanent(model)
        info["options"] = {"amount": amount, "scope": "global L1 over Conv/Linear weights"}
    elif method == "prune-structured":
        example = norm(data.train.images[:2])
        info["structure"] = prune.prune_structured(model, meta["model"], amount, example,
                                                   get_model_spec(meta["model"]).head)
        history = finetune(model, data, ft_task, norm, cfg, epochs=epochs, lr=lr, max_train=max_train, seed=seed,
                           bn_recalibration=classifier, optimizer=OPTIMIZER[method])
        info["options"] = {"ratio": amount, "importance": "group L2 magnitude (torch-pruning)"}
    elif method == "qat":
        handles = quantize.prepare_qat(model, float_ends=float_ends)
        model.eval()
        with torch.no_grad():  # calibrate the input ranges before the fake quantizers switch on
            for batch in quantize.calibration_batches(data.train.images, calibration_samples, seed=seed):
                model(norm(torch.from_numpy(batch)))
        quantize.enable_act_quant(handles)
        history = finetune(model, data, ft_task, norm, cfg, epochs=epochs, lr=lr, max_train=max_train, seed=seed,
                           bn_recalibration=False, optimizer=OPTIMIZER[method], keep_start=True)
        quantize.finish_qat(model, handles)
        info["options"] = {"fake_quant": "int8 symmetric per-channel weights, uint8 per-tensor Conv/Linear inputs"
                                         + (" (not the stem and the classifier)" if float_ends else ""),
                           "batchnorm": "folded before QAT"}
    if method != "ptq":
        info["finetune"] = {"epochs": epochs, "lr": lr, "optimizer": OPTIMIZER[method], "max_train": max_train,
                            "history": history}

    comp_meta = meta | {"compression": {"method": method, "amount": amount if method.startswith("prune") else None,
                                        "source": str(ckpt)}}
    if method == "prune-structured":
        comp_meta["pruned_shapes"] = prune.pruned_shapes(model)
    save_checkpoint(run.best, model, comp_meta)
    model, _ = load_model(run.best)  # prove the compressed checkpoint loads on its own
    after = count_parameters(model) | {"channels": prune.channel_count(model), "file_mb": file_mb(run.best)}
    info["sparsity"] = prune.weight_sparsity(model)
    if method == "prune":
        after["zipped_mb"] = zipped_mb(run.best)

    if method in INT8_METHODS:
        fp32 = onnx_export.export_onnx(model, comp_meta, run.path / "model.onnx")
        info["onnx_max_abs_diff"] = onnx_export.verify_onnx(model, comp_meta, fp32, data.test.images[:64])
        calib = quantize.calibration_batches(data.train.images, calibration_samples, seed=seed)
        int8 = quantize.quantize_onnx(fp32, run.path / "model_int8.onnx", calib, method=calibration,
                                      float_ends=float_ends)
        after["file_mb"] = file_mb(int8)
        info["options"] = info.get("options", {}) | {"calibration": calibration,
                                                     "calibration_samples": calibration_samples,
                                                     "float_ends": float_ends}
    info["after"] = after
    info["seconds"] = round(time.time() - t0, 1)
    # scored as `meddx evaluate` scores the new run (an int8 run: its int8 ONNX model)
    metrics = evaluate_run(run.path, data=data, n_bootstrap=n_bootstrap, device="cpu", report=False)
    metrics["method"] = method
    for key, value in source.items():
        metrics[f"source_{key}"], metrics[f"delta_{key}"] = value, metrics[key] - value
    run.write_json(run.metrics, metrics)
    run.write_json(run.path / "compress.json", info)
    return run


def export_run(run_path: str | Path, int8: bool = False, *, calibration_samples: int = 512,
               calibration: str = "minmax", data_spec: str | None = None, tol: float = 1e-4,
               seed: int = 0, float_ends: bool = True) -> dict[str, Any]:
    """Write ``<run>/model.onnx`` (and ``model_int8.onnx``), verified against PyTorch; returns ``export.json``."""
    from meddx.deploy import onnx_export, quantize
    from meddx.deploy.latency import file_mb

    src = RunDir.open(run_path)
    cfg = TrainConfig.load(src.config)
    ckpt = src.model_checkpoint()
    model, meta = load_model(ckpt)
    onnx_export.wrap_for_deploy(model, meta)
    if int8 and calibration_samples < 1:
        raise MeddxError(f"int8 export needs calibration images; --calibration-samples must be >= 1, "
                         f"got {calibration_samples}")
    if int8:
        data = _load_run_data(cfg, data_spec, "int8 export")
        images = data.test.images[:64]
    else:
        try:
            data = _load_run_data(cfg, data_spec, None)
            images = data.test.images[:64]
        except MeddxError:
            data, images = None, None  # fp32 export needs no data: verify on random images in the input range
    fp32 = onnx_export.export_onnx(model, meta, src.path / "model.onnx")
    result: dict[str, Any] = {"checkpoint": str(ckpt), "onnx": str(fp32), "opset": onnx_export.OPSET,
                              "file_mb": file_mb(fp32), "input": {"dtype": meta.get("input_dtype", "uint8"),
                                                                  "shape": ["batch", meta["in_channels"],
                                                                            *meta["image_shape"]]},
                              "verified_on": "test images" if images is not None else "random images",
                              "max_abs_diff": onnx_export.verify_onnx(model, meta, fp32, images, tol=tol)}
    if int8:
        calib = quantize.calibration_batches(data.train.images, calibration_samples, seed=seed)
        q = quantize.quantize_onnx(fp32, src.path / "model_int8.onnx", calib, method=calibration,
                                   float_ends=float_ends)
        ref = onnx_export.OnnxPredictor(fp32).predict(data.test.images)
        got = onnx_export.OnnxPredictor(q).predict(data.test.images)
        result["int8"] = {"onnx": str(q), "file_mb": file_mb(q), "calibration": calibration, "float_ends": float_ends,
                          "calibration_samples": calibration_samples,
                          "max_abs_diff_vs_fp32": float(np.abs(got - ref).max()),
                          "top1_agreement": float((got.argmax(1) == ref.argmax(1)).mean())}
    src.write_json(src.path / "export.json", result)
    return result
