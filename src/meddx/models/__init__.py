"""Model registry and transfer learning: ``list_models``, ``create_model``, ``load_pretrained``.

The names load on first use, so that importing a submodule (``meddx.models.commands``) does not import torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"DEFAULT_MODEL": "registry", "ModelSpec": "registry", "create_model": "registry",
            "get_model_spec": "registry", "list_models": "registry", "load_pretrained": "pretrained"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"meddx.models.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'meddx.models' has no attribute {name!r}")
