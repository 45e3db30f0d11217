"""``meddx reconstruct RUN IMAGE... [--out DIR]`` (option parsing only; the work is
:func:`meddx.engine.reconstruct.reconstruct_files`, imported inside the command so ``meddx --help`` stays fast)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from meddx.utils.cli import user_errors

app = typer.Typer()


@app.command()
@user_errors
def reconstruct(
    run: Path = typer.Argument(..., metavar="RUN", help="reconstruction run folder or .safetensors checkpoint"),
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="degraded slices: DICOM, NIfTI, PNG, .npy"),
    out: Path | None = typer.Option(None, help="folder for the outputs (default: beside each input)"),
    device: str = typer.Option("auto"),
) -> None:
    """Reconstruct degraded images with a trained reconstruction run: same format out, geometry kept."""
    from meddx.engine.reconstruct import reconstruct_files

    results = reconstruct_files(run, list(images), out, device)
    typer.echo(json.dumps(results, indent=2))
