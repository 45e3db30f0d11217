"""``compress_run`` and ``export_run``: a trained run -> a smaller/faster model, with the accuracy change measured.

``compress_run`` writes a NEW run folder beside the source run:

    <new>/config.json, data.json   copied from the source run (so evaluate/predict/explain work on it)
    <new>/best.safetensors         the compressed PyTorch weights (pruned; QAT-tuned fp32; PTQ: the source's)
    <new>/model.onnx, model_int8.onnx   ptq/qat: the fp32 export and the int8 ONNX Runtime model
    <new>/compress.json            what was done: method, options, source, sizes, sparsity, channels, timings
    <new>/metrics.json             test metrics of the compressed model, beside the source's, and the deltas

The methods themselves are rows of :data:`meddx.deploy.methods.METHODS`.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.augment import Normalization
from meddx.deploy.finetune import finetune, recalibrate_bn, steps_per_epoch  # noqa: F401  (public names)
from meddx.deploy.methods import METHODS as METHOD_TABLE
from meddx.deploy.methods import CompressionMethod, Job
from meddx.engine.checkpoint import load_model, save_checkpoint
from meddx.engine.config import TrainConfig, batch_size_for
from meddx.engine.evaluate import evaluate_run
from meddx.engine.run import RunDir
from meddx.errors import MeddxError
from meddx.models.inference import predict
from meddx.tasks import EvalRequest, task_from_meta

METHODS = tuple(METHOD_TABLE)
INT8_METHODS = tuple(name for name, m in METHOD_TABLE.items() if m.int8)
DEFAULT_LR = {name: m.default_lr for name, m in METHOD_TABLE.items()}
OPTIMIZER = {name: m.optimizer for name, m in METHOD_TABLE.items()}


@dataclass
class CompressOptions:
    """``amount``: fraction of weights (prune) or of channels per layer (prune-structured) removed. ``epochs``:
    fine-tune epochs after pruning / for QAT (default: the method's ``default_epochs``; ``max_train`` images per
    epoch at most); ``lr`` (default by method). ``calibration_samples`` training images calibrate the int8
    ranges with ``calibration`` (minmax | percentile | entropy); ``float_ends``: int8 keeps the stem and the
    classifier in float (:mod:`meddx.deploy.quantize`). ``distill``: pruning and QAT fine-tunes of classifiers
    fit the source model's outputs (:mod:`meddx.deploy.distill`) instead of the labels. ``data_spec``: data set
    for calibration and scoring (default: the run's); ``out``/``name``: where the new run goes."""

    amount: float = 0.5
    epochs: int | None = None
    lr: float | None = None
    max_train: int | None = None
    calibration_samples: int = 512
    calibration: str = "minmax"
    data_spec: str | None = None
    out: str | Path | None = None
    name: str | None = None
    n_bootstrap: int = 200
    seed: int = 0
    distill: bool = True
    float_ends: bool = True


def default_epochs(method: str, n_train: int, batch_size: int) -> int:
    """Fine-tune epochs when none are given (see :meth:`CompressionMethod.default_epochs`)."""
    return get_method(method).default_epochs(n_train, batch_size)


def get_method(name: str) -> CompressionMethod:
    if name not in METHOD_TABLE:
        raise MeddxError(f"unknown compression method {name!r}; available: {', '.join(METHOD_TABLE)}")
    return METHOD_TABLE[name]


def check_options(method: CompressionMethod, opts: CompressOptions) -> None:
    """Every option checked before anything is loaded: one line naming the bad value."""
    from meddx.deploy.quantize import CALIBRATION_METHODS

    checks = [
        (not method.prunes or 0 < opts.amount < 1, f"--amount must be between 0 and 1 (exclusive), got {opts.amount}"),
        (opts.epochs is None or opts.epochs >= 0, f"--epochs must be >= 0, got {opts.epochs}"),
        (opts.lr is None or opts.lr >= 0, f"--lr must be >= 0, got {opts.lr}"),
        (opts.max_train is None or opts.max_train >= 1, f"--max-train must be >= 1, got {opts.max_train}"),
        (opts.n_bootstrap >= 0, f"--bootstrap must be >= 0, got {opts.n_bootstrap}"),
        (not method.int8 or opts.calibration_samples >= 1,
         f"{method.name} needs calibration images; --calibration-samples must be >= 1, got {opts.calibration_samples}"),
        (not method.int8 or opts.calibration in CALIBRATION_METHODS,
         f"--calibration must be one of {', '.join(CALIBRATION_METHODS)}, got {opts.calibration!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise MeddxError(message)


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


def compress_run(run_path: str | Path, method: str, options: CompressOptions | None = None, *, data: Any = None,
                 **overrides: Any) -> RunDir:
    """Compress the checkpoint of ``run_path`` (its ``select`` setting) with ``method``; returns the new run folder.

    ``options`` (:class:`CompressOptions`; keyword ``overrides`` replace single fields). ``data``: the run's
    data set already loaded (else loaded from the run's config or ``options.data_spec``). Segmentation and
    detection runs take both pruning methods (int8 export folds classification probabilities only); their change
    is measured on the task's monitored metric (Dice, mAP@0.5, CPM).
    """
    spec = get_method(method)
    opts = replace(options or CompressOptions(), **overrides)
    check_options(spec, opts)
    src = RunDir.open(run_path)
    cfg = TrainConfig.load(src.config)
    ckpt = src.model_checkpoint()
    model, meta = load_model(ckpt)
    check_source(spec, model, meta, ckpt, src)
    if data is None:
        data = _load_run_data(cfg, opts.data_spec, method if spec.int8 else None)
    if data.class_names != meta["classes"]:
        raise MeddxError(f"data classes {data.class_names} differ from the checkpoint's {meta['classes']}", ckpt)
    task = task_from_meta(meta)
    norm = Normalization(**meta["normalization"])
    opts = _resolve(spec, opts, cfg, task, len(data.train))
    torch.manual_seed(opts.seed)
    t0 = time.time()
    source = headline_metrics(model, task, data, norm, cfg)
    job = Job(model, meta, data, task, norm, cfg, opts, classifier=task.is_classifier)
    job.info = {"method": method, "source_run": str(src.path), "source_checkpoint": str(ckpt),
                "model": meta["model"], "before": _sizes(model, ckpt, weights_only=True)}
    run = _new_run(src, opts.out, opts.name, method)
    _maybe_distill(job, spec, ckpt)
    history = spec.apply(job, spec)
    if spec.finetunes:
        job.info["finetune"] = {"epochs": opts.epochs, "lr": opts.lr, "optimizer": spec.optimizer,
                                "max_train": opts.max_train, "history": history}
    _save_compressed(job, spec, run, ckpt)
    job.info["seconds"] = round(time.time() - t0, 1)
    _score(run, job, spec, source)
    return run


def check_source(spec: CompressionMethod, model: torch.nn.Module, meta: dict[str, Any], ckpt: Path,
                 src: RunDir) -> None:
    """Refuse what the method cannot do with this run, before any data is loaded."""
    from meddx.deploy import onnx_export, prune

    if spec.int8:
        onnx_export.wrap_for_deploy(model, meta)  # raises a clear error for tasks the int8 path does not support
    if spec.name == "prune-structured" and meta["model"] in prune.STRUCTURED_UNSUPPORTED:
        raise MeddxError(f"structured pruning does not support model {meta['model']!r}: "
                         f"{prune.STRUCTURED_UNSUPPORTED[meta['model']]}", ckpt)
    done = meta.get("compression", {}).get("method")
    if done in INT8_METHODS and spec.name != "prune":
        raise MeddxError(f"run is already int8-compressed ({done}); compress the fp32 run", src.path)


def _resolve(spec: CompressionMethod, opts: CompressOptions, cfg: TrainConfig, task: Any,
             n_train: int) -> CompressOptions:
    """Options with the method's defaults filled in (learning rate, fine-tune epochs)."""
    lr = spec.default_lr if opts.lr is None else opts.lr
    epochs = opts.epochs
    if epochs is None:
        epochs = spec.default_epochs(min(n_train, opts.max_train or n_train), batch_size_for(cfg, task))
    return replace(opts, lr=lr, epochs=epochs)


def _maybe_distill(job: Job, spec: CompressionMethod, ckpt: Path) -> None:
    """Fine-tunes of classifiers fit the uncompressed model's outputs (it is loaded again as the teacher).

    Segmentation/detection train on patches and are scored per voxel/box: no distillation there."""
    if job.opts.distill and spec.finetunes and job.opts.epochs > 0 and job.classifier:
        from meddx.deploy.distill import DistillationTask

        job.task = DistillationTask(job.task, load_model(ckpt)[0])
        job.info["distillation"] = {"teacher": str(ckpt), "alpha": job.task.alpha,
                                    "temperature": job.task.temperature}


def _sizes(model: torch.nn.Module, path: Path, weights_only: bool = False) -> dict[str, Any]:
    from meddx.deploy.latency import count_parameters, file_mb, weights_mb
    from meddx.deploy.prune import channel_count

    # weights only for the source: a ``last`` checkpoint also holds the optimiser state
    size = weights_mb(path) if weights_only else file_mb(path)
    return count_parameters(model) | {"channels": channel_count(model), "file_mb": size}


def _save_compressed(job: Job, spec: CompressionMethod, run: RunDir, ckpt: Path) -> None:
    """``best.safetensors`` (reloaded on its own as a check), sizes and sparsity; the ONNX/int8 files."""
    from meddx.deploy import prune
    from meddx.deploy.latency import zipped_mb

    o = job.opts
    comp_meta = job.meta | {"compression": {"method": spec.name, "amount": o.amount if spec.prunes else None,
                                            "source": str(ckpt)}}
    if spec.name == "prune-structured":
        comp_meta["pruned_shapes"] = prune.pruned_shapes(job.model)
    save_checkpoint(run.best, job.model, comp_meta)
    job.model, _ = load_model(run.best)  # prove the compressed checkpoint loads on its own
    after = _sizes(job.model, run.best)
    job.info["sparsity"] = prune.weight_sparsity(job.model)
    if spec.name == "prune":
        after["zipped_mb"] = zipped_mb(run.best)
    if spec.int8:
        after["file_mb"] = _export_int8(job, run, comp_meta)
    job.info["after"] = after


def _export_int8(job: Job, run: RunDir, comp_meta: dict[str, Any]) -> float:
    """``model.onnx`` (verified against PyTorch) and its int8 quantization ``model_int8.onnx``; the int8 size."""
    from meddx.deploy import onnx_export, quantize
    from meddx.deploy.latency import file_mb

    o, images = job.opts, job.data.train.images
    fp32 = onnx_export.export_onnx(job.model, comp_meta, run.path / "model.onnx")
    job.info["onnx_max_abs_diff"] = onnx_export.verify_onnx(job.model, comp_meta, fp32, job.data.test.images[:64])
    calib = quantize.calibration_batches(images, o.calibration_samples, seed=o.seed)
    int8 = quantize.quantize_onnx(fp32, run.path / "model_int8.onnx", calib, method=o.calibration,
                                  float_ends=o.float_ends)
    job.info["options"] = job.info.get("options", {}) | {"calibration": o.calibration,
                                                         "calibration_samples": o.calibration_samples,
                                                         "float_ends": o.float_ends}
    return file_mb(int8)


def _score(run: RunDir, job: Job, spec: CompressionMethod, source: dict[str, float]) -> None:
    """Scored as ``meddx evaluate`` scores the new run (an int8 run: its int8 ONNX model), beside the source."""
    metrics = evaluate_run(run.path, data=job.data, n_bootstrap=job.opts.n_bootstrap, device="cpu", report=False)
    metrics["method"] = spec.name
    for key, value in source.items():
        metrics[f"source_{key}"], metrics[f"delta_{key}"] = value, metrics[key] - value
    run.write_json(run.metrics, metrics)
    run.write_json(run.path / "compress.json", job.info)


def export_run(run_path: str | Path, int8: bool = False, *, calibration_samples: int = 512,
               calibration: str = "minmax", data_spec: str | None = None, tol: float = 1e-4,
               seed: int = 0, float_ends: bool = True, verify_on_data: bool = True) -> dict[str, Any]:
    """Write ``<run>/model.onnx`` (and ``model_int8.onnx``), verified against PyTorch; returns ``export.json``.
    ``verify_on_data=False``: an fp32 export verified on random images in the input range (no data load)."""
    from meddx.deploy import onnx_export, quantize
    from meddx.deploy.latency import file_mb
    from meddx.utils.io import file_digest

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
    elif not verify_on_data:
        data, images = None, None
    else:
        try:
            data = _load_run_data(cfg, data_spec, None)
            images = data.test.images[:64]
        except MeddxError:
            data, images = None, None  # fp32 export needs no data: verify on random images in the input range
    fp32 = onnx_export.export_onnx(model, meta, src.path / "model.onnx")
    result: dict[str, Any] = {"checkpoint": str(ckpt), "checkpoint_sha256": file_digest(ckpt, "sha256"),
                              "onnx": str(fp32), "opset": onnx_export.OPSET,
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


def export_after_training(run_path: str | Path) -> dict[str, Any] | None:
    """``model.onnx`` for a freshly trained classification run, so that ``meddx predict`` on it starts without
    PyTorch (``--runtime auto`` takes it while ``export.json`` matches the checkpoint); verified against PyTorch on
    random images in the input range. None where it does not apply: another task, or the ``deploy`` extra
    (onnx, onnxruntime) not installed."""
    import importlib.util

    from meddx.utils.checkpoints import read_meta

    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxruntime")):
        return None
    meta = read_meta(RunDir.open(run_path).model_checkpoint())
    if (meta or {}).get("task", "classification") != "classification":
        return None
    return export_run(run_path, verify_on_data=False)
