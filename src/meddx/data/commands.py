"""``meddx datasets``: the data sets meddx knows and which are on disk (a typer sub-app)."""

from __future__ import annotations

from pathlib import Path

import typer

from meddx.utils.cli import console as _console
from meddx.utils.cli import user_errors

app = typer.Typer()


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
