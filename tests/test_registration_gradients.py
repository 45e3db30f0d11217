"""The refinement's closed-form gradients equal autograd's, and the closed-form loop takes autograd's steps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

SHAPES = [(2, 17, 13), (1, 6, 9, 7)]  # (pairs, *spatial): 2D with two pairs, 3D


def _rand(*shape, seed=0):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("shape", SHAPES)
def test_upsampling_and_its_adjoint_equal_interpolate_and_its_gradient(shape):
    from meddx.models.registration_gradients import Upsampling

    n, spatial = shape[0], shape[1:]
    nd, coarse = len(spatial), tuple(max(1, s // 4) for s in spatial)
    u = _rand(n, nd, *coarse).requires_grad_(True)
    mode = "bilinear" if nd == 2 else "trilinear"
    expected = F.interpolate(u, size=spatial, mode=mode, align_corners=False)
    up = Upsampling(coarse, spatial, torch.float32, "cpu")
    assert torch.allclose(up(u.detach()), expected, atol=1e-6)
    grad_out = _rand(*expected.shape, seed=1)
    (expected * grad_out).sum().backward()
    assert torch.allclose(up.adjoint(grad_out), u.grad, atol=1e-5)


def _cubic_bspline(t):
    """The uniform cubic B-spline, written from its textbook formula (an independent check of scipy's basis)."""
    t = abs(t)
    return 2 / 3 - t ** 2 + t ** 3 / 2 if t < 1 else (2 - t) ** 3 / 6 if t < 2 else 0.0


@pytest.mark.parametrize(("n", "mesh"), [(64, 12), (56, 4), (9, 1)])
def test_bspline_upsampling_is_the_cubic_bspline_on_mesh_intervals(n, mesh):
    """Basis j is centred on control point j - 1 of a grid dividing 0 .. n-1 into ``mesh`` intervals; the basis
    sums to one (a constant correction is a constant field); the adjoint is the transpose."""
    from meddx.models.registration_gradients import BSplineUpsampling

    up = BSplineUpsampling(mesh, (n, 5), torch.float64, "cpu")
    h = (n - 1) / mesh
    expected = torch.tensor([[_cubic_bspline((x - (j - 1) * h) / h) for x in range(n)] for j in range(mesh + 3)],
                            dtype=torch.float64)
    assert up.coarse == (mesh + 3, mesh + 3)  # the same mesh on every axis
    assert torch.allclose(up.mats[0], expected, atol=1e-12)
    assert torch.allclose(up(torch.full((1, 2, *up.coarse), 0.7, dtype=torch.float64)), torch.tensor(0.7,
                          dtype=torch.float64))
    u, g = _rand(1, 2, *up.coarse).double(), _rand(1, 2, n, 5, seed=1).double()
    assert torch.allclose((up(u) * g).sum(), (u * up.adjoint(g)).sum())


@pytest.mark.parametrize("shape", SHAPES)
def test_warp_gradient_equals_autograd(shape):
    from meddx.models.registration_gradients import warp_and_grad
    from meddx.models.registration_refine import GridWarp

    n, spatial = shape[0], shape[1:]
    moving = _rand(n, 1, *spatial)
    field = (3 * (_rand(n, len(spatial), *spatial, seed=1) - 0.5)).requires_grad_(True)  # reaches the border
    warp = GridWarp(spatial)
    expected = warp(moving, field)
    warped, pullback = warp_and_grad(warp, moving, field.detach())
    assert torch.allclose(warped, expected, atol=1e-6)
    grad_out = _rand(*expected.shape, seed=2)
    (expected * grad_out).sum().backward()
    assert torch.allclose(pullback(grad_out), field.grad, atol=1e-5)


@pytest.mark.parametrize(("shape", "window"), [((2, 17, 13), 7), ((1, 6, 9, 7), 5), ((1, 4, 3), 3)])
def test_lncc_closed_form_gradient_equals_autograd(shape, window):
    """Including a flat band, where the variance floor stops the gradient, and images narrower than the window."""
    from meddx.models.registration_refine import FixedImageLNCC

    fixed, pred = _rand(shape[0], 1, *shape[1:]), _rand(shape[0], 1, *shape[1:], seed=1)
    pred[0, 0, :2] = 0.25
    lncc = FixedImageLNCC(fixed, window)
    x = pred.clone().requires_grad_(True)
    expected = lncc(x, fixed)
    expected.backward()
    value, grad = lncc.value_and_grad(pred)
    assert torch.allclose(value, expected, rtol=1e-6, atol=1e-8)
    assert torch.allclose(grad, x.grad, rtol=1e-4, atol=1e-9)
    assert float(grad.abs().max()) > 1e-4  # a gradient, not zeros


@pytest.mark.parametrize("shape", SHAPES)
def test_diffusion_closed_form_gradient_equals_autograd(shape):
    from meddx.models.registration_gradients import diffusion_and_grad
    from meddx.models.registration_nets import diffusion_loss

    field = torch.randn((shape[0], len(shape) - 1, *shape[1:]), generator=torch.Generator().manual_seed(0))
    x = field.clone().requires_grad_(True)
    expected = diffusion_loss(x)
    expected.backward()
    value, grad = diffusion_and_grad(field)
    assert torch.allclose(value, expected, rtol=1e-6)
    assert torch.allclose(grad, x.grad, rtol=1e-5, atol=1e-9)


def test_adam_equals_torch_adam_under_a_cosine_schedule():
    from meddx.models.registration_gradients import Adam, cosine_rates

    ours, theirs = torch.zeros(5), torch.zeros(5, requires_grad=True)
    opt = torch.optim.Adam([theirs], lr=0.7)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 6)
    adam = Adam(ours)
    for step, rate in enumerate(cosine_rates(0.7, 6)):
        grad = torch.linspace(-1, 1, 5) * (step + 1) - 0.3
        theirs.grad = grad.clone()
        opt.step()
        sched.step()
        adam.step(grad, rate)
    assert torch.allclose(ours, theirs.detach(), atol=1e-6)
    assert float(ours.abs().max()) > 0.5


@pytest.mark.parametrize(("spatial", "window", "correction"), [((24, 20), 7, {"grid": 4}),
                                                             ((10, 12, 11), 5, {"grid": 4}),
                                                             ((24, 20), 7, {"meshes": (2, 5)})])
def test_closed_form_refinement_takes_autograds_steps(spatial, window, correction):
    """The task's loop (closed form) against the autograd loop it replaces, from a start field, on smooth images."""
    import meddx.models.registration_refine as refine

    g = torch.Generator().manual_seed(0)
    nd = len(spatial)
    smooth = (lambda x: F.avg_pool2d(x, 5, 1, 2)) if nd == 2 else (lambda x: F.avg_pool3d(x, 3, 1, 1))
    fixed, moving = smooth(torch.rand(2, 1, *spatial, generator=g)), smooth(torch.rand(2, 1, *spatial, generator=g))
    start = 0.5 * torch.randn(2, nd, *spatial, generator=g)
    lncc = refine.FixedImageLNCC(fixed, window)
    settings = {"steps": 8, "lr": 0.5, "reg_weight": 0.3, **correction}
    closed = refine.refine_field(fixed, moving, start, lncc, **settings)
    autograd = refine.refine_field(fixed, moving, start, lambda p, t: lncc(p, t), **settings)  # not the class
    assert float((closed - start).abs().max()) > 0.05  # it moved
    assert torch.allclose(closed, autograd, atol=1e-4)
    with pytest.raises(ValueError, match="fixed image it was built for"):
        refine.refine_field(fixed.clone(), moving, start, lncc, **settings)


@pytest.mark.parametrize(("shape", "bspline"), [((2, 17, 13), False), ((1, 6, 9, 7), False), ((1, 12, 10), False),
                                               ((2, 17, 13), True), ((1, 6, 9, 7), True)])
def test_diffusion_gradient_on_the_coarse_grid_equals_the_full_one(shape, bspline):
    """grad_u diffusion(base + up(u)), by small per-axis matrices, equals up.adjoint of the full-field gradient."""
    from meddx.models.registration_gradients import BSplineUpsampling, GridDiffusion, Upsampling, diffusion_and_grad

    n, spatial = shape[0], shape[1:]
    nd, coarse = len(spatial), tuple(max(1, s // 3) for s in spatial)
    up = BSplineUpsampling(3, spatial, torch.float32, "cpu") if bspline else Upsampling(coarse, spatial,
                                                                                        torch.float32, "cpu")
    g = torch.Generator().manual_seed(0)
    base = torch.randn((n, nd, *spatial), generator=g)
    u = torch.randn((n, nd, *up.coarse), generator=g)
    expected = up.adjoint(diffusion_and_grad(base + up(u))[1])
    got = GridDiffusion(up, base).grad(u)
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert float(expected.abs().max()) > 1e-3


def test_lncc_variance_floor_silences_near_flat_windows():
    """With the refinement's floor (1e-3), windows of the warped image that hold only faint noise pass a hundredth of
    the gradient that MONAI's 1e-5 lets their noise pass; structured windows keep the same gradient."""
    from meddx.models.registration_refine import FixedImageLNCC

    g = torch.Generator().manual_seed(0)
    fixed = F.avg_pool2d(torch.rand(1, 1, 32, 32, generator=g), 3, 1, 1)
    pred = F.avg_pool2d(torch.rand(1, 1, 32, 32, generator=g), 3, 1, 1)
    pred[..., :16] = 0.5 + 1e-4 * torch.randn(1, 1, 32, 16, generator=g)  # a flat region with faint noise
    flat, structured = (..., slice(4, 28), slice(3, 9)), (..., slice(4, 28), slice(22, 28))  # window 7 inside each
    strict = FixedImageLNCC(fixed, 7, smooth_dr=1e-3).value_and_grad(pred)[1]
    loose = FixedImageLNCC(fixed, 7, smooth_dr=1e-5).value_and_grad(pred)[1]
    assert float(strict[flat].abs().max()) < 0.02 * float(loose[flat].abs().max())
    assert torch.allclose(strict[structured], loose[structured], rtol=1e-3, atol=1e-9)
    assert float(strict[structured].abs().max()) > 1e-6
