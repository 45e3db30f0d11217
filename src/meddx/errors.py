"""User-facing errors: one line that names the file (or value) and the problem.

The CLI prints ``MeddxError`` as ``error: <message>`` and exits non-zero; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class MeddxError(Exception):
    """An error caused by the user's input, reported as one line (exit code :attr:`exit_code`)."""

    exit_code = 2

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = str(path) if path is not None else None
        text = f"{self.path}: {message}" if self.path else message
        super().__init__(text.replace("\n", " "))


class Interrupted(MeddxError):
    """Ctrl-C during a long job; the message says what was saved and how to continue (exit code 130)."""

    exit_code = 130
