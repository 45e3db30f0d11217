"""Rebuild a structurally pruned network: resize a freshly built model's layers to recorded shapes.

Lives beside the registry (not in ``meddx.deploy``) because loading any checkpoint may need it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from meddx.errors import MeddxError


def apply_pruned_shapes(model: nn.Module, shapes: dict[str, dict[str, Any]]) -> nn.Module:
    """Resize the layers of a freshly built model to the shapes recorded by :func:`pruned_shapes` (values are
    then filled by ``load_state_dict``)."""
    for name, spec in shapes.items():
        try:
            m = model.get_submodule(name) if name else model
        except AttributeError:
            raise MeddxError(f"pruned checkpoint names a layer {name!r} the model does not have") from None
        for attr, value in spec["attrs"].items():
            setattr(m, attr, value)
        for key, shape in spec["tensors"].items():
            old = getattr(m, key, None)
            if old is None or list(old.shape) == shape:
                continue
            new = torch.empty(shape, dtype=old.dtype)
            if isinstance(old, nn.Parameter):
                setattr(m, key, nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                m.register_buffer(key, new)
    return model
