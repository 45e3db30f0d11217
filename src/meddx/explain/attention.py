"""Method ``attention``: the network's own attention, read back from its attention modules (no gradients).

Which modules count is decided by their library class, so any network built from these blocks works
(the registry's ``ag_resnet18_slim``, ``cbam_resnet18_slim``, ``mil_resnet18_slim``, ``vit_slim``):

* MONAI ``AttentionBlock`` (attention gates of Attention U-Net): the sigmoid coefficients ``psi``, one
  per location of the gated feature map (2D and 3D);
* timm CBAM ``SpatialAttn``: the sigmoid spatial gate (2D);
* meddx ``GatedAttentionPool`` (attention-MIL pooling): the softmax weights over locations (2D and 3D);
* timm ``Attention`` (vision transformers): the softmax attention of every block, combined by attention
  rollout (Abnar & Zuidema 2020; default) or the last block's attention (``vit_attention="last"``), read
  from the class token's row over the patch tokens.

Several gates at different resolutions: by default the coarsest (``gates="last"``): in the attention-gated
classifier it is the gate of the deepest gated features, the one that found the nodule in the explain benchmark
(pointing game 0.875 within 3 px against 0.000 for the mean of all gates, whose layer2 gate spreads over the
lung); ``"all"`` averages every gate upsampled to the input, ``"product"`` takes their geometric mean (a location
must be attended at every scale). The hooks are registered in a context manager that always removes them, and timm's
fused attention kernel (which never materialises the attention matrix) is switched off only inside it.
Attention does not depend on the target class (``class_agnostic`` in the method table).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.errors import MeddxError


def _kinds() -> dict[str, tuple[type, ...]]:
    from monai.networks.nets.attentionunet import AttentionBlock
    from timm.layers.attention import Attention
    from timm.layers.cbam import SpatialAttn

    from meddx.models.attention_mil import GatedAttentionPool

    return {"gate": (AttentionBlock, SpatialAttn, GatedAttentionPool), "vit": (Attention,)}


def attention_modules(model: nn.Module) -> tuple[str, list[nn.Module]]:
    """("gate" | "vit", the modules) whose attention the model exposes; a one-line error when it has none."""
    kinds = _kinds()
    for kind, classes in kinds.items():
        found = [m for m in model.modules() if isinstance(m, classes)]
        if found:
            return kind, found
    from monai.networks.blocks import ChannelSELayer

    if any(isinstance(m, ChannelSELayer) for m in model.modules()):
        raise MeddxError(f"{type(model).__name__} has squeeze-excitation attention only, which weighs channels, "
                         "not places: no attention map to show; use gradcam or a cbam/ag/mil/vit model")
    raise MeddxError(f"{type(model).__name__} has no attention to show (method 'attention' needs attention "
                     "gates, CBAM, attention pooling or a vision transformer: ag_resnet18_slim, cbam_resnet18_slim, "
                     "mil_resnet18_slim, vit_slim); "
                     "use a post-hoc method such as gradcam")


def _gate_output(module: nn.Module) -> nn.Module:
    """The submodule whose output is the gate's coefficients: MONAI ``psi`` (ends in a sigmoid), timm ``gate``,
    meddx's attention-MIL pooling ``gate`` (a softmax over locations)."""
    return module.psi if hasattr(module, "psi") else module.gate


@contextlib.contextmanager
def recorded_attention(kind: str, modules: list[nn.Module]) -> Iterator[list[torch.Tensor]]:
    """Forward hooks that append each module's attention to the yielded list; removed on exit, also on error."""
    maps: list[torch.Tensor] = []
    handles, fused = [], []
    try:
        for m in modules:
            if kind == "gate":
                target = _gate_output(m)
            else:  # timm computes softmax(q k^T) explicitly and passes it through attn_drop when not fused
                fused.append((m, m.fused_attn))
                m.fused_attn = False
                target = m.attn_drop
            handles.append(target.register_forward_hook(lambda _m, _i, out: maps.append(out.detach())))
        yield maps
    finally:
        for h in handles:
            h.remove()
        for m, flag in fused:
            m.fused_attn = flag


def rollout(attentions: list[torch.Tensor], last_only: bool = False) -> torch.Tensor:
    """Class-token attention over all tokens (N, T): rollout of head-averaged attention with the residual
    (0.5 A + 0.5 I, rows renormalised), or the last block's head average.

    Written out here: it is six lines of matrix algebra and neither captum nor pytorch-grad-cam ships it.
    """
    if last_only:
        return attentions[-1].mean(1)[:, 0]
    joint = None
    for a in attentions:
        a = a.mean(1)
        a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype, device=a.device)
        a = a / a.sum(-1, keepdim=True)
        joint = a if joint is None else a @ joint
    return joint[:, 0]


def _vit_map(model: nn.Module, cls_row: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    grid = tuple(model.patch_embed.grid_size) if hasattr(model, "patch_embed") else None
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    patches = cls_row[:, prefix:]
    if grid is None or patches.shape[1] != grid[0] * grid[1]:
        raise MeddxError(f"cannot place {patches.shape[1]} attention tokens on the input grid")
    return patches.reshape(-1, 1, *grid)


def _upsample(maps: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    maps = maps.float().mean(1, keepdim=True)  # several heads (attention-MIL): their mean
    return F.interpolate(maps, size=spatial, mode=mode, align_corners=False)[:, 0]


def attention_maps(model, x, targets, layer, options: dict[str, Any]) -> torch.Tensor:
    """Method-table runner: (N, *spatial) attention at input resolution, one forward pass, no gradients."""
    kind, modules = attention_modules(model)
    spatial = tuple(x.shape[2:])
    with recorded_attention(kind, modules) as recorded, torch.no_grad():
        model(x)
    if len(recorded) != len(modules):
        raise MeddxError(f"{len(modules)} attention modules but {len(recorded)} maps were recorded "
                         "(a module is not on the forward path)")
    if kind == "vit":
        last = options.get("vit_attention", "rollout") == "last"
        return _upsample(_vit_map(model, rollout(recorded, last_only=last), spatial), spatial)
    ups = [_upsample(m, spatial) for m in recorded]
    gates = options.get("gates", "last")
    if gates == "last":
        coarsest = min(range(len(recorded)), key=lambda i: recorded[i][0].numel())
        return ups[coarsest]
    if gates == "product":
        return torch.stack(ups).clamp_min(1e-6).log().mean(0).exp()
    if gates != "all":
        raise MeddxError(f"gates must be last, all or product; got {gates!r}")
    return torch.stack(ups).mean(0)
