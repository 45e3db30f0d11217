"""Tasks: what a network's output means (loss, probabilities, metrics) for one kind of finding.

``get_task(name)`` returns a task object; the engine's loop is the same for all of them. The names load on
first use (``meddx.tasks.base`` imports torch), so that torch-free submodules (``classification_files``, used by
the ONNX prediction path) do not pay for it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EvalRequest", "Task", "get_task", "task_for_training", "task_from_meta"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from meddx.tasks import base

        return getattr(base, name)
    raise AttributeError(f"module 'meddx.tasks' has no attribute {name!r}")
