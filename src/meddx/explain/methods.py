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

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.errors import MeddxError

DEFAULT_METHOD = "gradcam"


@dataclass(frozen=True)
class Method:
    """One row of the method table."""

    name: str
    label: str  # display name
    family: str  # "cam" (hooks a layer), "gradient" or "perturbation"
    supports_3d: bool
    summary: str
    run: Callable[..., torch.Tensor]  # (model, x, targets, layer, options) -> (N, *spatial) raw map
    class_agnostic: bool = False  # the map ignores the target class (Eigen-CAM); targets are still checked

    @property
    def needs_layer(self) -> bool:
        return self.family == "cam"


# --------------------------------------------------------------------------- model state and hooks


@contextlib.contextmanager
def model_guard(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters while explaining; everything restored afterwards, also on error.

    Freezing the parameters means backward passes compute gradients for the input and the hooked
    activations only (cheaper, and the user's ``.grad`` buffers are never touched).
    """
    was_training = model.training
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    grads = [p.grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        with torch.enable_grad():
            yield
    finally:
        for p, flag, grad in zip(params, flags, grads):
            p.requires_grad_(flag)
            p.grad = grad
        model.train(was_training)


@contextlib.contextmanager
def released(cam: Any) -> Iterator[Any]:
    """Yield a pytorch-grad-cam object and always remove its hooks.

    Not ``with cam:``: pytorch-grad-cam's ``__exit__`` prints and *swallows* an ``IndexError``, which would
    turn a bad target class into a silent ``None``.
    """
    try:
        yield cam
    finally:
        cam.activations_and_grads.release()


def hook_count(model: nn.Module) -> int:
    """Number of forward/backward hooks registered on any module of ``model`` (0 when clean)."""
    total = 0
    for m in model.modules():
        for name in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            total += len(getattr(m, name, {}) or {})
    return total


# --------------------------------------------------------------------------- targets


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


def _targets_for(target: Any, n: int, class_names: Sequence[str] | None) -> list[int | None]:
    if target is None or isinstance(target, (str, int, np.integer)):
        return [resolve_target(target, class_names)] * n
    seq = target.tolist() if isinstance(target, (np.ndarray, torch.Tensor)) else list(target)
    if len(seq) != n:
        raise MeddxError(f"got {len(seq)} targets for {n} images")
    return [resolve_target(t, class_names) for t in seq]


# --------------------------------------------------------------------------- layers and inputs


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


def _as_batch(images: Any, model: nn.Module) -> torch.Tensor:
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


# --------------------------------------------------------------------------- the methods


def _import(path: str) -> Any:
    """``module:name`` imported on first use, with a one-line hint when the optional extra is missing."""
    import importlib

    module, name = path.split(":")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise MeddxError(f"explanations need pytorch-grad-cam and captum: pip install 'meddx[explain]' ({exc})") \
            from None


def _cam_runner(cam_class: Callable[[], type]) -> Callable[..., torch.Tensor]:
    """A method-table runner for one pytorch-grad-cam class: hooks on, one call, hooks off (also on error)."""

    def run(model: nn.Module, x: torch.Tensor, targets: list[int | None], layer: nn.Module,
            options: dict[str, Any]) -> torch.Tensor:
        with released(cam_class()(model=model, target_layers=[layer])) as cam:
            cam.batch_size = int(options.get("batch_size", 32))  # Score-CAM's forward batch
            maps = cam(input_tensor=x.requires_grad_(True), targets=[ClassTarget(t) for t in targets])
        return torch.from_numpy(np.asarray(maps, dtype=np.float32))

    return run


def _grad_cam(name: str) -> Callable[[], type]:
    return lambda: _import(f"pytorch_grad_cam:{name}")


@functools.cache
def _score_cam_class() -> type:
    """pytorch-grad-cam's Score-CAM with rank-generic channel weights (its own upsampling is 2D only, and it
    prints a tqdm bar per image)."""
    score_cam = _import("pytorch_grad_cam:ScoreCAM")

    class RankGenericScoreCAM(score_cam):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # noqa: ARG002
            with torch.no_grad():
                act = torch.from_numpy(activations).to(self.device)
                mode = "bilinear" if act.ndim == 4 else "trilinear"
                up = F.interpolate(act, size=tuple(input_tensor.shape[2:]), mode=mode, align_corners=False)
                flat = up.flatten(2)
                lo, hi = flat.min(-1).values, flat.max(-1).values
                shape = up.shape[:2] + (1,) * (up.ndim - 2)
                up = (up - lo.view(shape)) / (hi - lo + 1e-8).view(shape)
                scores = []
                for b, target in enumerate(targets):
                    masked = input_tensor[b:b + 1].detach() * up[b].unsqueeze(1)  # (K, C, *spatial)
                    for i in range(0, masked.shape[0], self.batch_size):
                        out = self.model(masked[i:i + self.batch_size])
                        scores.extend(float(target(o)) for o in out)
                scores_t = torch.tensor(scores).view(activations.shape[0], activations.shape[1])
                return torch.softmax(scores_t, dim=-1).numpy()

    return RankGenericScoreCAM


def _forward_targets(model: nn.Module, x: torch.Tensor, targets: list[int | None]) -> list[int]:
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


def _integrated_gradients(model, x, targets, layer, options):
    IntegratedGradients = _import("captum.attr:IntegratedGradients")  # noqa: N806
    t = _forward_targets(model, x, targets)
    baseline = options.get("baseline", 0.0)
    baselines = torch.full_like(x, float(baseline)) if not torch.is_tensor(baseline) else baseline.to(x)
    attr = IntegratedGradients(model).attribute(
        x, baselines=baselines, target=t, n_steps=int(options.get("n_steps", 32)),
        internal_batch_size=int(options.get("internal_batch_size", 64)))
    return attr.detach().abs().sum(1)


def _saliency(model, x, targets, layer, options):
    Saliency = _import("captum.attr:Saliency")  # noqa: N806
    t = _forward_targets(model, x, targets)
    return Saliency(model).attribute(x.clone().requires_grad_(True), target=t, abs=True).detach().amax(1)


def occlusion_window(shape: Sequence[int]) -> tuple[int, int]:
    """(window, stride) for occlusion: 1/12 of the side in 2D, 1/4 in 3D (bounds the forwards), half-overlapping.

    The window sets the map's resolution: on the phantom (48 px) a 4 px window put the peak inside the nodule
    on 0.78 of the images and a 6 px (1/8) one on 0.56 (benchmarks/explain.py), at 2.2x the forwards.
    """
    window = max(2, round(min(shape) / (12 if len(shape) == 2 else 4)))
    return window, max(1, window // 2)


def _occlusion(model, x, targets, layer, options):
    Occlusion = _import("captum.attr:Occlusion")  # noqa: N806
    t = _forward_targets(model, x, targets)
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


_TABLE = (
    Method("gradcam", "Grad-CAM", "cam", True, "channel weights = mean gradient (Selvaraju et al. 2017)",
           _cam_runner(_grad_cam("GradCAM"))),
    Method("gradcam++", "Grad-CAM++", "cam", True, "second-order positive-gradient weights (Chattopadhay 2018)",
           _cam_runner(_grad_cam("GradCAMPlusPlus"))),
    Method("hirescam", "HiResCAM", "cam", True, "element-wise gradient x activation, summed over channels",
           _cam_runner(_grad_cam("HiResCAM"))),
    Method("xgradcam", "XGrad-CAM", "cam", True, "activation-normalised gradient weights (Fu et al. 2020)",
           _cam_runner(_grad_cam("XGradCAM"))),
    Method("layercam", "LayerCAM", "cam", True, "positive gradients x activations per location (Jiang 2021)",
           _cam_runner(_grad_cam("LayerCAM"))),
    Method("scorecam", "Score-CAM", "cam", True, "weights = class score of the input masked by each channel "
           "(one forward per channel; slow)", _cam_runner(_score_cam_class)),
    Method("eigencam", "Eigen-CAM", "cam", True, "first principal component of the activations (class-agnostic, "
           "no gradients; sign is arbitrary)", _cam_runner(_grad_cam("EigenCAM")), class_agnostic=True),
    Method("integrated_gradients", "Integrated Gradients", "gradient", True,
           "|path integral of input gradients| from a mean-image baseline, 32 steps (captum)", _integrated_gradients),
    Method("saliency", "Saliency", "gradient", True, "max |input gradient| over channels (captum)", _saliency),
    Method("occlusion", "Occlusion", "perturbation", True, "score drop when a sliding patch "
           "(1/12 of the side, 1/4 in 3D) is set to the mean (captum; many forwards, slow in 3D)", _occlusion),
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


# --------------------------------------------------------------------------- the interface


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
    x_all = _as_batch(images, model)
    spatial = tuple(x_all.shape[2:])
    if len(spatial) == 3 and not spec.supports_3d:
        raise MeddxError(f"method {spec.name!r} does not support 3D volumes; use one of "
                         f"{', '.join(list_methods(3))}")
    targets = _targets_for(target, x_all.shape[0], class_names)
    module = resolve_layer(model, layer, model_name)[0] if spec.needs_layer else None
    options = {"batch_size": batch_size} | options
    out = []
    with model_guard(model):
        for i in range(0, x_all.shape[0], batch_size):
            x = x_all[i:i + batch_size].clone()
            if spec.class_agnostic and any(t is not None for t in targets):
                _forward_targets(model, x, targets[i:i + batch_size])  # range check only
            raw = spec.run(model, x, targets[i:i + batch_size], module, options)
            out.append(normalize_maps(_to_input_size(raw.detach().float().cpu(), spatial)))
    return torch.cat(out).numpy()
