"""Registration: Jacobian/folding on analytic fields, warping, TRE, phantom pairs, 1-epoch training in 2D and 3D."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from meddx.errors import MeddxError
from meddx.metrics.registration import (
    folding_percent,
    jacobian_determinant,
    pair_scores,
    sd_log_jacobian,
    target_registration_error,
)


def _grid(shape):
    return np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))


@pytest.mark.parametrize("shape", [(16, 20), (8, 10, 12)])
def test_identity_and_translation_have_unit_jacobian(shape):
    zero = np.zeros((len(shape),) + shape)
    shift = zero + np.arange(1, len(shape) + 1).reshape((-1,) + (1,) * len(shape)) * 2.5
    for field in (zero, shift):
        det = jacobian_determinant(field)
        np.testing.assert_allclose(det, 1.0, atol=1e-12)
        assert folding_percent(det) == 0.0 and sd_log_jacobian(det) == pytest.approx(0.0, abs=1e-12)


def test_uniform_scaling_and_known_fold():
    g = _grid((20, 20))
    scaled = 0.2 * (g - 9.5)  # x -> 1.2 x: det J = 1.44 everywhere, no spread
    np.testing.assert_allclose(jacobian_determinant(scaled), 1.44, atol=1e-12)
    assert sd_log_jacobian(jacobian_determinant(scaled)) == pytest.approx(0.0, abs=1e-12)
    fold = np.zeros((2, 20, 20))
    fold[1, :, 10:] = -2.0 * (g[1, :, 10:] - 10)  # columns >= 10 mirrored: x -> -x there, det J = -1
    det = jacobian_determinant(fold)
    assert det[:, 11:].max() == pytest.approx(-1.0) and det[:, :9].min() == pytest.approx(1.0)
    assert folding_percent(det) == pytest.approx(100 * (det <= 0).mean()) and 40 < folding_percent(det) < 60
    assert sd_log_jacobian(det) > 1.0


def test_jacobian_rejects_bad_shapes():
    with pytest.raises(MeddxError, match="displacement field"):
        jacobian_determinant(np.zeros((3, 8, 8)))


def test_warp_by_integer_shift_equals_shifted_map():
    from meddx.models.registration_nets import warp_labels

    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 4, (1, 12, 14)))
    ddf = torch.zeros(1, 2, 12, 14)
    ddf[:, 0], ddf[:, 1] = 2, -3  # warped(y, x) = labels(y + 2, x - 3)
    out = warp_labels(labels, ddf)[0]
    assert torch.equal(out[:10, 3:], labels[0, 2:, :11])


def test_tre_on_hand_made_landmarks():
    p = np.array([[2.0, 3.0], [5.0, 5.0]])
    q = p + np.array([1.0, 2.0])
    spacing = (2.0, 0.5)
    before = target_registration_error(p, q, None, spacing)
    np.testing.assert_allclose(before, np.hypot(2.0, 1.0))
    field = np.zeros((2, 8, 8))
    field[0], field[1] = 1.0, 2.0  # the exact answer
    np.testing.assert_allclose(target_registration_error(p, q, field, spacing), 0.0, atol=1e-12)
    field[1] = 1.0  # off by one column: 0.5 mm
    np.testing.assert_allclose(target_registration_error(p, q, field, spacing), 0.5)
    with pytest.raises(MeddxError, match="landmarks"):
        target_registration_error(p, q[:1], field)


def test_pair_scores_perfect_and_identity():
    labels = np.zeros((2, 10, 10), np.int64)
    labels[:, 2:6, 2:6] = 1
    moved = np.roll(labels, 2, axis=1)
    perfect = pair_scores(labels, labels, [None, None], 2)
    assert np.allclose(perfect["dice"], 1.0)
    worse = pair_scores(moved, labels, [None, None], 2)
    assert np.allclose(worse["dice"], 0.5)


def test_phantom_pairs_carry_the_known_field():
    from meddx.data.registration import load_phantom_pairs

    data = load_phantom_pairs((32, 32), seed=1, splits={"train": 3, "val": 2, "test": 2})
    assert data.task == "registration" and data.in_channels == 2 and data.test.labels.shape == (2, 2, 32, 32)
    assert data.class_names == ["background", "body", "lungs", "vessels", "nodules"]
    p, q = data.extra["test"]["landmarks"][0]
    assert p.shape == q.shape == (12, 2)
    before = target_registration_error(p, q, None, data.extra["spacing"])
    assert before.mean() > 1.0  # the pair is deformed
    assert float(data.test.images.min()) >= 0 and float(data.test.images.max()) <= 1
    # the fixed labels are the moving labels pulled through the known field: identity overlaps only partly
    scores = pair_scores(data.test.labels[:, 1].numpy(), data.test.labels[:, 0].numpy(), [None, None], 5)
    assert 0.3 < np.nanmean(scores["dice"]) < 0.99


def _train_one_epoch(tmp_path, shape, model="regunet_svf"):
    from meddx.data.registration import load_phantom_pairs
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    data = load_phantom_pairs(shape, seed=0, splits={"train": 4, "val": 2, "test": 2})
    cfg = TrainConfig(data="phantom" if len(shape) == 2 else "phantom3d", task="registration", model=model,
                      epochs=1, batch_size=2, out=str(tmp_path), name="reg", progress=False)
    run = fit(cfg, data=data)
    metrics = evaluate_run(run.path, data=data, n_bootstrap=20)
    return run, metrics


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(32, 32), (16, 16, 16)])
def test_one_epoch_end_to_end(tmp_path, shape):
    run, m = _train_one_epoch(tmp_path, shape)
    assert json.loads((run.path / "metrics.json").read_text())["task"] == "registration"
    for key in ("dice", "hd95", "tre_mm", "folding_pct", "sdlogj", "seconds_per_pair"):
        assert np.isfinite(m[key]), key
    assert m["identity"]["dice"] is not None and len(m["per_structure"]) == 4
    html = (run.path / "report.html").read_text()
    assert "Registration results" in html and "network alone (no refinement)" in html
    assert "ROC curves" not in html and "Calibration" not in html  # classifier sections stay out
    assert m["network_only"]["dice"] is not None and m["refine_steps"] > 0
    npz = np.load(run.path / "registration_test.npz", allow_pickle=False)
    assert npz["ddf"].shape == (2, len(shape), *shape)


@pytest.mark.parametrize("shape", [(2, 2, 9, 11), (1, 3, 5, 6, 7)])
def test_diffusion_loss_equals_monai(shape):
    from monai.losses import DiffusionLoss

    from meddx.models.registration_nets import diffusion_loss

    field = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with pytest.warns(UserWarning):  # MONAI's list indexing, the reason for the own version
        expected = DiffusionLoss()(field)
    assert torch.allclose(diffusion_loss(field), expected, rtol=1e-6)
    assert float(diffusion_loss(torch.ones(shape))) == 0.0


def _blob(shape, centre):
    grid = _grid(shape)
    r2 = sum((g - c) ** 2 for g, c in zip(grid, centre))
    return torch.from_numpy(np.exp(-r2 / 18.0)).float()[None, None]


@pytest.mark.parametrize("correction", [{"grid": 4}, {"meshes": (2, 6)}])
def test_refinement_finds_a_shift_the_start_field_missed(correction):
    """moving = fixed shifted by (1.5, -1) px; from a zero field, the refined field moves the blob onto it
    (TRE at the blob's centre drops from 1.8 px to well under half a pixel), with a linear grid or coarse-to-fine
    B-splines; 0 steps returns the start field; a third B-spline stage is refused."""
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    from meddx.models.registration_refine import refine_field

    fixed, moving = _blob((32, 32), (15.0, 16.0)), _blob((32, 32), (16.5, 15.0))
    start = torch.zeros(1, 2, 32, 32)
    sim = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=7)
    assert refine_field(fixed, moving, start, sim, steps=0) is start
    field = refine_field(fixed, moving, start, sim, steps=60, lr=0.5, reg_weight=0.3, **correction)
    err = np.hypot(float(field[0, 0, 15, 16]) - 1.5, float(field[0, 1, 15, 16]) + 1.0)
    assert err < 0.5, err
    assert float(jacobian_determinant(field[0].numpy()).min()) > 0
    with pytest.raises(ValueError, match="coarse, fine"):
        refine_field(fixed, moving, start, sim, steps=5, meshes=(2, 4, 8))


def test_augmented_pairs_are_new_deterministic_and_keep_labels():
    from meddx.data.registration import load_phantom_pairs
    from meddx.tasks.registration_augment import augment_pairs

    split = load_phantom_pairs((32, 32), splits={"train": 3, "val": 1, "test": 1}).train
    images, labels = split.images, split.labels.long()
    out = [augment_pairs(images, labels, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert out[0][0].shape == images.shape and out[0][1].shape == labels.shape
    assert torch.equal(out[0][0], out[1][0]) and not torch.equal(out[0][0], out[2][0])
    assert not torch.allclose(out[0][0], images)
    assert set(out[0][1].unique().tolist()) <= set(labels.unique().tolist())
    assert not torch.equal(out[0][1], labels)  # the labels moved with the images


@pytest.mark.parametrize(("shape", "window"), [((3, 1, 17, 13), 7), ((2, 1, 6, 9, 7), 5), ((1, 1, 4, 3), 3)])
def test_fixed_image_lncc_equals_monai_in_value_and_gradient(shape, window):
    """2D and 3D, several pairs (their windows must not reach each other), images narrower than the window."""
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    from meddx.models.registration_refine import FixedImageLNCC

    g = torch.Generator().manual_seed(0)
    fixed, moved = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    fixed[0, 0, :2] = 0.5  # a flat band: the variance floor (smooth_dr) applies
    ours, theirs = moved.clone().requires_grad_(True), moved.clone().requires_grad_(True)
    expected = LocalNormalizedCrossCorrelationLoss(spatial_dims=len(shape) - 2, kernel_size=window)(theirs, fixed)
    value = FixedImageLNCC(fixed, window)(ours, fixed)
    value.backward()
    expected.backward()
    assert torch.allclose(value, expected, rtol=1e-5, atol=1e-7)
    assert torch.allclose(ours.grad, theirs.grad, rtol=1e-4, atol=1e-8)
    with pytest.raises(ValueError, match="fixed image it was built for"):
        FixedImageLNCC(fixed, window)(ours, fixed.clone())


@pytest.mark.parametrize("shape", [(2, 1, 9, 11), (1, 2, 5, 6, 7)])
def test_grid_warp_equals_monai_warp(shape):
    from meddx.models.registration_nets import warp
    from meddx.models.registration_refine import GridWarp

    g = torch.Generator().manual_seed(0)
    image = torch.rand(shape, generator=g)
    ddf = 2 * torch.randn((shape[0], len(shape) - 2, *shape[2:]), generator=g)
    fast = GridWarp(tuple(shape[2:]))
    for mode in ("bilinear", "nearest"):
        assert torch.allclose(fast(image, ddf, mode), warp(image, ddf, mode), atol=1e-5)



def test_affine_pre_alignment_finds_a_large_shift_and_refuses_a_misleading_one():
    """A blob shifted by (8, -6) px: the centre-of-mass translation recovers it (a network trained on small
    motions and a 7-pixel LNCC window would not). A second blob only in the moving image moves the centre of
    mass without any motion: that shift makes the pair less alike and is not kept."""
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    from meddx.models.registration_refine import affine_field, compose_after_affine

    sim = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=7)
    fixed, moving = _blob((48, 48), (20.0, 24.0)), _blob((48, 48), (28.0, 18.0))
    a = affine_field(fixed, moving, sim)
    assert abs(float(a[0, 0, 20, 24]) - 8) < 0.5 and abs(float(a[0, 1, 20, 24]) + 6) < 0.5
    assert torch.equal(compose_after_affine(torch.zeros_like(a), a), a)
    distractor = fixed + 3 * _blob((48, 48), (44.0, 44.0))
    assert float(affine_field(fixed, distractor, sim).abs().max()) == 0.0
