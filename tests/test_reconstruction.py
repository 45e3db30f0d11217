"""The reconstruction task end to end (1 epoch per degradation), its one-line errors and its data sources."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meddx.errors import MeddxError


@pytest.fixture(scope="module")
def tiny_phantom():
    from meddx.data.recon_data import load_phantom_ct

    return load_phantom_ct(32, 0, {"train": 16, "val": 4, "test": 4})


@pytest.mark.slow
@pytest.mark.parametrize("degrade", ["lowdose", "sparseview", "mri4x"])
def test_one_epoch_end_to_end(tmp_path, tiny_phantom, degrade):
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    cfg = TrainConfig(data="phantom", task="reconstruction", degrade=degrade, epochs=1, batch_size=4, size=32,
                      out=str(tmp_path), name="run", progress=False)
    run = fit(cfg, data=tiny_phantom)
    m = evaluate_run(run.path, data=tiny_phantom, n_bootstrap=20)
    assert m["degradation"] == degrade and m["n"] == 4
    assert np.isfinite(m["psnr"]) and np.isfinite(m["psnr_input"]) and 0 < m["ssim_input"] <= 1
    assert json.loads((run.path / "config.json").read_text())["degrade"] == degrade
    baselines = [k for k in m["methods"] if k.startswith(("nlm", "tv", "wavelet", "TV compressed sensing"))]
    assert len(baselines) == (1 if degrade.startswith("mri") else 3)  # tuned on validation, same test slices
    alone = m["methods"].get("network alone (no data consistency)")  # sparse view: both rows, scored apart
    assert (alone is not None) == (degrade == "sparseview")
    if alone is not None:
        assert alone["psnr"]["mean"] != m["methods"]["network"]["psnr"]["mean"]
    saved = np.load(run.path / "reconstructions_test.npz")
    assert saved["network"].shape == saved["clean"].shape == (4, 32, 32)
    assert "Reconstruction quality" in (run.path / "report.html").read_text()


def test_inputs_are_deterministic_and_degraded(tiny_phantom):
    from meddx.tasks.reconstruction import ReconstructionTask

    a = ReconstructionTask("lowdose", (32, 32)).pairs(tiny_phantom.val)
    b = ReconstructionTask("lowdose", (32, 32)).pairs(tiny_phantom.val)
    assert torch.equal(a[0], b[0])
    assert float((a[0] - a[1]).abs().mean()) > 0.005  # noisy FBP differs from the reference
    x, y = ReconstructionTask("mri4x", (32, 32)).pairs(tiny_phantom.val)
    assert x.shape == (4, 3, 32, 32) and y.shape == (4, 1, 32, 32) and float(y.max()) <= 1.0


def test_bad_inputs_are_one_line_errors(tiny_phantom):
    from meddx.tasks.reconstruction import ReconstructionTask
    from meddx.tasks.reconstruction_checks import check_range, check_slice

    with pytest.raises(MeddxError, match="smaller than the training patch"):
        ReconstructionTask("lowdose", (32, 32), patch=48)
    with pytest.raises(MeddxError, match="complex"):
        check_slice(np.ones((32, 32), complex), mri=False)
    with pytest.raises(MeddxError, match="HU"):
        check_range(np.random.default_rng(0).random((4, 32, 32)), "ct")
    with pytest.raises(MeddxError, match=r"\[0, 1\]"):
        check_range(np.full((2, 8, 8), 300.0), "mri")
    with pytest.raises(MeddxError, match="needs CT slices"):
        ReconstructionTask("lowdose", (32, 32), modality="mri")
    task = ReconstructionTask("lowdose", (32, 32))
    with pytest.raises(MeddxError, match="HU"):
        task.clean(torch.rand(2, 1, 32, 32))


def test_cli_patch_larger_than_image_is_one_line(tmp_path):
    from meddx.cli import app

    res = CliRunner().invoke(app, ["train", "--task", "reconstruction", "--data", "phantom", "--size", "32",
                                   "--patch", "48", "--out", str(tmp_path), "--epochs", "1"])
    assert res.exit_code == 2
    assert "smaller than the training patch" in res.output and "Traceback" not in res.output


def _require_file(path):
    import os
    from pathlib import Path

    if not Path(path).exists():
        msg = f"{path} not installed (Debian package)"
        if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; MEDDX_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)


def test_cranium_head_ct_loader():
    from meddx.data.recon_data import CRANIUM, read_cranium

    _require_file(CRANIUM)
    vol, spacing = read_cranium()
    assert vol.shape == (108, 256, 256) and spacing[1] == pytest.approx(0.957, abs=1e-3)
    assert vol.min() == pytest.approx(-1024) and vol.max() > 1000  # HU: air and bone


def test_real_ct_bundle_is_split_by_volume():
    from meddx.data.recon_data import CRANIUM, describe, load_real_ct
    from tests.conftest import shared_path

    _require_file(CRANIUM)
    shared_path("totalsegmentator_examples", "example_ct_dicom")
    b = load_real_ct(64)
    d = describe(b)
    assert set(d["train"]) == {"cranium"} and set(d["test"]) == {"totalseg-ct_dicom"}
    assert "pydicom-CT_small" in d["val"] and d["test"]["totalseg-ct_dicom"] == 20
    assert b.train.images.shape[1:] == (1, 64, 64) and float(b.test.images.min()) < -900


def test_real_mri_bundle_is_split_by_volume():
    from meddx.data.recon_data import COLIN27, describe, load_real_mri
    from tests.conftest import require_module, shared_path

    _require_file(COLIN27)
    require_module("nilearn")
    shared_path("pyradiomics_testcases", "brain2_image.nrrd")
    b = load_real_mri(64)
    d = describe(b)
    assert set(d["train"]) == {"mni152", "brain1"} and set(d["val"]) == {"brain2"} and set(d["test"]) == {"colin27"}
    for split in (b.train, b.val, b.test):
        assert 0.0 <= float(split.images.min()) and float(split.images.max()) <= 1.0
