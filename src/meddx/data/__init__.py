"""Data: MedMNIST files, image folders, CSV manifests and the synthetic CT phantom, as in-memory tensors.

``from meddx.data import load_data, DataBundle, Split``; the names load on first use, so that importing a
submodule (``meddx.data.commands`` for the CLI) does not import torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {"DataBundle": "dataset", "Split": "dataset", "load_data": "sources"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"meddx.data.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'meddx.data' has no attribute {name!r}")
