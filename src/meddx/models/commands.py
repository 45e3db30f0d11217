"""``meddx models``: the registered networks (a typer sub-app)."""

from __future__ import annotations

import typer

from meddx.utils.cli import console as _console

app = typer.Typer()


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
