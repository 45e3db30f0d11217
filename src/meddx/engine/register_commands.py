"""``meddx register RUN FIXED MOVING``: option parsing only (work: :func:`meddx.engine.register.register_files`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from meddx.utils.cli import user_errors

app = typer.Typer()


@app.command()
@user_errors
def register(
    run: str = typer.Argument(..., metavar="RUN",
                              help="trained registration run folder (ignored by the classical methods: use -)"),
    fixed: Path = typer.Argument(..., metavar="FIXED",
                                 help="fixed image (2D image file or 3D NIfTI/NRRD/DICOM folder)"),
    moving: Path = typer.Argument(..., metavar="MOVING", help="moving image, on the fixed image's grid"),
    labels: Path | None = typer.Option(None, help="moving image's label map, warped with the image"),
    landmarks: Path | None = typer.Option(None, help="CSV of fixed,moving point pairs (voxels): TRE before/after"),
    out: Path | None = typer.Option(None, help="output folder (default: beside the moving image)"),
    method: str = typer.Option("learned", help="learned | sitk-bspline | sitk-affine | demons | identity"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    refine_steps: int | None = typer.Option(None, help="instance-optimisation steps after the network (learned "
                                            "method; default: the task's, 0: the network's field alone)"),
) -> None:
    """Register MOVING onto FIXED: warped image, displacement field (NIfTI) and warped labels."""
    from meddx.engine.register import register_files

    result = register_files(fixed, moving, run=None if run == "-" else run, labels=labels, landmarks=landmarks,
                            out_dir=out, method=method, device=device, refine_steps=refine_steps)
    typer.echo(json.dumps(result, indent=1))  # plain: a rich console would wrap long paths inside the JSON
