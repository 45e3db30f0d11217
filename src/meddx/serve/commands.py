"""CLI commands of meddx.serve, registered on the main app by `meddx.cli` (heavy imports stay inside the commands)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this capability's commands to `app` (none yet)."""
