"""``evaluate_run``: test-set metrics with confidence intervals, ``metrics.json`` and the HTML report.

Task-neutral: the run's task scores the split (``task.evaluate``) and names its report sections
(``task.report_sections``); the runtime (PyTorch, or the int8 ONNX model of a compressed run) comes from
:mod:`meddx.runtimes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from meddx.data import DataBundle, load_data
from meddx.data.augment import Normalization
from meddx.engine.config import TrainConfig
from meddx.engine.run import RunDir
from meddx.errors import MeddxError
from meddx.runtimes import open_runtime
from meddx.tasks import EvalRequest, task_from_meta

SPLITS = ("train", "val", "test")


def evaluate_run(run_path: str | Path, split: str = "test", n_bootstrap: int = 1000,
                 data: DataBundle | None = None, device: str = "auto", report: bool = True,
                 runtime: str = "auto") -> dict[str, Any]:
    """Evaluate the run's checkpoint (its ``select`` setting) on ``split``; write ``metrics.json`` (+ ``report.html``).

    ``runtime``: ``auto`` scores an int8-compressed run on its int8 ONNX model and any other run in PyTorch.
    """
    if split not in SPLITS:
        raise MeddxError(f"split must be train, val or test, got {split!r}")
    if n_bootstrap < 0:
        raise MeddxError(f"bootstrap resamples must be >= 0, got {n_bootstrap}")
    run = RunDir.open(run_path)
    cfg = TrainConfig.load(run.config)
    torch_rt = open_runtime("torch", run.path, device=device if device != "auto" else cfg.device)
    meta = torch_rt.meta
    rt = open_runtime(runtime, run.path, loaded=torch_rt)
    data = data or load_data(cfg.data, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed, task=cfg.task)
    if meta["classes"] != data.class_names:
        raise MeddxError(f"checkpoint classes {meta['classes']} differ from the data's {data.class_names}",
                         torch_rt.files[0])
    task = task_from_meta(meta)
    request = EvalRequest(split=getattr(data, split), normalize=Normalization(**meta["normalization"]),
                          class_names=data.class_names, device=torch_rt.device, batch_size=cfg.eval_batch_size,
                          n_bootstrap=n_bootstrap, out_dir=run.path, split_name=split,
                          split_extra=data.extra.get(split) or {}, runtime=rt,
                          reference=data.val if split != "val" else None,  # thresholds: chosen on validation
                          positive_class=_positive_class(meta, cfg, data))
    metrics, context = task.evaluate(torch_rt.model, request)
    metrics.update({"split": split, "checkpoint": torch_rt.files[0].name, "epoch": meta["epoch"],
                    "dataset": data.name, "model": meta["model"], "runtime_files": [str(f) for f in rt.files]})
    if meta.get("calibration"):  # the map fitted on validation (meddx.engine.calibration)
        metrics["calibration"] = meta["calibration"]
    run.write_json(run.metrics if split == "test" else run.path / f"metrics_{split}.json", metrics)
    if report:
        context |= {"model": torch_rt.model, "meta": meta, "split": split, "device": torch_rt.device, "task": task}
        write_run_report(run, cfg, data, metrics, context)
    return metrics


def _positive_class(meta: dict[str, Any], cfg: TrainConfig, data: DataBundle) -> int | None:
    """The finding stored with the checkpoint; for runs older than that, the one the data set declares."""
    from meddx.metrics.operating import data_positive_class

    return meta["positive_class"] if "positive_class" in meta else data_positive_class(data, cfg.positive_class)


def _calibration_row(calibration: dict[str, Any] | None) -> dict[str, str]:
    """The report's line on a model's calibration (none for a model without it)."""
    if not calibration:
        return {}
    where = "folded into the head (meddx.engine.calibration)"
    if calibration["method"] == "vector-scaling":
        maps = ", ".join(f"{a:.3g} z{k} {b:+.3g}" for k, (a, b) in enumerate(zip(calibration["scale"],
                                                                                 calibration["shift"])))
        return {"probabilities": f"Vector-scaled on the validation split: softmax({maps}); {where}"}
    if calibration["method"] == "platt-per-label":
        maps = [f"sigmoid({a:.3g} x logit {b:+.3g})" if fitted else "as trained" for a, b, fitted in
                zip(calibration["scale"], calibration["shift"], calibration["fitted"])]
        return {"probabilities": f"Platt-scaled per label on the validation split: {'; '.join(maps)}; {where}"}
    return {"probabilities": f"Platt-scaled on the validation split: sigmoid({calibration['scale']:.3g} x logit "
                             f"{calibration['shift']:+.3g}), {where}"}


def write_run_report(run: RunDir, cfg: TrainConfig, data: DataBundle, metrics: dict[str, Any],
                     context: dict[str, Any]) -> Path:
    """Render ``report.html`` with the run's history and the task's own report sections."""
    from meddx.report.classification import write_report
    from meddx.report.page import run_facts

    context = context | {"run": run, "config": cfg, "data": data, "metrics": metrics}
    sections = context["task"].report_sections(context)
    history = run.read_history()
    run_info = {"dataset": data.name, "source": data.source, "model": cfg.model, "task": cfg.task, "kind": data.task,
                "split": context["split"], "samples": metrics.get("n"), "run folder": str(run.path),
                "checkpoint": f"{metrics['checkpoint']} (epoch {metrics['epoch'] + 1})",
                "runtime": metrics.get("runtime"), "runtime files": metrics.get("runtime_files")} | _calibration_row(
                    metrics.get("calibration")) | run_facts(
                    cfg, context.get("model"), history) | {f"config.{k}": v for k, v in cfg.to_dict().items()}
    return write_report(run.report, title=f"meddx report: {data.name} / {cfg.model}", run_info=run_info,
                        metrics=metrics, history=history, sections=sections, class_names=data.class_names)
