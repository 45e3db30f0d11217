"""Leaving the model as it was found: eval mode and frozen parameters while explaining, hooks always removed,
and the optional explanation libraries (pytorch-grad-cam, captum) imported on first use.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn

from meddx.errors import MeddxError


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while explaining; everything restored afterwards, also on error.

    Freezing the parameters means backward passes compute gradients for the input and the hooked
    activations only (cheaper, and the user's ``.grad`` buffers are never touched).
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


@contextlib.contextmanager
def released(cam: Any) -> Iterator[Any]:
    """Yield a pytorch-grad-cam object and always remove its hooks.

    Not ``with cam:``: pytorch-grad-cam's ``__exit__`` prints and *swallows* an ``IndexError``, which would
    turn a bad target class into a silent ``None``.
    """
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def hook_count(model: nn.Module) -> int:
    """Number of forward/backward hooks registered on any module of ``model`` (0 when clean)."""
    total = 0
    for m in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            total += len(getattr(m, name, {}) or {})
    return total


def optional_import(path: str) -> Any:
    """``module:name`` imported on first use, with a one-line hint when the optional extra is missing."""
    import importlib

    module, name = path.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise MeddxError(f"explanations need pytorch-grad-cam and captum: pip install 'meddx[explain]' ({exc})") \
            from None
