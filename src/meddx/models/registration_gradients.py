"""Closed-form gradients of the refinement's objective, for :func:`meddx.models.registration_refine.refine_field`.

The refinement takes a few dozen Adam steps per pair on ``LNCC(warp(moving, base + up(u)), fixed) + w * diffusion``.
With autograd each step records and replays ~40 small operations; at the task's sizes (64 x 64 in 2D, 32 x 48 x 48
in 3D) that bookkeeping, and MONAI's five filtered images a step, cost as much as the arithmetic. Each term here is
a short formula with its adjoint written out, so a step is one forward pass and one pass back, no graph:

* :class:`Upsampling`: the correction grid's linear interpolation (``F.interpolate``, ``align_corners=False``) as
  one small matrix per axis; its adjoint is the transposes; :class:`BSplineUpsampling` the same for a cubic
  B-spline control grid;
* :func:`warp_and_grad`: ``grid_sample`` forward, and its backward kernel for the gradient with respect to the field
  only (the moving image is constant);
* LNCC's derivative is :meth:`meddx.models.registration_refine.FixedImageLNCC.value_and_grad`, beside the loss;
* :func:`diffusion_and_grad`: MONAI's diffusion loss and its derivative by finite differences;
* :class:`Adam`: ``torch.optim.Adam``'s update, in place.

Each gradient equals autograd's to float rounding (``tests/test_registration_gradients.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

BILINEAR, BORDER = 0, 1  # grid_sampler's codes for GridWarp's mode="bilinear", padding_mode="border"


class Upsampling:
    """``F.interpolate(u, size=spatial, mode="(bi|tri)linear", align_corners=False)`` of (N, C, *coarse), as a
    product with one (coarse, fine) matrix per axis, and its adjoint."""

    def __init__(self, coarse: tuple[int, ...], spatial: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device | str) -> None:
        self.mats = [_linear_interpolation(c, s, dtype, device) for c, s in zip(coarse, spatial)]

    @property
    def coarse(self) -> tuple[int, ...]:
        """The correction's grid shape (control points per axis)."""
        return tuple(m.shape[0] for m in self.mats)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return along_axes(u, self.mats)

    def adjoint(self, grad: torch.Tensor) -> torch.Tensor:
        return along_axes(grad, [m.T for m in self.mats])


class BSplineUpsampling(Upsampling):
    """A cubic B-spline on ``mesh`` intervals a side (``mesh + 3`` control points per axis, the control grid of
    SimpleITK's ``BSplineTransformInitializer(image, [mesh] * D)``) evaluated at every voxel: one basis matrix
    (scipy's ``BSpline.design_matrix``) per axis. Smoother than the linear grid (no kinks at the control points),
    and on the brain 2D validation pairs more accurate (benchmarks/RESULTS.md)."""

    def __init__(self, mesh: int, spatial: tuple[int, ...], dtype: torch.dtype, device: torch.device | str) -> None:
        self.mats = [_cubic_bspline_basis(n, mesh, dtype, device) for n in spatial]


def _cubic_bspline_basis(n: int, mesh: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(mesh + 3, n): the uniform cubic B-splines whose knots divide 0 .. n - 1 into ``mesh`` intervals."""
    import numpy as np
    from scipy.interpolate import BSpline

    if mesh < 1 or n < 2:
        raise ValueError(f"a B-spline needs mesh >= 1 and >= 2 voxels, got mesh {mesh} over {n}")
    knots = (n - 1) / mesh * (np.arange(mesh + 7) - 3.0)
    basis = BSpline.design_matrix(np.arange(n, dtype=np.float64), knots, 3).toarray().T
    return torch.as_tensor(basis, dtype=dtype, device=device)


def along_axes(x: torch.Tensor, mats: list[torch.Tensor]) -> torch.Tensor:
    """(N, C, *S) with the spatial axis i multiplied by ``mats[i]`` (a Kronecker product applied axis by axis)."""
    for axis, mat in enumerate(mats, start=2):
        x = (x.movedim(axis, -1) @ mat).movedim(-1, axis)
    return x


def _linear_interpolation(n_in: int, n_out: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(n_in, n_out): row j is the unit vector j interpolated to n_out points, as ``F.interpolate`` does."""
    eye = torch.eye(n_in, dtype=dtype, device=device)[:, None, :]
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :]


def warp_and_grad(warp, moving: torch.Tensor, field: torch.Tensor):
    """``warp(moving, field)`` for a :class:`meddx.models.registration_refine.GridWarp` (bilinear, border), and a
    function mapping the gradient with respect to the warped image to the gradient with respect to ``field``.

    PyTorch's CPU ``grid_sample`` runs one thread per batch entry, so one pair keeps one core busy however many
    there are; a large image is cut into slabs along its first axis, one batch entry each, that share the moving
    image (2 cores: 3D forward + backward 9.5 -> 4.7 ms at 48 x 64 x 56)."""
    nd = field.shape[1]
    grid = warp.grid(field).contiguous()
    forward, backward = ((torch.ops.aten.grid_sampler_2d, torch.ops.aten.grid_sampler_2d_backward) if nd == 2 else
                         (torch.ops.aten.grid_sampler_3d, torch.ops.aten.grid_sampler_3d_backward))
    slabs = _slab_count(grid)
    if slabs > 1:
        grid = torch.cat(grid.tensor_split(slabs, 1))
        moving = moving.expand(slabs, *moving.shape[1:])
    warped = forward(moving, grid, BILINEAR, BORDER, True)

    def pullback(grad_warped: torch.Tensor) -> torch.Tensor:
        _, grad_grid = backward(_to_slabs(grad_warped, slabs), moving, grid, BILINEAR, BORDER, True, [False, True])
        return _from_slabs(grad_grid.movedim(-1, 1), slabs).flip(1) * warp.scale

    return _from_slabs(warped, slabs), pullback


SLAB_VOXELS = 16_384  # below this a slab's thread costs more than it saves (2D 64 x 64 is left whole)


def _slab_count(grid: torch.Tensor) -> int:
    """Equal slabs for one pair, one per thread, each of at least ``SLAB_VOXELS`` voxels (1: leave it whole)."""
    pairs, rows, voxels = grid.shape[0], grid.shape[1], grid[0, ..., 0].numel()
    slabs = min(torch.get_num_threads(), voxels // SLAB_VOXELS) if pairs == 1 else 1
    while slabs > 1 and rows % slabs:
        slabs -= 1
    return max(1, slabs)


def _to_slabs(x: torch.Tensor, slabs: int) -> torch.Tensor:
    return torch.cat(x.tensor_split(slabs, 2)) if slabs > 1 else x


def _from_slabs(x: torch.Tensor, slabs: int) -> torch.Tensor:
    return torch.cat(x.tensor_split(slabs, 0), 2) if slabs > 1 else x


def diffusion_and_grad(field: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`meddx.models.registration_nets.diffusion_loss` (the mean over the interior of the squared central
    differences, summed over axes) and its gradient with respect to ``field``."""
    nd = field.ndim - 2
    count = field.shape[0] * field.shape[1] * math.prod(s - 2 for s in field.shape[2:])
    grad, total = torch.zeros_like(field), field.new_zeros(())
    for d in range(nd):
        ahead, behind = [slice(1, -1)] * nd, [slice(1, -1)] * nd
        ahead[d], behind[d] = slice(2, None), slice(None, -2)
        ahead, behind = (slice(None), slice(None), *ahead), (slice(None), slice(None), *behind)
        half_diff = (field[ahead] - field[behind]) / 2.0
        total = total + (half_diff * half_diff).sum()
        grad[ahead] += half_diff / count  # d/dx of (x_ahead - x_behind)^2 / 4, over count
        grad[behind] -= half_diff / count
    return total / count, grad


class GridDiffusion:
    """The gradient of ``diffusion(base + up(u))`` with respect to the coarse correction ``u``, on the coarse grid.

    The diffusion loss is a quadratic form, mean((T_d f)^2) summed over axes, with T_d the central difference along
    axis d restricted to the interior (T_d = Delta on axis d, the interior's selection R on the others: a Kronecker
    product), and ``up`` is a Kronecker product of one matrix per axis. So the gradient is
    ``up.adjoint(grad at base)`` plus ``sum_d kron_e(A_e T_de' T_de A_e')`` applied to u: a few (coarse x coarse)
    products a step instead of some twenty passes over the whole field."""

    def __init__(self, up: Upsampling, base: torch.Tensor) -> None:
        spatial = tuple(base.shape[2:])
        count = base.shape[0] * base.shape[1] * math.prod(s - 2 for s in spatial)
        self.offset = up.adjoint(diffusion_and_grad(base)[1])
        self.terms = []
        for d in range(len(spatial)):
            mats = []
            for e, (n, a) in enumerate(zip(spatial, up.mats)):
                t = _central_difference(n, a.dtype, a.device) if e == d else _interior(n, a.dtype, a.device)
                mats.append(a @ (t.T @ t) @ a.T)
            mats[0] = mats[0] * (2.0 / count)
            self.terms.append(mats)

    def grad(self, u: torch.Tensor) -> torch.Tensor:
        return self.offset + sum(along_axes(u, mats) for mats in self.terms)


def _central_difference(n: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(n - 2, n): (x[i + 1] - x[i - 1]) / 2 at the interior points i = 1 .. n - 2."""
    rows = torch.arange(n - 2, device=device)
    t = torch.zeros((n - 2, n), dtype=dtype, device=device)
    t[rows, rows], t[rows, rows + 2] = -0.5, 0.5
    return t


def _interior(n: int, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """(n - 2, n): the interior points 1 .. n - 2."""
    return torch.eye(n, dtype=dtype, device=device)[1:-1]


class Adam:
    """``torch.optim.Adam`` (default betas and eps, no weight decay) on one tensor, updated in place, with the
    learning rate given per step (the caller's schedule)."""

    def __init__(self, param: torch.Tensor, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        self.param, self.betas, self.eps, self.t = param, betas, eps, 0
        self.avg, self.avg_sq = torch.zeros_like(param), torch.zeros_like(param)

    def step(self, grad: torch.Tensor, lr: float) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (self.avg_sq.sqrt() / math.sqrt(1 - b2 ** self.t)).add_(self.eps)
        self.param.addcdiv_(self.avg, denom, value=-lr / (1 - b1 ** self.t))


def cosine_rates(lr: float, steps: int) -> list[float]:
    """``CosineAnnealingLR(T_max=steps)``'s learning rate at steps 0 .. steps-1 (its closed form)."""
    return [lr * (1 + math.cos(math.pi * i / steps)) / 2 for i in range(steps)]
