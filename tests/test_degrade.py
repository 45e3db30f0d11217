"""Physics of the simulated degradations (meddx.data.degrade): dose, views, k-space masks, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from meddx.data import degrade
from meddx.errors import MeddxError


@pytest.fixture(scope="module")
def slice_hu() -> np.ndarray:
    from meddx.data.phantom import make_slices

    return make_slices(1, size=96, seed=3).images[0]


def test_poisson_log_variance_scales_inversely_with_dose():
    p = np.full((200, 200), 2.0)  # line integral 2: expected counts N0 * e^-2
    var = {n0: degrade.poisson_line_integrals(p, n0, np.random.default_rng(0)).var() for n0 in (1024, 4096)}
    # delta method: var(-log N/N0) = 1 / (N0 e^-p)
    for n0, v in var.items():
        assert v == pytest.approx(1.0 / (n0 * np.exp(-2.0)), rel=0.1)
    assert var[1024] / var[4096] == pytest.approx(4.0, rel=0.1)


def test_fbp_noise_variance_scales_with_dose(slice_hu):
    clean = degrade.sparse_view_ct(slice_hu, degrade.FULL_VIEWS, pixel_mm=2.0)
    fov = degrade.field_of_view(slice_hu.shape[0])
    var = {n0: (degrade.low_dose_ct(slice_hu, n0, seed=1, pixel_mm=2.0) - clean)[fov].var()
           for n0 in (1024, 4096, 16384)}
    assert var[1024] / var[4096] == pytest.approx(4.0, rel=0.25)
    assert var[4096] / var[16384] == pytest.approx(4.0, rel=0.25)


def test_noiseless_fbp_recovers_the_phantom(slice_hu):
    """Stated error: with 360 views, mean absolute error < 25 HU (2.5 % of the air-water step) inside the
    field of view (edges of bone and the lung wall carry most of it: FBP's ramp filter and the pixel-driven
    projector blur them slightly)."""
    ref = degrade.ct_reference(slice_hu)
    fov = degrade.field_of_view(ref.shape[0])
    rec = degrade.sparse_view_ct(slice_hu, 360)
    assert np.abs(rec - ref)[fov].mean() < 25.0
    sparse = degrade.sparse_view_ct(slice_hu, 30)
    assert np.abs(sparse - ref)[fov].mean() > np.abs(rec - ref)[fov].mean()  # fewer views, streaks


@pytest.mark.parametrize("views", [60, 61, 360])
def test_projector_and_fbp_in_view_groups_equal_scikit_image_in_one_call(slice_hu, views):
    """The views run in groups in parallel threads; the sinogram must be scikit-image's, bit for bit, and the
    FBP its one-call result up to float rounding."""
    from skimage.transform import iradon, radon

    angles = degrade.view_angles(views)
    mu = degrade.hu_to_mu(degrade.ct_reference(slice_hu))
    sino = degrade.project(slice_hu, views)
    assert len(degrade._view_groups(views)) == degrade.VIEW_GROUPS > 1
    assert np.array_equal(sino, radon(mu, angles, circle=True))
    one_call = degrade.mu_to_hu(iradon(sino, angles, circle=True, filter_name="hann"))
    fov = degrade.field_of_view(slice_hu.shape[0])
    assert np.abs(degrade.fbp(sino, views, filter_name="hann") - one_call)[fov].max() < 1e-3  # HU


def test_low_dose_is_deterministic_by_seed(slice_hu):
    a = degrade.low_dose_ct(slice_hu, 1024, seed=5)
    assert np.array_equal(a, degrade.low_dose_ct(slice_hu, 1024, seed=5))
    assert not np.array_equal(a, degrade.low_dose_ct(slice_hu, 1024, seed=6))


@pytest.mark.parametrize("accel", [4, 8])
@pytest.mark.parametrize("kind", ["equispaced", "random"])
def test_mri_mask_keeps_centre_and_acceleration(accel, kind):
    width = 128
    mask = degrade.mri_mask(width, accel, kind, seed=2)
    n_centre = round(width * degrade.MRI_CENTER_FRACTION[accel])
    start = (width - n_centre + 1) // 2
    assert mask[start:start + n_centre].all()
    achieved = width / mask.sum()
    assert achieved == pytest.approx(accel, rel=0.1 if kind == "equispaced" else 0.3)
    assert np.array_equal(mask, degrade.mri_mask(width, accel, kind, seed=2))


def test_zero_filled_is_exact_with_a_full_mask_and_blurred_without():
    img = np.random.default_rng(0).random((64, 64))
    assert np.allclose(degrade.image_from_kspace(degrade.kspace(img)).real, img, atol=1e-10)
    zf, mask = degrade.undersample_mri(img, 4, seed=0)
    assert zf.dtype == np.complex64 and mask.shape == (64,)
    assert np.abs(np.abs(zf) - img).mean() > 0.05


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(MeddxError, match="complex"):
        degrade.low_dose_ct(np.ones((32, 32), complex))
    with pytest.raises(MeddxError, match="square"):
        degrade.undersample_mri(np.ones((32, 40)))
    with pytest.raises(MeddxError, match="unknown degradation"):
        degrade.get_degradation("blur")
    with pytest.raises(MeddxError, match="photons"):
        degrade.poisson_line_integrals(np.zeros((2, 2)), 0, np.random.default_rng(0))
