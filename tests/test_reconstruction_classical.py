"""Classical baselines: scikit-image denoisers tuned on validation, zero-filled and TV compressed sensing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from meddx.classical import denoise, mri
from meddx.data import degrade
from meddx.errors import MeddxError
from meddx.metrics.image_quality import MRI_RANGE, image_scores


@pytest.fixture(scope="module")
def noisy_pair():
    rng = np.random.default_rng(0)
    clean = np.zeros((4, 48, 48), np.float32)
    clean[:, 12:36, 12:36] = 0.6
    clean[:, 20:28, 20:28] = 0.9
    return clean, (clean + rng.normal(0, 0.08, clean.shape)).astype(np.float32)


@pytest.mark.parametrize("method", sorted(denoise.DENOISERS))
def test_each_denoiser_beats_the_noisy_input_after_tuning(method, noisy_pair):
    clean, noisy = noisy_pair
    strength, scores = denoise.tune(method, clean[:2], noisy[:2], MRI_RANGE)  # "validation": first two
    assert strength in denoise.DENOISERS[method].grid and set(scores) == set(denoise.DENOISERS[method].grid)
    out = denoise.denoise(noisy[2:], method, strength, 0.0, 1.0)
    before = image_scores(clean[2:], noisy[2:], MRI_RANGE)["psnr"].mean()
    assert image_scores(clean[2:], out, MRI_RANGE)["psnr"].mean() > before + 2.0


def test_unknown_denoiser():
    with pytest.raises(MeddxError, match="unknown denoiser"):
        denoise.denoise(np.zeros((1, 8, 8)), "bm3d", 1.0, 0.0, 1.0)


def test_tv_cs_improves_on_zero_filled_and_keeps_measured_kspace(noisy_pair):
    clean = noisy_pair[0][:1]
    zf, mask = degrade.undersample_mri(clean[0], 4, seed=0)
    rec = mri.tv_cs(zf, mask, weight=0.02, iterations=10)
    zero = mri.zero_filled(zf[None])[0]
    assert image_scores(clean, rec[None], MRI_RANGE)["psnr"][0] > image_scores(clean, zero[None], MRI_RANGE)["psnr"][0]
    assert rec.shape == clean[0].shape and rec.dtype == np.float32


def test_bm3d_never_imported_by_the_package():
    src = Path(__file__).resolve().parents[1] / "src" / "meddx"
    assert not [p for p in src.rglob("*.py") if "import bm3d" in p.read_text() or "from bm3d" in p.read_text()]
