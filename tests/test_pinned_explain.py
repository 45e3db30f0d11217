"""Explanations with known answers, through the public ``meddx.explain.explain``.

* saliency of a linear model is |w| of the target class (max over channels), min-max normalised;
* Grad-CAM and integrated gradients of a model that only sees one patch are zero outside that patch (Grad-CAM:
  outside the patch grown by the 3x3 kernel's reach) and peak inside it, in 2D and 3D.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from meddx.explain import explain
from tests.conftest import require_module

require_module("pytorch_grad_cam")
require_module("captum")


def _minmax(a: np.ndarray) -> np.ndarray:
    return (a - a.min()) / (a.max() - a.min())


@pytest.mark.parametrize("target", [0, 2])
def test_saliency_of_a_linear_model_is_normalised_abs_weight(target):
    torch.manual_seed(0)
    c, h, w = 2, 6, 7
    model = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 3))
    x = torch.rand(2, c, h, w)
    maps = explain(model, x, target=target, method="saliency")
    weight = model[1].weight.detach()[target].view(c, h, w).abs().amax(0).numpy()
    expected = _minmax(weight)
    assert maps.shape == (2, h, w)
    np.testing.assert_allclose(maps[0], expected, atol=1e-6)
    np.testing.assert_allclose(maps[1], expected, atol=1e-6)  # a linear model's gradient ignores the input
    other = _minmax(model[1].weight.detach()[1].view(c, h, w).abs().amax(0).numpy())
    assert np.abs(maps[0] - other).max() > 0.1  # the target class matters


class OnePatchNet(nn.Module):
    """Sees only ``patch`` of its input: everything else is zeroed before a bias-free 3x3 conv (the CAM layer),
    then ReLU, global average pooling and a linear head with positive weights for class 1."""

    def __init__(self, patch: tuple[slice, ...]):
        super().__init__()
        dims = len(patch)
        self.patch = patch
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        self.conv = conv(1, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.rand_like(self.conv.weight) + 0.1)  # positive response to bright pixels
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[-1.0, -0.5, -1.0, -0.2], [1.0, 0.5, 2.0, 0.3]]))

    def forward(self, x):
        mask = torch.zeros_like(x)
        mask[(slice(None), slice(None)) + self.patch] = 1
        a = torch.relu(self.conv(x * mask))
        return self.head(a.flatten(2).mean(-1))


def _grown(patch: tuple[slice, ...], shape: tuple[int, ...]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[tuple(slice(max(0, s.start - 1), s.stop + 1) for s in patch)] = True
    return m


@pytest.mark.parametrize("shape,patch", [
    ((24, 24), (slice(4, 10), slice(14, 20))),
    ((12, 14, 16), (slice(2, 6), slice(8, 12), slice(3, 7))),
], ids=["2d", "3d"])
@pytest.mark.parametrize("method", ["gradcam", "integrated_gradients"])
def test_maps_of_a_one_patch_model_point_into_the_patch(shape, patch, method):
    torch.manual_seed(1)
    model = OnePatchNet(patch)
    x = torch.rand(2, 1, *shape) + 0.5
    kw = {"layer": "conv"} if method == "gradcam" else {"n_steps": 8}
    maps = explain(model, x, target=1, method=method, **kw)
    inside = np.zeros(shape, bool)
    inside[patch] = True
    allowed = _grown(patch, shape) if method == "gradcam" else inside  # conv reach vs. exact input gradient
    for m in maps:
        assert m.shape == shape and m.max() == pytest.approx(1.0)
        assert np.unravel_index(m.argmax(), shape) in {tuple(i) for i in np.argwhere(inside)}
        assert np.all(m[~allowed] == 0), float(m[~allowed].max())
        assert m[inside].mean() > 0.3  # the patch is covered, not one stray pixel
