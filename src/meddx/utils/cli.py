"""What every command module shares: the one-line error contract and rich consoles (typer/rich only).

Every user error (``MeddxError``) prints one line, ``error: <file>: <problem>``, and exits with its
``exit_code`` (2; 130 for an interrupted job).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from meddx.errors import MeddxError


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn MeddxError into a one-line message and its exit code; a bare Ctrl-C exits 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MeddxError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr)
