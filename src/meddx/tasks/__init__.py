"""Tasks: what a network's output means (loss, probabilities, metrics) for one kind of finding.

``get_task(name)`` returns a task object; the engine's loop is the same for all of them.
"""

from meddx.tasks.base import EvalRequest, Task, get_task, task_for_training, task_from_meta

__all__ = ["EvalRequest", "Task", "get_task", "task_for_training", "task_from_meta"]
