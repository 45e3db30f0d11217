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


def words_in_help() -> None:
    """Help names values in words (``RUN``, ``FILE``, ``INTEGER``), not Python types.

    typer >= 0.2x prints each parameter's annotation in help (``<path>``, ``<list[Path]>``, ``<str>``) and wraps
    required arguments in braces in the usage line (``{RUN} [FILE...]...``); it has no setting for either. These
    three small overrides, applied once by ``meddx.cli``, give click's conventional form instead: an option shows its
    metavar (or click's word for its type: ``TEXT``, ``INTEGER``, ``PATH``; nothing for a flag), an argument its
    metavar only, and the usage line ``RUN [FILE]...``. Written by hand because typer offers no switch for it."""
    import typer.core as tc

    words = {"str": "TEXT", "int": "INTEGER", "float": "NUMBER", "path": "PATH", "file": "PATH", "dir": "PATH"}

    def option_word(self: Any, ctx: Any) -> str | None:
        if self.metavar is not None:
            return self.metavar
        if getattr(self, "is_flag", False) or getattr(self, "count", False):
            return None
        typed = (self.display_type(ctx) or "").strip("<>")
        many = typed.startswith("list[")
        typed = typed.removeprefix("list[").removesuffix("]")
        word = words.get(typed.lower(), typed.upper()) if typed not in ("bool", "") else None
        return None if word is None else word + ("..." if many or self.nargs != 1 else "")

    def usage_name(self: Any) -> str:
        name = self.display_name_raw
        dots = "..." if self.nargs != 1 and not name.endswith("...") else ""
        return (name + dots) if self.required else f"[{name}{dots}]"

    tc.TyperOption.display_type_rich = option_word
    tc.TyperArgument.display_type_rich = lambda self, ctx: None
    tc.TyperArgument._usage_display_name = usage_name
