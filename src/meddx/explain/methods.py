"""``explain(model, images, target=None, method="gradcam")``: heat maps at input resolution, 2D and 3D.

One interface over two libraries:

* CAM methods from pytorch-grad-cam (``gradcam``, ``gradcam++``, ``hirescam``, ``scorecam``, ``eigencam``,
  ``layercam``, ``xgradcam``). They hook the model's *target layer*, which every registered model declares
  (``meddx.models.get_model_spec(name).target_layer``), so nobody has to find ``layer4[-1]`` by hand.
  The hooks live in a context manager that always removes them, also when the call fails.
* Gradient and perturbation methods from captum (``integrated_gradients`` with an internal batch size,
  ``saliency``, ``occlusion``); they need no layer.

Every method works on any spatial rank the model takes (2D images, 3D volumes): pytorch-grad-cam's
weighting code is rank-generic (activations (N, K, *spatial)), its Score-CAM is not, so meddx ships a
rank-generic Score-CAM weighting; the captum methods only see tensors. ``METHODS[name].supports_3d`` says
so per method, and the tests run every method on a 3D model.

Each returned map is float32 in [0, 1] (per image: negative evidence clipped, then min-max scaled; a
constant map is all zeros) with the input's spatial shape. The model is left as it was found: training
mode, ``requires_grad`` flags and parameter ``.grad`` are restored, no hooks remain, and the call works
inside ``torch.no_grad()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.errors import MeddxError
from meddx.explain.attention import attention_maps
from meddx.explain.attribution import integrated_gradients, occlusion, saliency
from meddx.explain.cam import cam_runner, grad_cam_class, score_cam_class
from meddx.explain.hooks import hook_count, model_guard
from meddx.explain.inputs import as_batch, forward_targets, resolve_layer, resolve_target, targets_for

__all__ = ["DEFAULT_METHOD", "METHODS", "Method", "explain", "get_method", "hook_count", "list_methods",
           "normalize_maps", "resolve_layer", "resolve_target"]

DEFAULT_METHOD = "gradcam"


@dataclass(frozen=True)
class Method:
    """One row of the method table."""

    name: str
    label: str  # display name
    family: str  # "cam" (hooks a layer), "gradient", "perturbation" or "attention" (the model's own)
    supports_3d: bool
    summary: str
    run: Callable[..., torch.Tensor]  # (model, x, targets, layer, options) -> (N, *spatial) raw map
    class_agnostic: bool = False  # the map ignores the target class (Eigen-CAM); targets are still checked

    @property
    def needs_layer(self) -> bool:
        return self.family == "cam"


_TABLE = (
    Method("gradcam", "Grad-CAM", "cam", True, "channel weights = mean gradient (Selvaraju et al. 2017)",
           cam_runner(grad_cam_class("GradCAM"))),
    Method("gradcam++", "Grad-CAM++", "cam", True, "second-order positive-gradient weights (Chattopadhay 2018)",
           cam_runner(grad_cam_class("GradCAMPlusPlus"))),
    Method("hirescam", "HiResCAM", "cam", True, "element-wise gradient x activation, summed over channels",
           cam_runner(grad_cam_class("HiResCAM"))),
    Method("xgradcam", "XGrad-CAM", "cam", True, "activation-normalised gradient weights (Fu et al. 2020)",
           cam_runner(grad_cam_class("XGradCAM"))),
    Method("layercam", "LayerCAM", "cam", True, "positive gradients x activations per location (Jiang 2021)",
           cam_runner(grad_cam_class("LayerCAM"))),
    Method("scorecam", "Score-CAM", "cam", True, "weights = class score of the input masked by each channel "
           "(one forward per channel; slow)", cam_runner(score_cam_class)),
    Method("eigencam", "Eigen-CAM", "cam", True, "first principal component of the activations (class-agnostic, "
           "no gradients; sign is arbitrary)", cam_runner(grad_cam_class("EigenCAM")), class_agnostic=True),
    Method("integrated_gradients", "Integrated Gradients", "gradient", True,
           "|path integral of input gradients| from a mean-image baseline, 32 steps (captum)", integrated_gradients),
    Method("saliency", "Saliency", "gradient", True, "max |input gradient| over channels (captum)", saliency),
    Method("occlusion", "Occlusion", "perturbation", True, "score drop when a sliding patch "
           "(1/12 of the side, 1/4 in 3D) is set to the mean (captum; many forwards, slow in 3D)", occlusion),
    Method("attention", "Attention", "attention", True, "the network's own attention: attention-gate / CBAM "
           "coefficients, attention-MIL weights (mean of the heads), ViT attention rollout (attention models only)",
           attention_maps, class_agnostic=True),
)
METHODS: dict[str, Method] = {m.name: m for m in _TABLE}
_ALIASES = {"gradcampp": "gradcam++", "gradcam_plusplus": "gradcam++", "grad-cam": "gradcam",
            "grad-cam++": "gradcam++", "ig": "integrated_gradients", "integratedgradients": "integrated_gradients",
            "score-cam": "scorecam", "eigen-cam": "eigencam", "layer-cam": "layercam"}


def get_method(name: str) -> Method:
    key = name.lower().replace(" ", "")
    key = _ALIASES.get(key, key)
    if key not in METHODS:
        raise MeddxError(f"unknown explanation method {name!r}; available: {', '.join(METHODS)}")
    return METHODS[key]


def list_methods(spatial_dims: int | None = None) -> list[str]:
    """Method names (only those supporting 3D when ``spatial_dims == 3``)."""
    return [m.name for m in _TABLE if spatial_dims != 3 or m.supports_3d]


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per map: NaN -> 0, negatives clipped, min-max to [0, 1]; a constant map becomes all zeros."""
    m = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).clamp_min(0)
    flat = m.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    shape = (-1,) + (1,) * (m.ndim - 1)
    span = (hi - lo).view(shape)
    return torch.where(span > 1e-12, (m - lo.view(shape)) / span.clamp_min(1e-12), torch.zeros_like(m))


def _to_input_size(maps: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    if tuple(maps.shape[1:]) == spatial:
        return maps
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    return F.interpolate(maps.unsqueeze(1), size=spatial, mode=mode, align_corners=False).squeeze(1)


def explain(model: nn.Module, images: Any, target: Any = None, method: str = DEFAULT_METHOD, *,
            layer: str | nn.Module | None = None, model_name: str | None = None,
            class_names: Sequence[str] | None = None, batch_size: int = 32, **options: Any) -> np.ndarray:
    """Heat maps (N, *spatial) in [0, 1] for a batch of model-ready images (N, C, *spatial).

    ``target``: ``None`` (each image's predicted class), a class index or name (``class_names``), or one per
    image. ``layer`` overrides the registered CAM layer (dotted path or module); ``model_name`` names the
    registry entry when the model cannot be recognised. ``options`` go to the method (``n_steps``,
    ``internal_batch_size``, ``window``, ``stride``, ``baseline``, ``perturbations_per_eval``).
    """
    spec = get_method(method)
    x_all = as_batch(images, model)
    spatial = tuple(x_all.shape[2:])
    if len(spatial) == 3 and not spec.supports_3d:
        raise MeddxError(f"method {spec.name!r} does not support 3D volumes; use one of "
                         f"{', '.join(list_methods(3))}")
    targets = targets_for(target, x_all.shape[0], class_names)
    module = resolve_layer(model, layer, model_name)[0] if spec.needs_layer else None
    options = {"batch_size": batch_size} | options
    out = []
    with model_guard(model):
        for i in range(0, x_all.shape[0], batch_size):
            x = x_all[i:i + batch_size].clone()
            if spec.class_agnostic and any(t is not None for t in targets):
                forward_targets(model, x, targets[i:i + batch_size])  # range check only
            raw = spec.run(model, x, targets[i:i + batch_size], module, options)
            out.append(normalize_maps(_to_input_size(raw.detach().float().cpu(), spatial)))
    return torch.cat(out).numpy()
