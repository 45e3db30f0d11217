"""Sparse-view data consistency: it pulls a restored slice towards the measured views, never away from them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from meddx.errors import MeddxError


@pytest.fixture(scope="module")
def slices():
    from meddx.data.degrade import ct_reference
    from meddx.data.phantom import make_slices

    return np.stack([ct_reference(s) for s in make_slices(2, size=64, seed=3).images])


def _psnr(ref, img):
    from meddx.metrics.image_quality import CT_RANGE, psnr

    return psnr(ref, img, CT_RANGE)


def _residual(x, b, views):
    from meddx.data.degrade import sparse_view_ct

    return float(np.sqrt(np.mean((b - sparse_view_ct(x, views)) ** 2)))


def test_consistency_moves_a_blurred_estimate_towards_the_truth(slices):
    from meddx.classical.consistency import sparse_view_consistency
    from meddx.data.degrade import sparse_view_ct

    measured = np.stack([sparse_view_ct(s, 30) for s in slices])
    blurred = np.stack([gaussian_filter(s, 1.5) for s in slices])  # a "network" that lost the fine detail
    out, kept, left, _ = sparse_view_consistency(blurred, measured, 30)
    assert (kept > 0).all() and (left < 0.5).all()
    for truth, start, end, b in zip(slices, blurred, out, measured):
        assert _psnr(truth, end) > _psnr(truth, start) + 1.0  # the measured views carry the lost detail
        assert _residual(end, b, 30) < 0.5 * _residual(start, b, 30)


def test_consistent_truth_is_left_alone(slices):
    from meddx.classical.consistency import sparse_view_consistency
    from meddx.data.degrade import sparse_view_ct

    measured = np.stack([sparse_view_ct(s, 30) for s in slices])
    out = sparse_view_consistency(slices, measured, 30).images
    assert np.abs(out - slices).max() < 1.0  # HU: the truth already agrees with its own views


def test_an_input_from_another_acquisition_is_never_made_less_consistent(slices):
    from meddx.classical.consistency import sparse_view_consistency

    rng = np.random.default_rng(0)
    measured = slices + rng.normal(0, 300, slices.shape).astype(np.float32)  # not a 30-view FBP of anything
    start = np.stack([gaussian_filter(s, 1.0) for s in slices])
    corrected = sparse_view_consistency(start, measured, 30, step=1.0, steps=6)
    out, kept, left = corrected.images, corrected.steps, corrected.residual_left  # undamped: would diverge
    for s, e, b in zip(start, out, measured):
        assert _residual(e, b, 30) <= _residual(s, b, 30)
    assert (kept < 6).any()  # the safeguard stopped at least one slice early
    assert (left > 0.5).all() and len(corrected.unexplained()) == len(slices)  # not the assumed scan: flagged


def test_bad_arguments_are_one_line_errors(slices):
    from meddx.classical.consistency import sparse_view_consistency

    with pytest.raises(MeddxError, match="one shape"):
        sparse_view_consistency(slices, slices[:1], 30)
    with pytest.raises(MeddxError, match="step"):
        sparse_view_consistency(slices, slices, 30, step=1.5)


def test_acceleration_gets_further_in_the_same_number_of_steps(slices):
    from meddx.classical.consistency import sparse_view_consistency
    from meddx.data.degrade import sparse_view_ct

    measured = np.stack([sparse_view_ct(s, 30) for s in slices])
    blurred = np.stack([gaussian_filter(s, 1.5) for s in slices])
    plain = sparse_view_consistency(blurred, measured, 30, steps=4, accelerated=False).images
    fast = sparse_view_consistency(blurred, measured, 30, steps=4).images
    for p, f, b in zip(plain, fast, measured):
        assert _residual(f, b, 30) < _residual(p, b, 30)
