"""meddx.explain: heat maps for classification models (2D and 3D), their faithfulness, overlays and the CLI.

``from meddx.explain import explain`` - see :mod:`meddx.explain.methods` for the method table (which methods
exist, which support 3D), :mod:`meddx.explain.faithfulness` for pointing game / energy in mask / deletion and
insertion AUC, :mod:`meddx.explain.overlay` for PNGs and the gallery page. Imports are lazy so that the CLI
starts without loading torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "explain": "methods", "METHODS": "methods", "get_method": "methods", "list_methods": "methods",
    "resolve_layer": "methods", "hook_count": "methods",
    "pointing_game": "faithfulness", "energy_in_mask": "faithfulness", "deletion_auc": "faithfulness",
    "insertion_auc": "faithfulness", "deletion_aucs": "faithfulness", "insertion_aucs": "faithfulness",
    "perturbation_curve": "faithfulness", "perturbation_curves": "faithfulness", "FaithfulnessMeter": "faithfulness",
    "explain_files": "files",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f"meddx.explain.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'meddx.explain' has no attribute {name!r}")
