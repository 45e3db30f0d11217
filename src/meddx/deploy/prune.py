"""Pruning: unstructured magnitude masks (``torch.nn.utils.prune``) and structured channel removal (torch-pruning).

Unstructured pruning zeroes the smallest weights but keeps every tensor's shape, so dense kernels run exactly
as fast as before (only a compressed file shrinks). Structured pruning removes whole channels; removing a
channel must also remove it from every layer that consumes it (residual additions, BatchNorm, the classifier
input), which is a dependency-graph problem. torch-pruning (DepGraph, Fang et al., CVPR 2023) traces the model
and removes coupled channels groupwise; we use it instead of a hand-written channel surgery.

A structurally pruned network has other layer shapes than its registered architecture; the checkpoint stores
the new widths (``meta["pruned_shapes"]``: per layer the shape attributes and parameter/buffer shapes), and
:func:`apply_pruned_shapes` resizes a freshly built registered model to them before the safetensors weights load.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from meddx.errors import MeddxError
from meddx.models.pruned_shapes import apply_pruned_shapes  # noqa: F401  (re-exported for callers)

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
SHAPE_ATTRS = ("in_channels", "out_channels", "groups", "num_features", "num_channels", "num_groups", "in_features",
               "out_features")
# Models whose channel coupling torch-pruning does not follow correctly (checked in tests/test_deploy.py):
# ShuffleNetV2 splits and shuffles channels with view/transpose, so pruned widths break the shuffle.
# MONAI's UNet concatenates its skip connections inside nested SkipConnection modules; torch-pruning cannot
# map the concatenated channels back to their sources (a TypeError in its concat index mapping).
STRUCTURED_UNSUPPORTED = {"shufflenet_v2": "its channel split + shuffle couples channel order across branches",
                          "unet": "torch-pruning cannot trace the channels of MONAI UNet's concatenated skip "
                                  "connections; use segresnet, or unstructured pruning"}


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [(m, "weight") for m in model.modules() if isinstance(m, PRUNABLE)]


def prune_unstructured(model: nn.Module, amount: float) -> None:
    """Global L1 magnitude pruning of ``amount`` (0..1) of all Conv/Linear weights; masks stay attached
    (``weight = weight_orig * weight_mask``) so a fine-tune keeps the zeros; call :func:`make_permanent` after."""
    import torch.nn.utils.prune as prune

    if not 0.0 < amount < 1.0:
        raise MeddxError(f"pruning amount must be between 0 and 1, got {amount}")
    prune.global_unstructured(prunable_weights(model), pruning_method=prune.L1Unstructured, amount=amount)


def make_permanent(model: nn.Module) -> None:
    """Fold the pruning masks into the weights (plain tensors with zeros, loadable as a normal checkpoint)."""
    import torch.nn.utils.prune as prune

    for m, name in prunable_weights(model):
        if prune.is_pruned(m) and hasattr(m, f"{name}_mask"):
            prune.remove(m, name)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of zero entries over all Conv/Linear weights."""
    ws = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(w.numel() for w in ws)
    return float(sum(int((w == 0).sum()) for w in ws) / max(total, 1))


def channel_count(model: nn.Module) -> int:
    """Output channels/features of all Conv/Linear layers (the width measure structured pruning reduces)."""
    return sum(m.weight.shape[0] for m in model.modules() if isinstance(m, PRUNABLE))


def prune_structured(model: nn.Module, model_name: str, ratio: float, example: torch.Tensor,
                     head: str | None = None) -> dict[str, Any]:
    """Remove ``ratio`` of the channels of every layer (L2 magnitude groups) except the classifier output."""
    import torch_pruning as tp

    from meddx.models.registry import get_submodule

    if model_name in STRUCTURED_UNSUPPORTED:
        raise MeddxError(f"structured pruning does not support model {model_name!r}: "
                         f"{STRUCTURED_UNSUPPORTED[model_name]}")
    if not 0.0 < ratio < 1.0:
        raise MeddxError(f"pruning ratio must be between 0 and 1, got {ratio}")
    model.eval()
    # the classifier (or, for head-less segmenters, the last layer: it writes the class maps) keeps its outputs
    ignored = [get_submodule(model, head)] if head else [_last_layer(model)]
    before = channel_count(model)
    with torch.no_grad():
        ref_shape = model(example).shape
    try:
        pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored)
        pruner.step()
        with torch.no_grad():
            out = model(example)
    except Exception as exc:  # torch-pruning/tracing errors: report which model cannot be pruned
        raise MeddxError(f"structured pruning failed for model {model_name!r} ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if out.shape != ref_shape:
        raise MeddxError(f"structured pruning changed the output shape of {model_name!r}")
    after = channel_count(model)
    return {"channels_before": before, "channels_after": after, "channels_removed": 1 - after / before}


def _last_layer(model: nn.Module) -> nn.Module:
    layers = [m for m in model.modules() if isinstance(m, (*PRUNABLE, nn.ConvTranspose2d, nn.ConvTranspose3d))]
    if not layers:
        raise MeddxError("structured pruning found no Conv/Linear layer in the model")
    return layers[-1]


def pruned_shapes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Shape attributes and parameter/buffer shapes of every layer: enough to rebuild a pruned network."""
    shapes: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        attrs = {a: getattr(m, a) for a in SHAPE_ATTRS if isinstance(getattr(m, a, None), int)}
        if not attrs:
            continue
        tensors = {k: list(v.shape) for k, v in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]
                   if v is not None}
        shapes[name] = {"attrs": attrs, "tensors": tensors}
    return shapes
