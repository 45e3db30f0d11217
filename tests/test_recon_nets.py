"""The reconstruction networks: identity at start, shapes, and the noise-aware U-Net's own noise estimate."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.mark.parametrize("name", ["recon_unet", "recon_unet_nl", "dncnn"])
def test_ct_reconstructors_build_and_start_near_the_identity(name):
    from meddx.models import create_model

    model = create_model(name, 1, 1, 64, 2).eval()
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape
    if name != "dncnn":  # zero-initialised head: the residual networks start as the identity
        assert torch.equal(y, x)


def test_noise_level_matches_scikit_image_and_ignores_the_air_outside_the_field_of_view():
    from skimage.restoration import estimate_sigma

    from meddx.models.recon_nets import noise_level

    rng = np.random.default_rng(0)
    img = np.zeros((128, 128))
    img[30:90, 40:100] = 1.0
    for sd in (0.02, 0.1):
        x = img + rng.normal(0, sd, img.shape)
        ours = float(noise_level(torch.tensor(x, dtype=torch.float32)[None, None]))
        assert ours == pytest.approx(estimate_sigma(x), rel=0.08) and ours == pytest.approx(sd, rel=0.08)
        x[:, :40] = -1.0  # a band of exact air (outside the field of view): no noise there
        assert float(noise_level(torch.tensor(x, dtype=torch.float32)[None, None])) == pytest.approx(sd, rel=0.08)


def test_noise_aware_unet_appends_its_own_measured_level():
    from meddx.models.recon_nets import NOISE_SCALE, NoiseAwareUNet, noise_level

    torch.manual_seed(0)
    model = NoiseAwareUNet(1)
    torch.nn.init.normal_(model.head.weight, std=0.1)  # as if trained: the correction is not zero
    model.eval()
    x = torch.zeros(1, 1, 64, 64)
    x[..., 16:48, 16:48] = 0.5
    x = x + 0.05 * torch.randn_like(x)
    with torch.no_grad():
        level = float(noise_level(x)) * NOISE_SCALE
        by_hand = x + model.head(model.unet(torch.cat([x, torch.full_like(x, level)], 1)))
        other_level = x + model.head(model.unet(torch.cat([x, torch.full_like(x, level + 1.0)], 1)))
        assert torch.allclose(model(x), by_hand, atol=1e-6)
    assert not torch.allclose(by_hand, other_level, atol=1e-4)  # the level channel reaches the network
