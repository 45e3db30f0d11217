"""What to explain: target classes (index, name or predicted), the CAM target layer, and the input batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from meddx.errors import MeddxError


class ClassTarget:
    """pytorch-grad-cam target: the logit of class ``index`` (``None``: the predicted class), range-checked."""

    def __init__(self, index: int | None) -> None:
        self.index = index

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        k = int(output.argmax()) if self.index is None else self.index
        if k >= output.shape[-1]:
            raise MeddxError(f"target class {k} is out of range: the model has {output.shape[-1]} outputs "
                             f"(0..{output.shape[-1] - 1})")
        return output[..., k]


def resolve_target(target: Any, class_names: Sequence[str] | None = None) -> int | None:
    """A class index from an index, a numeric string or a class name; ``None`` stays ``None`` (predicted)."""
    if target is None:
        return None
    if isinstance(target, (np.integer, int)) and not isinstance(target, bool):
        k = int(target)
    elif isinstance(target, str):
        names = list(class_names or [])
        if target in names:
            return names.index(target)
        lowered = [n.lower() for n in names]
        if target.lower() in lowered:
            return lowered.index(target.lower())
        if not target.lstrip("-").isdigit():
            avail = f"; classes: {', '.join(repr(n) for n in names)}" if names else " (give a class index)"
            raise MeddxError(f"unknown target class {target!r}{avail}")
        k = int(target)
    else:
        raise MeddxError(f"target must be a class index or name, got {target!r}")
    if k < 0 or (class_names and k >= len(class_names)):
        n = len(class_names or [])
        raise MeddxError(f"target class {k} is out of range" + (f": {n} classes (0..{n - 1})" if n else ""))
    return k


def targets_for(target: Any, n: int, class_names: Sequence[str] | None) -> list[int | None]:
    if target is None or isinstance(target, (str, int, np.integer)):
        return [resolve_target(target, class_names)] * n
    seq = target.tolist() if isinstance(target, (np.ndarray, torch.Tensor)) else list(target)
    if len(seq) != n:
        raise MeddxError(f"got {len(seq)} targets for {n} images")
    return [resolve_target(t, class_names) for t in seq]


def forward_targets(model: nn.Module, x: torch.Tensor, targets: list[int | None]) -> list[int]:
    """Fill ``None`` targets with the predicted class and range-check the rest (one forward pass)."""
    with torch.no_grad():
        out = model(x)
    k = out.shape[-1]
    pred = out.argmax(-1).tolist()
    resolved = []
    for t, p in zip(targets, pred):
        t = p if t is None else t
        if t >= k:
            raise MeddxError(f"target class {t} is out of range: the model has {k} outputs (0..{k - 1})")
        resolved.append(int(t))
    return resolved


_SOURCE_MODULES = {"MONAI": "monai", "torchvision": "torchvision", "timm": "timm", "torch.nn": "torch"}


def default_layer_name(model: nn.Module, model_name: str | None = None) -> str:
    """The registered target layer of ``model``: from ``model_name``, else from the registry entries that fit.

    A model built by ``create_model`` matches the registry rows whose target layer and head exist in it
    and whose library is the one the model class comes from; they all declare the same layer or the
    caller must say ``model_name=``/``layer=``.
    """
    from meddx.models.registry import REGISTRY, get_model_spec

    if model_name:
        spec = get_model_spec(model_name)
        if not spec.target_layer:
            raise MeddxError(f"model {model_name!r} declares no CAM layer (explanations are for classifiers); "
                             "pass layer=")
        return spec.target_layer
    top = type(model).__module__.split(".")[0]
    found = set()
    for spec in REGISTRY.values():
        if not spec.target_layer or not spec.head or _SOURCE_MODULES.get(spec.source, spec.source) != top:
            continue
        if top == "meddx" and type(model).__module__ != f"meddx.models.{spec.builder.split(':')[0]}":
            continue  # meddx's own networks share layer names (ag and mil both have layer2 and fc): match the module
        try:
            model.get_submodule(spec.target_layer)
            model.get_submodule(spec.head)
        except AttributeError:
            continue
        found.add(spec.target_layer)
    if len(found) == 1:
        return found.pop()
    hint = f" (candidates: {', '.join(sorted(found))})" if found else ""
    raise MeddxError(f"cannot tell which registered model this {type(model).__name__} is{hint}; "
                     "pass model_name= or layer=")


def resolve_layer(model: nn.Module, layer: str | nn.Module | None = None,
                  model_name: str | None = None) -> tuple[nn.Module, str]:
    """(module, dotted name) of the CAM target layer."""
    if isinstance(layer, nn.Module):
        name = next((n for n, m in model.named_modules() if m is layer), None)
        if name is None:
            raise MeddxError("the given layer is not part of the model")
        return layer, name or "<model>"
    name = layer or default_layer_name(model, model_name)
    try:
        return model.get_submodule(name), name
    except AttributeError:
        raise MeddxError(f"model has no layer {name!r}") from None


def input_signature(model: nn.Module) -> tuple[int, int] | None:
    """(in_channels, spatial rank) from the first convolution, or None if the model has none."""
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            return int(m.in_channels), m.weight.ndim - 2
    return None


def as_batch(images: Any, model: nn.Module) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    sig = input_signature(model)
    if x.ndim not in (4, 5):
        rank = f"{sig[1]}D model: (N, C, {'H, W' if sig[1] == 2 else 'D, H, W'})" if sig else "model"
        raise MeddxError(f"expected a batch of images for the {rank}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise MeddxError("no images to explain")
    if sig is not None:
        channels, rank = sig
        if x.ndim - 2 != rank:
            raise MeddxError(f"the model takes {rank}D inputs, got a {x.ndim - 2}D batch of shape {tuple(x.shape)}")
        if x.shape[1] != channels:
            raise MeddxError(f"images have {x.shape[1]} channels, the model expects {channels}")
    x = x.detach().float()
    if not torch.isfinite(x).all():
        raise MeddxError("images contain NaN or infinite values")
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return x.to(device)
