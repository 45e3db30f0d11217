"""``load_model``: a checkpoint file -> the registered network with its weights, ready for inference.

The file format itself (safetensors + JSON metadata, format versions) lives in :mod:`meddx.utils.checkpoints`,
below the model registry, so that ``meddx.models`` (transfer learning) can read checkpoints too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from meddx.errors import MeddxError
from meddx.models import create_model
from meddx.models.pruned_shapes import apply_pruned_shapes
from meddx.utils.checkpoints import (
    META_KEY,
    model_state,
    read_checkpoint,
    restore_optimizer,
    save_checkpoint,
)

__all__ = ["META_KEY", "load_model", "model_state", "read_checkpoint", "restore_optimizer", "save_checkpoint"]


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the registered model described by a checkpoint's metadata and load its weights."""
    tensors, meta, _ = read_checkpoint(path)
    model = create_model(meta["model"], meta["in_channels"], meta["num_outputs"], meta["input_size"],
                         meta.get("spatial_dims", 2))
    if meta.get("pruned_shapes"):  # structurally pruned (meddx compress): resize the layers first
        apply_pruned_shapes(model, meta["pruned_shapes"])
    try:
        model.load_state_dict(model_state(tensors))
    except RuntimeError as exc:
        raise MeddxError(f"weights do not fit model {meta['model']!r}: {str(exc).splitlines()[0]}", path) from None
    return model.to(device).eval(), meta
