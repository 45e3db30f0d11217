"""Commands of the core job: ``meddx train``, ``evaluate``, ``predict``, ``demo`` (option parsing only).

A typer sub-app that ``meddx.cli`` adds explicitly; the work is done by library functions
(:func:`meddx.engine.fit.fit`, :func:`meddx.engine.evaluate.evaluate_run`, :class:`meddx.engine.predict.Predictor`),
imported inside the commands so that ``meddx --help`` starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from meddx.utils.cli import console as _console
from meddx.utils.cli import user_errors

app = typer.Typer()


def _train_config(**kw: Any):
    from meddx.engine.config import TrainConfig

    return TrainConfig(**{k: v for k, v in kw.items() if v is not None})


@app.command()
@user_errors
def train(
    ctx: typer.Context,
    data: str = typer.Option("phantom", help="phantom | MedMNIST name | .npz | image folder | CSV manifest"),
    task: str | None = typer.Option(None, help="classification (default) or another registered task"),
    degrade: str | None = typer.Option(None, help="reconstruction: lowdose | lowdose1024 | lowdose256 | sparseview | "
                                       "sparseview90 | mri4x | mri8x | mri4x-random"),
    positive_class: str | None = typer.Option(None, help="binary: the finding (class name or id) that "
                                              "sensitivity, PPV and ROC are for; default: the data set's"),
    model: str | None = typer.Option(None, help="registered model (see `meddx models`)"),
    size: int | None = typer.Option(None, help="MedMNIST size (28/64/128/224) or resize target"),
    data_dir: str | None = typer.Option(None, envvar="MEDDX_DATA", help="folder with MedMNIST files"),
    epochs: int | None = typer.Option(None, help="default: from the training-set size"),
    batch_size: int | None = typer.Option(None),
    patch: int | None = typer.Option(None, help="segmentation patch / sliding-window side (multiple of 8)"),
    lr: float | None = typer.Option(None),
    optimizer: str | None = typer.Option(None, help="adamw | sgd"),
    schedule: str | None = typer.Option(None, help="cosine | multistep"),
    class_weights: bool = typer.Option(False, help="weight the loss by inverse class frequency"),
    augment: str | None = typer.Option(None, help="auto (by modality) | none | policy name"),
    pretrained: str | None = typer.Option(None, help="weights file or run to start from (head replaced)"),
    patience: int | None = typer.Option(None, help="early stopping: epochs without validation gain (default off)"),
    select: str | None = typer.Option(None, help="model to test and ship: best (default: peak validation epoch, "
                                      "or the tail average within 0.02 of it) | last (end of the schedule)"),
    average: str | None = typer.Option(None, help="tail (default: average the last quarter, BatchNorm "
                                       "re-estimated) | none"),
    calibrate: str | None = typer.Option(None, help="auto (default: probabilities calibrated on validation: "
                                         "Platt scaling, per label for multi-label; vector scaling for "
                                         "multi-class) | none"),
    ordinal_loss: str | None = typer.Option(None, help="ordinal labels: ce (default) | emd (+ squared EMD)"),
    ema_decay: float | None = typer.Option(None, help="EMA of the weights with this decay (default 0: off)"),
    mixup: float | None = typer.Option(None, help="classification: mixup of training batches, Beta(alpha, alpha) "
                                       "(default 0: off; 0.2 helped BreastMNIST, hurt small-lesion presence)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:1 ..."),
    out: str = typer.Option("runs", help="parent folder of run folders"),
    name: str | None = typer.Option(None, help="run folder name (default: data-model-time)"),
    max_minutes: float | None = typer.Option(None, help="stop cleanly after this wall time"),
    tensorboard: bool = typer.Option(False, help="also log to TensorBoard"),
    resume: Path | None = typer.Option(None, help="continue an interrupted run folder"),
    evaluate: bool = typer.Option(True, help="evaluate on the test split and write the report afterwards"),
    export: bool = typer.Option(True, help="classification: also write model.onnx (checked against PyTorch), "
                                "which `meddx predict` then runs without PyTorch"),
    nproc: int = typer.Option(1, help="data-parallel processes on this machine (DDP through torchrun)"),
    nnodes: str = typer.Option("1", help="machines (or MIN:MAX), each running this command; needs --rdzv-endpoint"),
    rdzv_endpoint: str | None = typer.Option(None, help="HOST:PORT of the c10d rendezvous (several machines)"),
    max_restarts: int = typer.Option(0, help="restart all workers this often after a failure (resuming)"),
) -> None:
    """Train a model; writes a run folder with config, history and checkpoints."""
    from meddx.engine.fit import fit

    if nproc > 1 or nnodes != "1" or rdzv_endpoint:
        from meddx.engine.launch import launch_training

        run_path = launch_training(ctx, nproc, nnodes, rdzv_endpoint, max_restarts)  # rank 0 prints the folder
        if evaluate:
            _evaluate_and_print(run_path)
        if export:
            _export_for_predict(run_path)
        return

    cfg = _train_config(data=data, task=task, degrade=degrade, positive_class=positive_class, model=model, size=size,
                        data_dir=data_dir, epochs=epochs, batch_size=batch_size, patch=patch,
                        lr=lr, optimizer=optimizer, schedule=schedule, class_weights=class_weights or None,
                        augment=augment, pretrained=pretrained, patience=patience, select=select,
                        average=average, calibrate=calibrate, ordinal_loss=ordinal_loss, mixup=mixup,
                        ema_decay=ema_decay, seed=seed, device=device, out=out, name=name,
                        max_minutes=max_minutes, tensorboard=tensorboard or None)
    console = _console(stderr=True)
    run = fit(cfg, resume=resume, console=console)
    from meddx.engine.distributed import is_main

    if is_main():  # under torchrun: rank 0 reports and evaluates
        console.print(f"run folder: {run.path}")
    if evaluate and is_main():
        _evaluate_and_print(run.path)
    if export and is_main():
        _export_for_predict(run.path)


def _export_for_predict(run_path: Path) -> None:
    """model.onnx beside the checkpoint after training (after evaluation: the report scores the PyTorch model).
    A failed export is one line of notice, never a failed run: the trained run is complete without it."""
    from meddx.deploy.compress import export_after_training

    console = _console(stderr=True)
    try:
        res = export_after_training(run_path)
    except Exception as e:  # noqa: BLE001 - an unexportable layer must not cost the user the trained run
        console.print(f"notice: model.onnx not written ({type(e).__name__}: {e}); predict uses PyTorch",
                      markup=False, highlight=False)
        return
    if res is not None:
        console.print(f"model.onnx: {res['onnx']} (max abs difference vs PyTorch {res['max_abs_diff']:.1e}); "
                      "`meddx predict` runs it with ONNX Runtime", markup=False, highlight=False)


def _evaluate_and_print(run_path: Path, split: str = "test", n_bootstrap: int = 1000) -> dict[str, Any]:
    from meddx.engine.evaluate import evaluate_run

    m = evaluate_run(run_path, split=split, n_bootstrap=n_bootstrap)
    console = _console()
    console.print(f"{split}: {m['headline']}")
    console.print(f"report: {Path(run_path) / 'report.html'}")
    return m


@app.command()
@user_errors
def evaluate(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder"),
    split: str = typer.Option("test", help="train | val | test"),
    bootstrap: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs (0: none)"),
) -> None:
    """Evaluate a run (the checkpoint its --select names: last by default): metrics.json and report.html."""
    _evaluate_and_print(run, split, bootstrap)


@app.command()
@user_errors
def predict(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder or .safetensors checkpoint"),
    images: list[Path] | None = typer.Argument(None, metavar="FILE...",
                                                help="PNG/JPEG/.npy files (3D segmentation: NIfTI/NRRD/DICOM folder)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    device: str = typer.Option("auto"),
    runtime: str = typer.Option("auto", help="auto | torch | onnx | int8: auto is int8 (the run's model_int8.onnx) "
                                "for a ptq/qat-compressed run, onnx (model.onnx, starts without PyTorch) when "
                                "`meddx train` or `meddx export` made it from the checkpoint in use, else torch"),
    out: Path | None = typer.Option(None, help="folder for predicted mask files (default: beside each input)"),
    input: str | None = typer.Option(None, "--input", help="whole archive: a folder, a quoted glob or a CSV of files"),
    output: Path | None = typer.Option(None, help="with --input: results.csv or .parquet (a rerun skips done rows)"),
    workers: int | None = typer.Option(None, help="with --input: reading processes (2D model on CPU: each also "
                                       "scores, default one per core; GPU or 3D: default a quarter of the cores)"),
    nproc: int = typer.Option(1, help="with --input: worker processes, each scoring a share of the files with its "
                              "own model (one GPU each, round robin; on CPU the cores are split among them)"),
    dicom_out: Path | None = typer.Option(None, help="DICOM inputs: also write de-identified DICOM results here "
                                          "(TID 1500 SR + heat-map SC for classification, SEG for masks)"),
) -> None:
    """Predict classes and probabilities for image files (masks for segmentation runs, as files + JSON)."""
    from meddx.data.pixels import check_inputs
    from meddx.errors import MeddxError
    from meddx.runtimes import check_runtime

    check_runtime(runtime)  # a bad option or file fails before torch and the checkpoint load
    if input is not None or output is not None:
        if input is None or output is None or images:
            raise MeddxError("--input and --output go together, without FILE arguments")
        from meddx.engine.batch_parallel import predict_parallel

        typer.echo(predict_parallel(run, input, output, nproc=nproc, runtime=runtime, device=device,
                                    workers=workers).line())
        return
    if nproc != 1:
        raise MeddxError("--nproc goes with --input/--output")
    if not images:
        raise MeddxError("give image FILEs, or --input DIR|GLOB|CSV --output results.csv|.parquet")
    check_inputs(run, images)
    from meddx.engine.predict import Predictor

    predictor = Predictor(run, device=device, runtime=runtime)
    if dicom_out is not None:
        from meddx.pacs.results import predict_dicom_out

        results = predict_dicom_out(predictor, list(images), dicom_out)
    else:
        results = predictor.predict_files(list(images), out_dir=out)
    used = {"runtime": predictor.runtime.label, "model_files": [str(f) for f in predictor.files]}
    if as_json or "probabilities" not in results[0]:
        typer.echo(json.dumps([r | used for r in results], indent=2))
        return
    typer.echo(f"runtime: {used['runtime']} ({', '.join(used['model_files'])})")
    from rich.table import Table

    first = results[0]["probabilities"]
    table = Table("file", "prediction", *first.keys())
    for r in results:
        label = r.get("label") or ", ".join(r.get("labels", [])) or "-"
        table.add_row(Path(r["file"]).name, label, *(f"{v:.3f}" for v in r["probabilities"].values()))
    _console().print(table)


@app.command()
@user_errors
def demo(
    out: str = typer.Option("runs", help="parent folder of the run folder"),
    epochs: int | None = typer.Option(None, help="default: 10 (about 2 minutes on 2 CPU cores)"),
    seed: int = typer.Option(0),
) -> None:
    """Train, evaluate and report on the embedded synthetic CT phantom (no download needed)."""
    from meddx.engine.fit import fit

    console = _console(stderr=True)
    console.print("meddx demo: nodule / no nodule on synthetic CT slices (lung window, 28 px)")
    cfg = _train_config(data="phantom", epochs=epochs or 10, out=out, seed=seed, name=f"demo-phantom-seed{seed}")
    run_dir = Path(cfg.out) / cfg.name
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    run = fit(cfg, console=console)
    _evaluate_and_print(run.path)
    _export_for_predict(run.path)
    console.print(f"done. open {run.path / 'report.html'} in a browser")
