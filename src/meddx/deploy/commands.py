"""``meddx export`` and ``meddx compress``: a typer sub-app over :mod:`meddx.deploy.compress` (option parsing only)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from meddx.utils.cli import user_errors

app = typer.Typer()

# options that export and compress share
CALIBRATION_SAMPLES = typer.Option(512, help="training images that calibrate the int8 ranges")
CALIBRATION = typer.Option("minmax", help="int8 calibration: minmax | percentile | entropy")
FLOAT_ENDS = typer.Option(True, "--float-ends/--all-int8", help="int8 keeps the stem (with the folded preprocessing) "
                          "and the classifier in float (less int8 error on every benchmark model)")


@app.command()
@user_errors
def export(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder"),
    int8: bool = typer.Option(False, "--int8", help="also write model_int8.onnx (ORT static quantization)"),
    calibration_samples: int = CALIBRATION_SAMPLES,
    calibration: str = CALIBRATION,
    data: str | None = typer.Option(None, help="data set for calibration/verification (default: the run's)"),
    float_ends: bool = FLOAT_ENDS,
) -> None:
    """Export a run to ONNX (raw image in, probabilities out), verified against PyTorch."""
    from meddx.deploy.compress import export_run

    res = export_run(run, int8=int8, calibration_samples=calibration_samples, calibration=calibration,
                     data_spec=data, float_ends=float_ends)
    typer.echo(f"onnx: {res['onnx']} ({res['file_mb']:.2f} MB), max abs difference vs PyTorch "
               f"{res['max_abs_diff']:.2e} on {res['verified_on']}")
    if "int8" in res:
        q = res["int8"]
        typer.echo(f"int8: {q['onnx']} ({q['file_mb']:.2f} MB), max abs difference vs fp32 ONNX "
                   f"{q['max_abs_diff_vs_fp32']:.2e}, top-1 agreement {q['top1_agreement']:.4f}")

@app.command()
@user_errors
def compress(
    run: Path = typer.Argument(..., metavar="RUN", help="run folder (the checkpoint its select setting "
                                                      "names: last by default, best with --select best)"),
    method: str = typer.Option(..., help="prune | prune-structured | ptq | qat"),
    amount: float = typer.Option(0.5, help="fraction of weights (prune) or channels (prune-structured) removed"),
    epochs: int | None = typer.Option(None, help="fine-tune epochs after pruning / of QAT (0: none); default 1, "
                                               "structured pruning enough epochs for about 200 optimiser steps "
                                               "(at most 50), as the MedMNIST benchmark found it needs"),
    lr: float | None = typer.Option(None, help="fine-tune learning rate (cosine; AdamW for pruning, SGD with "
                                               "momentum for QAT); default by method"),
    max_train: int | None = typer.Option(None, help="at most this many training images per fine-tune epoch"),
    calibration_samples: int = CALIBRATION_SAMPLES,
    calibration: str = CALIBRATION,
    data: str | None = typer.Option(None, help="data set (default: the run's)"),
    float_ends: bool = FLOAT_ENDS,
    out: Path | None = typer.Option(None, help="parent folder of the new run (default: beside the source)"),
    name: str | None = typer.Option(None, help="new run folder name"),
    bootstrap: int = typer.Option(200, help="bootstrap resamples for the metrics' 95% CIs (0: none)"),
    distill: bool = typer.Option(True, "--distill/--no-distill",
                                 help="pruning and QAT fine-tunes fit the source model's outputs (knowledge "
                                      "distillation) instead of the labels"),
) -> None:
    """Prune or quantize a trained run into a NEW run folder with metadata and test metrics."""
    from meddx.deploy.compress import compress_run

    new = compress_run(run, method, amount=amount, epochs=epochs, lr=lr, max_train=max_train,
                       calibration_samples=calibration_samples, calibration=calibration, data_spec=data,
                       out=out, name=name, n_bootstrap=bootstrap, distill=distill, float_ends=float_ends)
    m = json.loads(new.metrics.read_text())
    info = json.loads((new.path / "compress.json").read_text())
    typer.echo(f"{method}: test ACC {m['acc']:.4f} ({m['delta_acc']:+.4f}) AUC {m['auc']:.4f} "
               f"({m['delta_auc']:+.4f}) | params {info['after']['params']:,} (nonzero "
               f"{info['after']['nonzero_params']:,}) | {info['after']['file_mb']:.2f} MB | runtime {m['runtime']}")
    typer.echo(f"run folder: {new.path}")
