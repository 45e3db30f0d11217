"""``evaluate_run``: test-set metrics with confidence intervals, ``metrics.json`` and the HTML report."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from meddx.data import DataBundle, load_data
from meddx.data.augment import Normalization
from meddx.engine.checkpoint import load_model
from meddx.engine.config import TrainConfig
from meddx.engine.loop import predict
from meddx.engine.run import RunDir
from meddx.errors import MeddxError
from meddx.tasks import task_from_meta
from meddx.utils.io import atomic_path
from meddx.utils.runtime import pick_device

# Extra report sections, each "module:function" called as fn(context) -> ReportSection | None.
# Other capabilities (explanations, segmentation overlays) add one line here.
REPORT_SECTIONS: tuple[str, ...] = (
    "meddx.explain.report_section:heatmap_section",
    "meddx.report.segmentation:metrics_section",
    "meddx.report.segmentation:overlay_section",
    "meddx.report.detection:detection_section",
)


def evaluate_run(run_path: str | Path, split: str = "test", n_bootstrap: int = 1000,
                 data: DataBundle | None = None, device: str = "auto", report: bool = True) -> dict[str, Any]:
    """Evaluate the best checkpoint of a run on ``split``; write ``metrics.json`` (+ ``report.html``)."""
    run = RunDir.open(run_path)
    cfg = TrainConfig.load(run.config)
    if split not in ("train", "val", "test"):
        raise MeddxError(f"split must be train, val or test, got {split!r}")
    dev = pick_device(device if device != "auto" else cfg.device)
    data = data or load_data(cfg.data, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed, task=cfg.task)
    ckpt = run.model_checkpoint()
    model, meta = load_model(ckpt, dev)
    if meta["classes"] != data.class_names:
        raise MeddxError(f"checkpoint classes {meta['classes']} differ from the data's {data.class_names}", ckpt)
    task = task_from_meta(meta)
    norm = Normalization(**meta["normalization"])
    part = getattr(data, split)
    if hasattr(task, "evaluate"):  # segmentation/detection: the task scores the split and writes its outputs
        metrics, context = task.evaluate(model, part, norm, device=dev, batch_size=cfg.eval_batch_size,
                                         class_names=data.class_names, n_bootstrap=n_bootstrap, out_dir=run.path,
                                         split_name=split, split_extra=data.extra.get(split) or {})
    else:
        int8 = run.path / "model_int8.onnx"
        if meta.get("compression", {}).get("method") in ("ptq", "qat") and int8.is_file():
            # an int8 run ships its ONNX model: score that, not the fp32 (fake-quant) weights beside it
            from meddx.deploy.onnx_export import OnnxPredictor

            y_score, loss, runtime = OnnxPredictor(int8).predict(part.images), None, "onnxruntime int8"
        else:
            y_score, loss = predict(model, part.images, task, norm, batch_size=cfg.eval_batch_size, device=dev,
                                    labels=part.labels)
            runtime = "torch"
        y_true = part.labels.numpy()
        metrics = task.full_metrics(y_true, y_score, data.class_names, n_bootstrap=n_bootstrap)
        metrics["loss"], metrics["runtime"] = loss, runtime
        with atomic_path(run.path / f"predictions_{split}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, y_true=y_true, y_score=y_score)
        context = {"y_true": y_true, "y_score": y_score}
    metrics.update({"split": split, "checkpoint": ckpt.name, "epoch": meta["epoch"], "dataset": data.name,
                    "model": meta["model"]})
    run.write_json(run.metrics if split == "test" else run.path / f"metrics_{split}.json", metrics)
    if report:
        write_run_report(run, cfg, data, metrics, {"model": model, "meta": meta, "split": split, "device": dev,
                                                   **context})
    return metrics


def write_run_report(run: RunDir, cfg: TrainConfig, data: DataBundle, metrics: dict[str, Any],
                     context: dict[str, Any]) -> Path:
    """Render ``report.html`` with the run's history and any registered extra sections."""
    from meddx.report.classification import write_report

    context = context | {"run": run, "config": cfg, "data": data, "metrics": metrics}
    sections = []
    for entry in REPORT_SECTIONS:
        module, fn = entry.split(":")
        section = getattr(importlib.import_module(module), fn)(context)
        if section is not None:
            sections.append(section)
    run_info = {"dataset": data.name, "source": data.source, "model": cfg.model, "task": data.task,
                "split": context["split"], "samples": metrics.get("n"), "run folder": str(run.path),
                "checkpoint": f"{metrics['checkpoint']} (epoch {metrics['epoch'] + 1})"} | {
                    f"config.{k}": v for k, v in cfg.to_dict().items()}
    return write_report(run.report, title=f"meddx report: {data.name} / {cfg.model}", run_info=run_info,
                        metrics=metrics, history=run.read_history(), sections=sections,
                        class_names=data.class_names)
