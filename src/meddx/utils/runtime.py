"""Seeding and device choice, so the same code runs on CPU here and on a GPU elsewhere."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def pick_device(requested: str | None = None) -> torch.device:
    """Return ``requested`` if given, else CUDA, then MPS, then CPU."""
    if requested and requested != "auto":
        return _checked_device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def _checked_device(requested: str) -> torch.device:
    """``torch.device(requested)`` if this machine has it, else a one-line error (never a CUDA traceback)."""
    from meddx.errors import MeddxError

    try:
        device = torch.device(requested)
    except (RuntimeError, ValueError):
        raise MeddxError(f"unknown device {requested!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (device.index or 0) >= count:
            raise MeddxError(f"device {requested!r} is not available here ({count} CUDA GPU(s) visible); "
                             "use --device cpu or auto")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise MeddxError(f"device {requested!r} is not available here; use --device cpu or auto")
    return device
