"""PSNR/SSIM of meddx.metrics.image_quality against scikit-image and closed forms on fixed arrays."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from meddx.errors import MeddxError
from meddx.metrics import image_quality as iq


def test_psnr_closed_form_and_skimage():
    ref = np.zeros((32, 32))
    img = np.full((32, 32), 0.1)
    assert iq.psnr(ref, img, iq.MRI_RANGE) == pytest.approx(20.0)  # MSE 0.01, range 1
    rng = np.random.default_rng(0)
    a, b = rng.uniform(-900, 900, (40, 40)), rng.uniform(-900, 900, (40, 40))
    assert iq.psnr(a, b, iq.CT_RANGE) == pytest.approx(peak_signal_noise_ratio(a, b, data_range=2000.0))
    assert iq.psnr(a, a, iq.CT_RANGE) == float("inf")


def test_values_outside_the_range_are_clipped_first():
    ref = np.full((16, 16), -1000.0)
    img = np.full((16, 16), -3000.0)  # below the window: clipped to -1000, identical to the reference
    assert iq.psnr(ref, img, iq.CT_RANGE) == float("inf")
    assert iq.ssim(ref, img, iq.CT_RANGE) == pytest.approx(1.0)


def test_ssim_matches_skimage_gaussian_variant():
    rng = np.random.default_rng(1)
    a = rng.random((48, 48))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    want = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False)
    assert iq.ssim(a, b, iq.MRI_RANGE) == pytest.approx(want)
    assert iq.ssim(a, a, iq.MRI_RANGE) == pytest.approx(1.0)
    assert iq.ssim(a, b, iq.MRI_RANGE) < 0.95


def test_per_image_scores_and_bootstrap_ci():
    rng = np.random.default_rng(2)
    refs = rng.random((20, 24, 24))
    imgs = refs + rng.normal(0, 0.05, refs.shape)
    s = iq.image_scores(refs, imgs, iq.MRI_RANGE)
    assert s["psnr"].shape == (20,) and s["ssim"].shape == (20,)
    summary = iq.summarize_scores(s, n_bootstrap=200)
    lo, hi = summary["psnr"]["ci"]
    assert lo < summary["psnr"]["mean"] < hi and summary["psnr"]["n"] == 20


def test_bad_inputs():
    with pytest.raises(MeddxError, match="complex"):
        iq.psnr(np.ones((4, 4), complex), np.ones((4, 4)), iq.MRI_RANGE)
    with pytest.raises(MeddxError, match="shape"):
        iq.ssim(np.ones((8, 8)), np.ones((8, 9)), iq.MRI_RANGE)
