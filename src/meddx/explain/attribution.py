"""Gradient and perturbation runners from captum (integrated gradients, saliency, occlusion); no layer needed."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from meddx.explain.hooks import optional_import
from meddx.explain.inputs import forward_targets


def integrated_gradients(model, x, targets, layer, options):
    IntegratedGradients = optional_import("captum.attr:IntegratedGradients")  # noqa: N806
    t = forward_targets(model, x, targets)
    baseline = options.get("baseline", 0.0)
    baselines = torch.full_like(x, float(baseline)) if not torch.is_tensor(baseline) else baseline.to(x)
    attr = IntegratedGradients(model).attribute(
        x, baselines=baselines, target=t, n_steps=int(options.get("n_steps", 32)),
        internal_batch_size=int(options.get("internal_batch_size", 64)))
    return attr.detach().abs().sum(1)


def saliency(model, x, targets, layer, options):
    Saliency = optional_import("captum.attr:Saliency")  # noqa: N806
    t = forward_targets(model, x, targets)
    return Saliency(model).attribute(x.clone().requires_grad_(True), target=t, abs=True).detach().amax(1)


def occlusion_window(shape: Sequence[int]) -> tuple[int, int]:
    """(window, stride) for occlusion: 1/12 of the side in 2D, 1/4 in 3D (bounds the forwards), half-overlapping.

    The window sets the map's resolution: on the phantom (48 px) a 4 px window put the peak inside the nodule
    on 0.78 of the images and a 6 px (1/8) one on 0.56 (benchmarks/explain.py), at 2.2x the forwards.
    """
    window = max(2, round(min(shape) / (12 if len(shape) == 2 else 4)))
    return window, max(1, window // 2)


def occlusion(model, x, targets, layer, options):
    Occlusion = optional_import("captum.attr:Occlusion")  # noqa: N806
    t = forward_targets(model, x, targets)
    spatial = tuple(x.shape[2:])
    window, stride = occlusion_window(spatial)
    window, stride = int(options.get("window", window)), int(options.get("stride", stride))
    c = x.shape[1]
    with torch.no_grad():
        attr = Occlusion(model).attribute(
            x, sliding_window_shapes=(c,) + (window,) * len(spatial), strides=(c,) + (stride,) * len(spatial),
            baselines=float(options.get("baseline", 0.0)), target=t,
            perturbations_per_eval=int(options.get("perturbations_per_eval", 64)))
    return attr.mean(1).clamp_min(0)  # positive: hiding the region lowers the target score
