"""Instance optimisation: a network's displacement field refined on the one pair being registered.

A registration network predicts a field in one pass; it is fast but imprecise (about a voxel off on the
phantom, where SimpleITK's B-spline, which optimises each pair, is a tenth of a voxel off). Learned methods that
lead Learn2Reg (ConvexAdam, VoxelMorph++, the "instance optimisation" step of LapIRN-IO) therefore finish with a
few dozen Adam steps on the pair itself, starting from the network's field. That is done here: a correction
``u`` on a grid ``grid`` times coarser than the image (a smooth correction, like a B-spline's control grid, and
``grid**D`` times fewer unknowns) is upsampled, added to the network's field and optimised on the image
similarity the network was trained with plus diffusion regularisation of the whole field. The labels of the
fixed image are never used here (they are unknown at inference).

Written by hand: MONAI has the losses and ``Warp`` but no test-time optimisation loop; and the loop warps with
:class:`GridWarp`, not MONAI's ``Warp``, which rebuilds its reference grid per module and reorders the axes
by advanced indexing (a copy forward and an ``index_put`` backward on every step).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


class GridWarp:
    """``image(x + ddf(x))`` for one grid, as MONAI's ``Warp(mode, padding_mode="border")`` computes it
    (``grid_sample`` with ``align_corners=True``; equality tested), with the reference grid built once."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                 device: torch.device | str = "cpu") -> None:
        nd = len(shape)
        mesh = torch.meshgrid(*[torch.arange(s, dtype=dtype, device=device) for s in shape], indexing="ij")
        scale = torch.tensor([2.0 / max(s - 1, 1) for s in shape], dtype=dtype, device=device)
        scale = scale.view(1, nd, *([1] * nd))
        self.base, self.scale = torch.stack(mesh)[None] * scale - 1, scale  # normalised voxel positions

    def __call__(self, image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        grid = (self.base + ddf * self.scale).flip(1).movedim(1, -1)  # (N, *S, D), last axis x, y[, z]
        return F.grid_sample(image, grid, mode=mode, padding_mode="border", align_corners=True)


def refine_field(fixed: torch.Tensor, moving: torch.Tensor, ddf: torch.Tensor, similarity: Callable, *,
                 steps: int, lr: float = 0.2, reg_weight: float = 1.0, grid: int = 2) -> torch.Tensor:
    """Refine ``ddf`` (N, D, *S) for normalised ``fixed``/``moving`` (N, 1, *S) by ``steps`` Adam steps on
    ``similarity(warp(moving, field), fixed) + reg_weight * diffusion(field)``; returns the refined field."""
    from meddx.models.registration_nets import diffusion_loss

    if steps <= 0:
        return ddf
    spatial = ddf.shape[2:]
    mode = "bilinear" if len(spatial) == 2 else "trilinear"
    coarse = [max(1, s // grid) for s in spatial]
    u = torch.zeros((ddf.shape[0], ddf.shape[1], *coarse), dtype=ddf.dtype, device=ddf.device, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # large early steps, a settled field at the end
    base, warp = ddf.detach(), GridWarp(tuple(spatial), ddf.dtype, ddf.device)
    with torch.enable_grad():
        for _ in range(steps):
            field = base + F.interpolate(u, size=spatial, mode=mode, align_corners=False)
            loss = similarity(warp(moving, field), fixed) + reg_weight * diffusion_loss(field)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return base + F.interpolate(u, size=spatial, mode=mode, align_corners=False)
