"""CLI commands of meddx.explain, registered on the main app by `meddx.cli` (heavy imports stay inside the commands)."""

# NOTE TO THE IMPLEMENTER (helper agents): the team rules and the spine's API are in /tmp/brief_common.md -- read it
# now (no git commits, no GPU/device tools, serialise heavy CPU runs with flock /tmp/meddx-cpu.lock, no ruff format).
# Delete this note when you edit this file.

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this capability's commands to `app` (none yet)."""
