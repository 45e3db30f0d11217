"""Helpers shared by the benchmark scripts: where the real data lies, and printing a table + JSON line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDDX_SHARED", REPO.parent / "shared" / "datasets"))


def print_table(rows: list[dict[str, Any]], columns: list[str], title: str) -> None:
    """A rich table on stdout, then the rows as one JSON line (the machine-readable headline)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(*columns, title=title)
    for r in rows:
        table.add_row(*(_fmt(r.get(c)) for c in columns))
    Console(width=200).print(table)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, default=float))
