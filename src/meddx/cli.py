"""The ``meddx`` command line: thin typer commands over the library's public functions.

Every user error (``MeddxError``) prints one line, ``error: <file>: <problem>``, and exits with 2.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from meddx.errors import MeddxError

app = typer.Typer(help="meddx: medical images to diagnoses - train, evaluate, explain and ship models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MeddxError (and a few I/O errors) into a one-line message and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MeddxError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted (the last completed epoch is saved; continue with --resume RUN)", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _train_config(**kw: Any):
    from meddx.engine.config import TrainConfig

    return TrainConfig(**{k: v for k, v in kw.items() if v is not None})


@app.command()
@user_errors
def train(
    data: str = typer.Option("phantom", help="phantom | MedMNIST name | .npz | image folder | CSV manifest"),
    task: str | None = typer.Option(None, help="classification (default) or another registered task"),
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
    select: str | None = typer.Option(None, help="model to test and ship: last (default) | best (val metric)"),
    ema_decay: float | None = typer.Option(None, help="EMA of the weights with this decay (default 0: off)"),
    seed: int = typer.Option(0),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:1 ..."),
    out: str = typer.Option("runs", help="parent folder of run folders"),
    name: str | None = typer.Option(None, help="run folder name (default: data-model-time)"),
    max_minutes: float | None = typer.Option(None, help="stop cleanly after this wall time"),
    tensorboard: bool = typer.Option(False, help="also log to TensorBoard"),
    resume: Path | None = typer.Option(None, help="continue an interrupted run folder"),
    evaluate: bool = typer.Option(True, help="evaluate on the test split and write the report afterwards"),
) -> None:
    """Train a model; writes a run folder with config, history and checkpoints."""
    from meddx.engine.fit import fit

    cfg = _train_config(data=data, task=task, model=model, size=size, data_dir=data_dir, epochs=epochs,
                        batch_size=batch_size, patch=patch,
                        lr=lr, optimizer=optimizer, schedule=schedule, class_weights=class_weights or None,
                        augment=augment, pretrained=pretrained, patience=patience, select=select,
                        ema_decay=ema_decay, seed=seed, device=device, out=out, name=name,
                        max_minutes=max_minutes, tensorboard=tensorboard or None)
    console = _console(stderr=True)
    run = fit(cfg, resume=resume, console=console)
    console.print(f"run folder: {run.path}")
    if evaluate:
        _evaluate_and_print(run.path)


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
    run: Path = typer.Argument(..., help="run folder"),
    split: str = typer.Option("test", help="train | val | test"),
    bootstrap: int = typer.Option(1000, help="bootstrap resamples for the 95% CIs (0: none)"),
) -> None:
    """Evaluate a run's best checkpoint: metrics.json and a self-contained report.html."""
    _evaluate_and_print(run, split, bootstrap)


@app.command()
@user_errors
def predict(
    run: Path = typer.Argument(..., help="run folder or .safetensors checkpoint"),
    images: list[Path] = typer.Argument(..., help="PNG/JPEG/.npy files (3D segmentation: NIfTI/NRRD/DICOM folder)"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
    device: str = typer.Option("auto"),
    runtime: str = typer.Option("auto", help="auto | torch | onnx | int8: auto is int8 (the run's model_int8.onnx) "
                                "for a ptq/qat-compressed run, else torch; onnx is the run's model.onnx"),
    out: Path | None = typer.Option(None, help="folder for predicted mask files (default: beside each input)"),
) -> None:
    """Predict classes and probabilities for image files (masks for segmentation runs, as files + JSON)."""
    from meddx.engine.predict import Predictor

    predictor = Predictor(run, device=device, runtime=runtime)
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
    console.print(f"done. open {run.path / 'report.html'} in a browser")


@app.command()
@user_errors
def datasets(data_dir: str | None = typer.Option(None, envvar="MEDDX_DATA")) -> None:
    """List the data sets meddx knows and whether their files are present."""
    from rich.table import Table

    from meddx.data.medmnist import default_data_dir, file_name, medmnist_info

    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    table = Table("name", "task", "classes", "channels", "dims", "local sizes")
    table.add_row("phantom", "binary-class", "2", "1", "2D/3D", "built in (synthetic)")
    for name, info in medmnist_info().items():
        have = [s for s in info["files"] if (root / file_name(name, s)).is_file()
                or (root / name / file_name(name, s)).is_file()]
        table.add_row(name, info["task"], str(len(info["labels"])), str(info["n_channels"]),
                      f"{info['spatial_dims']}D", ", ".join(have) or "-")
    _console().print(table)
    _console().print(f"data folder: {root} (set --data-dir or MEDDX_DATA)")


@app.command()
def models() -> None:
    """List the registered models."""
    from rich.table import Table

    from meddx.models.registry import DEFAULT_MODEL, REGISTRY

    table = Table("name", "from", "dims", "CAM layer", "description")
    for s in REGISTRY.values():
        name = f"{s.name} (default)" if s.name == DEFAULT_MODEL else s.name
        table.add_row(name, s.source, "/".join(f"{d}D" for d in s.spatial_dims), s.target_layer, s.summary)
    _console().print(table)


def _register_capabilities() -> None:
    """Commands of the other capabilities, each kept in its own module (an explicit list, no plugins magic)."""
    from meddx.deploy.commands import register as deploy_commands
    from meddx.explain.commands import register as explain_commands
    from meddx.serve.commands import register as serve_commands

    for register in (explain_commands, deploy_commands, serve_commands):
        register(app)


_register_capabilities()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
