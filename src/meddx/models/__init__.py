"""Model registry and transfer learning: ``list_models``, ``create_model``, ``load_pretrained``."""

from meddx.models.pretrained import load_pretrained
from meddx.models.registry import DEFAULT_MODEL, ModelSpec, create_model, get_model_spec, list_models

__all__ = ["DEFAULT_MODEL", "ModelSpec", "create_model", "get_model_spec", "list_models", "load_pretrained"]
