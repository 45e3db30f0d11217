"""The ``meddx`` command line: one typer app made of each capability's sub-app, added explicitly here.

Each ``<package>/commands.py`` holds only option parsing over its library functions; nothing registers
itself at import time. Every user error prints one line, ``error: <file>: <problem>``, and exits non-zero.
"""

from __future__ import annotations

import sys

import typer

from meddx.data import commands as data_commands
from meddx.deploy import commands as deploy_commands
from meddx.engine import commands as engine_commands
from meddx.engine import reconstruct_commands, register_commands
from meddx.explain import commands as explain_commands
from meddx.models import commands as model_commands
from meddx.pacs import commands as pacs_commands
from meddx.serve import commands as serve_commands
from meddx.utils.cli import words_in_help

words_in_help()

app = typer.Typer(help="meddx: medical images to diagnoses - train, evaluate, explain and ship models.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

for sub_app in (engine_commands.app, explain_commands.app, deploy_commands.app, serve_commands.app,
                data_commands.app, model_commands.app, reconstruct_commands.app, register_commands.app,
                pacs_commands.app):
    app.add_typer(sub_app)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"meddx {version('meddx')}")
        except PackageNotFoundError:  # running from a source tree that was never installed
            typer.echo("meddx (not installed)")
        raise typer.Exit()


@app.callback()
def main_options(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    """meddx: medical images to diagnoses - train, evaluate, explain and ship models."""


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
