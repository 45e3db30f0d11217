"""Instance optimisation: a network's displacement field refined on the one pair being registered.

A registration network predicts a field in one pass; it is fast but imprecise (about a voxel off on the phantom,
where SimpleITK's B-spline, which optimises each pair, is a tenth of a voxel off). Learned methods that lead
Learn2Reg (ConvexAdam, VoxelMorph++, the "instance optimisation" step of LapIRN-IO) therefore finish with a few
dozen Adam steps on the pair itself, starting from the network's field. That is done here: a correction ``u`` on a
grid ``grid`` times coarser than the image (a smooth correction with ``grid**D`` times fewer unknowns), or a cubic
B-spline on a coarse then a fine control grid, is upsampled, added to the network's field and optimised on the
image similarity the network was trained with plus diffusion regularisation of the whole field. The labels of the
fixed image are never used here (they are unknown at inference). Before the network, :func:`affine_field` gives a
pre-alignment (centre-of-mass translation, optionally affine steps) for shifts larger than the network learned.

Written by hand: MONAI has the losses and ``Warp`` but no test-time optimisation loop; and the loop warps with
:class:`GridWarp`, not MONAI's ``Warp``, which rebuilds its reference grid per module and reorders the axes
by advanced indexing (a copy forward and an ``index_put`` backward on every step).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
        return F.grid_sample(image, self.grid(ddf), mode=mode, padding_mode="border", align_corners=True)

    def grid(self, ddf: torch.Tensor) -> torch.Tensor:
        """``grid_sample``'s grid for ``ddf`` (N, D, *S): (N, *S, D), normalised, last axis x, y[, z]."""
        return (self.base + ddf * self.scale).flip(1).movedim(1, -1)


class FixedImageLNCC:
    """MONAI's ``LocalNormalizedCrossCorrelationLoss`` (rectangular window, mean reduction; equality tested)
    against one fixed image, for the refinement loop, where the fixed image never changes.

    MONAI filters five images per call (t, p, t^2, p^2, tp), each by one padded convolution per axis: 10 padded
    convolutions per step in 2D, 15 in 3D, forward and backward. Here the fixed image's window sums and variance are
    computed once, and the window sums of the three that change (p, p^2, tp) come from shifted views
    (``window_sums``), which also stay fast for a batch of pairs, where a one-channel convolution falls onto a
    slow path; :meth:`value_and_grad` gives the gradient in closed form. Whole refinement
    (``benchmarks/registration_refine.py``, 2 threads, one pair): see benchmarks/RESULTS.md.
    """

    def __init__(self, fixed: torch.Tensor, kernel_size: int, smooth_dr: float = 1e-5) -> None:
        self.fixed, self.nd, self.k, self.smooth_dr = fixed, fixed.ndim - 2, kernel_size, smooth_dr
        self.volume = float(kernel_size ** self.nd)
        t_sum, t2_sum = window_sums(torch.cat([fixed, fixed * fixed], 1), kernel_size).split(1, 1)
        self.t_sum = t_sum
        self.t_var = (t2_sum - t_sum / self.volume * t_sum).clamp_min(smooth_dr)

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.check_fixed(target)
        _, cross, p_var_raw = self._moments(pred)
        return -(cross * cross / (self.t_var * p_var_raw.clamp_min(self.smooth_dr))).mean()

    def check_fixed(self, target: torch.Tensor) -> None:
        if target is not self.fixed:
            raise ValueError("FixedImageLNCC compares with the fixed image it was built for")

    def _moments(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Window sum of ``pred``, its cross term with the fixed image and its unfloored variance (times V)."""
        p_sum, p2_sum, tp_sum = window_sums(torch.cat([pred, pred * pred, self.fixed * pred], 1), self.k).split(1, 1)
        p_avg = p_sum / self.volume
        return p_sum, tp_sum - p_avg * self.t_sum, p2_sum - p_avg * p_sum

    def value_and_grad(self, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss against the fixed image and its gradient with respect to ``pred``, in closed form.

        With window sums S(.), V voxels a window, cross = S(tp) - S(p) S(t) / V, var_p = S(p^2) - S(p)^2 / V
        (floored at ``smooth_dr``) and r = cross^2 / (var_t var_p), the loss is -mean(r); its derivatives with
        respect to the three window sums follow, and S is its own adjoint (a centred box with zero padding)."""
        p_sum, cross, p_var_raw = self._moments(pred)
        p_var = p_var_raw.clamp_min(self.smooth_dr)
        denom = self.t_var * p_var
        ratio = cross * cross / denom
        n = ratio.numel()
        d_cross = -2 * cross / denom / n
        d_var = ratio / p_var / n * (p_var_raw >= self.smooth_dr)  # the floor passes no gradient
        d_p_sum = -(d_cross * self.t_sum + 2 * d_var * p_sum) / self.volume
        b_p, b_p2, b_tp = window_sums(torch.cat([d_p_sum, d_var, d_cross], 1), self.k).split(1, 1)
        return -ratio.sum() / n, b_p + 2 * pred * b_p2 + self.fixed * b_tp


def window_sums(x: torch.Tensor, kernel_size: int) -> torch.Tensor:
    """Sums of (N, C, *S) over a centred ``kernel_size`` window per axis (odd), zero outside the image, as MONAI's
    LNCC computes them with padded convolutions: along each axis, the sum of ``kernel_size`` shifted views of the
    padded image. (Written by hand: PyTorch has no box filter. A one-channel convolution is slow on the CPU, and
    a difference of running sums (cumsum) is either slow, in float64, or, in float32, loses the small variances of
    flat regions, where LNCC divides by them: on the real Colin27 -> MNI152 pair that folded 0.2 % of the voxels,
    Dice 0.77 vs 0.94. Direct sums add what MONAI's convolutions add; 3D 48 x 64 x 56, 3 channels, 2 threads:
    0.75 ms, float64 running sums 3.8 ms.)"""
    nd, half = x.ndim - 2, kernel_size // 2
    for axis in range(2, 2 + nd):
        pad = [0, 0] * nd
        pad[2 * (nd + 1 - axis)] = pad[2 * (nd + 1 - axis) + 1] = half  # F.pad lists the last axis first
        padded, n = F.pad(x, pad), x.shape[axis]
        x = padded.narrow(axis, 0, n).clone()
        for shift in range(1, kernel_size):
            x += padded.narrow(axis, shift, n)
    return x


def refine_field(fixed: torch.Tensor, moving: torch.Tensor, ddf: torch.Tensor, similarity: Callable, *,
                 steps: int, lr: float = 0.2, reg_weight: float = 1.0, grid: int = 2,
                 meshes: tuple[int, ...] | None = None, coarse_share: float = 0.3) -> torch.Tensor:
    """Refine ``ddf`` (N, D, *S) for normalised ``fixed``/``moving`` (N, 1, *S) by ``steps`` Adam steps on
    ``similarity(warp(moving, field), fixed) + reg_weight * diffusion(field)``; returns the refined field. With a
    :class:`FixedImageLNCC` (what the task uses) every gradient is taken in closed form, otherwise by autograd.

    The correction is linear on a grid ``grid`` times coarser than the image, or, with ``meshes`` (coarse, fine),
    a cubic B-spline on ``meshes[0]`` intervals a side for the first ``coarse_share`` of the steps, then on
    ``meshes[1]`` for the rest: coarse to fine, as SimpleITK's B-spline registration goes through its pyramid.
    Each stage has its own cosine schedule."""
    from meddx.models.registration_gradients import BSplineUpsampling, Upsampling

    if steps <= 0:
        return ddf
    spatial = tuple(ddf.shape[2:])
    opts = {"dtype": ddf.dtype, "device": ddf.device}
    if not meshes:
        stages = [(Upsampling(tuple(max(1, s // grid) for s in spatial), spatial, **opts), steps)]
    elif len(meshes) == 1:
        stages = [(BSplineUpsampling(meshes[0], spatial, **opts), steps)]
    elif len(meshes) == 2:
        first = round(steps * coarse_share)
        stages = [(BSplineUpsampling(mesh, spatial, **opts), n) for mesh, n in zip(meshes, (first, steps - first))
                  if n > 0]
    else:
        raise ValueError(f"meshes is (fine,) or (coarse, fine), got {meshes}")
    stage = _refine_closed_form if isinstance(similarity, FixedImageLNCC) else _refine_autograd
    for up, n in stages:
        ddf = stage(fixed, moving, ddf, similarity, up, steps=n, lr=lr, reg_weight=reg_weight)
    return ddf


def _refine_autograd(fixed: torch.Tensor, moving: torch.Tensor, ddf: torch.Tensor, similarity: Callable, up: Any, *,
                     steps: int, lr: float, reg_weight: float) -> torch.Tensor:
    """One stage of :func:`refine_field` by autograd, for any differentiable similarity."""
    from meddx.models.registration_nets import diffusion_loss

    u = torch.zeros((ddf.shape[0], ddf.shape[1], *up.coarse), dtype=ddf.dtype, device=ddf.device, requires_grad=True)
    opt = torch.optim.Adam([u], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)  # large early steps, a settled field at the end
    base, warp = ddf.detach(), GridWarp(tuple(ddf.shape[2:]), ddf.dtype, ddf.device)
    with torch.enable_grad():
        for _ in range(steps):
            field = base + up(u)
            loss = similarity(warp(moving, field), fixed) + reg_weight * diffusion_loss(field)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        return base + up(u)


def _refine_closed_form(fixed: torch.Tensor, moving: torch.Tensor, ddf: torch.Tensor, lncc: FixedImageLNCC, up: Any,
                        *, steps: int, lr: float, reg_weight: float) -> torch.Tensor:
    """One stage of :func:`refine_field` with the gradients written out (:mod:`meddx.models.registration_gradients`):
    the same steps as autograd and ``torch.optim.Adam`` take (tested), 2.2-3.1x faster per pair than autograd
    through MONAI's LNCC (benchmarks/registration_refine.py)."""
    from meddx.models.registration_gradients import Adam, GridDiffusion, cosine_rates, warp_and_grad

    lncc.check_fixed(fixed)
    spatial = tuple(ddf.shape[2:])
    u = torch.zeros((ddf.shape[0], ddf.shape[1], *up.coarse), dtype=ddf.dtype, device=ddf.device)
    base, warp, adam = ddf.detach(), GridWarp(spatial, ddf.dtype, ddf.device), Adam(u)
    with torch.no_grad():
        diffusion = GridDiffusion(up, base)
        for rate in cosine_rates(lr, steps):
            warped, pullback = warp_and_grad(warp, moving, base + up(u))
            grad = up.adjoint(pullback(lncc.value_and_grad(warped)[1])) + reg_weight * diffusion.grad(u)
            adam.step(grad, rate)
        return base + up(u)


def affine_field(fixed: torch.Tensor, moving: torch.Tensor, similarity: Callable, *, steps: int = 0,
                 shrink: int = 4, lr: float = 0.05) -> torch.Tensor:
    """An affine pre-alignment (N, D, *S) in voxels, ``a(x) = (M - I)(x - c) + t``: the translation between the
    images' centres of intensity mass (SimpleITK's MOMENTS initialiser), kept per pair only where it makes the
    images more alike than no shift at all (a different field of view moves the centre of mass without any
    motion); then ``steps`` Adam steps on matrix and translation. Similarity is measured on both images averaged
    ``shrink`` times: cheap, and it sees shifts of many voxels that a network trained on small motions and a
    local similarity cannot (a 13 x 17 pixel shift of the ITK brain slice: TRE 21.4 -> 21.1 mm without, 0.1 mm
    with)."""
    nd = fixed.ndim - 2
    spatial = tuple(fixed.shape[2:])
    opts = {"dtype": fixed.dtype, "device": fixed.device}
    grid = torch.stack(torch.meshgrid(*[torch.arange(s, **opts) for s in spatial], indexing="ij"))
    centre = torch.tensor([(s - 1) / 2 for s in spatial], **opts)
    pool = F.avg_pool2d if nd == 2 else F.avg_pool3d
    f, m = pool(fixed, shrink), pool(moving, shrink)
    small = tuple(f.shape[2:])
    coarse = torch.stack(torch.meshgrid(*[(torch.arange(s, **opts) + 0.5) * shrink - 0.5 for s in small],
                                        indexing="ij"))  # coarse voxel centres in full-resolution voxels
    warp = GridWarp(small, f.dtype, f.device)
    mat = torch.zeros((fixed.shape[0], nd, nd), **opts)

    def loss_per_pair(mat: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        moved = warp(m, _affine(mat, shift, coarse, centre) / shrink)
        return torch.stack([similarity(moved[i:i + 1], f[i:i + 1]) for i in range(len(f))])

    shift = _centre_of_mass(moving, grid) - _centre_of_mass(fixed, grid)  # (N, D)
    with torch.no_grad():
        better = loss_per_pair(mat, shift) < loss_per_pair(mat, torch.zeros_like(shift))
    shift = torch.where(better[:, None], shift, torch.zeros_like(shift)).requires_grad_(True)
    mat.requires_grad_(True)
    if steps > 0:
        opt = torch.optim.Adam([{"params": [mat], "lr": lr * 0.1}, {"params": [shift], "lr": lr * shrink}])
        with torch.enable_grad():
            for _ in range(steps):
                loss = loss_per_pair(mat, shift).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    with torch.no_grad():
        return _affine(mat, shift, grid, centre)


def _affine(mat: torch.Tensor, shift: torch.Tensor, grid: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """``(M - I)(x - c) + t`` at every position of ``grid`` (D, *S), for a batch of ``mat`` (N, D, D) = M - I."""
    nd = grid.shape[0]
    rel = grid - centre.view(nd, *([1] * nd))
    return torch.einsum("nij,j...->ni...", mat, rel) + shift.view(*shift.shape, *([1] * nd))


def _centre_of_mass(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    weight = image[:, 0] - image[:, 0].flatten(1).min(1).values.view(-1, *([1] * (image.ndim - 2)))
    total = weight.flatten(1).sum(1).clamp_min(1e-8)
    return torch.stack([(weight * g).flatten(1).sum(1) / total for g in grid], 1)


def compose_after_affine(ddf: torch.Tensor, affine: torch.Tensor) -> torch.Tensor:
    """The field of ``moving(y + a(y))`` at ``y = x + ddf(x)``: a network's field ``ddf``, found on the moving
    image pre-aligned by the affine field ``a``, composed with ``a`` (sampled at ``x + ddf(x)``, edge values
    outside the image)."""
    return ddf + GridWarp(tuple(ddf.shape[2:]), ddf.dtype, ddf.device)(affine, ddf)
