"""Commands of meddx.serve: a typer sub-app (no commands yet; the HTTP service is an open issue)."""

from __future__ import annotations

import typer

app = typer.Typer()
