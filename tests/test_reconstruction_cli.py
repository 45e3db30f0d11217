"""``meddx reconstruct``: DICOM, NIfTI, PNG and .npy in, the same format out with the geometry kept; one-line
errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from meddx.cli import app


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    from meddx.data.recon_data import load_phantom_ct
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    data = load_phantom_ct(32, 0, {"train": 8, "val": 2, "test": 2})
    out = tmp_path_factory.mktemp("recon")
    cfg = TrainConfig(data="phantom", task="reconstruction", degrade="lowdose", epochs=1, batch_size=4, size=32,
                      out=str(out), name="run", progress=False)
    return fit(cfg, data=data).path


def _invoke(*args):
    return CliRunner().invoke(app, ["reconstruct", *map(str, args)])


def test_npy_and_nifti_round_trip(ct_run, tmp_path):
    import nibabel as nib

    hu = np.full((40, 40), -1000.0, np.float32)
    hu[8:32, 8:32] = 40.0
    np.save(tmp_path / "slice.npy", hu)
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    affine[:3, 3] = [10, -20, 30]
    nib.save(nib.Nifti1Image(np.stack([hu, hu, hu], 2).astype(np.int16), affine), tmp_path / "vol.nii.gz")
    res = _invoke(ct_run, tmp_path / "slice.npy", tmp_path / "vol.nii.gz", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "out" / "slice_recon.npy")
    assert out.shape == (40, 40) and out.dtype == np.float32
    vol = nib.load(tmp_path / "out" / "vol_recon.nii.gz")
    assert vol.shape == (40, 40, 3) and np.allclose(vol.affine, affine)


def test_dicom_keeps_geometry_and_gets_new_uids(ct_run, tmp_path):
    import pydicom
    from pydicom.data import get_testdata_file

    src = get_testdata_file("CT_small.dcm")
    res = _invoke(ct_run, src, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    before, after = pydicom.dcmread(src), pydicom.dcmread(tmp_path / "CT_small_recon.dcm")
    assert after.PixelSpacing == before.PixelSpacing and after.ImagePositionPatient == before.ImagePositionPatient
    assert after.SOPInstanceUID != before.SOPInstanceUID and "DERIVED" in after.ImageType
    assert after.pixel_array.shape == before.pixel_array.shape


def test_png_16bit_hu_and_8bit_refused(ct_run, tmp_path):
    from PIL import Image

    Image.fromarray(np.full((32, 32), 1024 - 1000, np.uint16)).save(tmp_path / "ct16.png")
    res = _invoke(ct_run, tmp_path / "ct16.png", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    assert np.asarray(Image.open(tmp_path / "ct16_recon.png")).dtype == np.uint16
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(tmp_path / "ct8.png")
    res = _invoke(ct_run, tmp_path / "ct8.png")
    assert res.exit_code == 2 and "display values, not HU" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize("array, message", [
    (np.ones((32, 32), np.complex64), "complex values"),
    (np.random.default_rng(0).random((32, 32)), "must be in HU"),
    (np.full((8, 8), -1000.0), "at least 16"),
])
def test_bad_arrays_are_one_line_errors(ct_run, tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    res = _invoke(ct_run, tmp_path / "bad.npy")
    assert res.exit_code == 2 and message in res.output and res.output.startswith("error: ")
    assert len(res.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    from meddx.data.recon_data import load_phantom_ct
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    data = load_phantom_ct(32, 0, {"train": 8, "val": 2, "test": 2})
    cfg = TrainConfig(data="phantom", task="reconstruction", degrade="sparseview", epochs=1, batch_size=4, size=32,
                      out=str(tmp_path_factory.mktemp("sparse")), name="run", progress=False)
    return fit(cfg, data=data).path


def test_sparse_view_output_agrees_with_the_measured_views_better_than_the_network(sparse_run, tmp_path):
    import torch

    from meddx.data.degrade import sparse_view_ct
    from meddx.data.phantom import make_slices
    from meddx.runtimes import open_runtime

    scan = sparse_view_ct(make_slices(1, size=48, seed=7).images[0], 60)
    np.save(tmp_path / "scan.npy", scan)
    res = _invoke(sparse_run, tmp_path / "scan.npy", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "scan_recon.npy")
    rt = open_runtime("torch", sparse_run)
    alone = rt.task.to_display(rt.task.predict(rt.model, torch.from_numpy(scan / 1000.0)[None, None].float()))[0]

    def residual(x):
        return np.sqrt(np.mean((scan - sparse_view_ct(x, 60)) ** 2))

    assert residual(out) < 0.7 * residual(alone)


def test_sparse_view_run_refuses_a_slice_that_is_not_its_scan(sparse_run, tmp_path):
    np.save(tmp_path / "wide.npy", np.full((40, 48), -1000.0, np.float32))
    res = _invoke(sparse_run, tmp_path / "wide.npy")
    assert res.exit_code == 2 and "square slice" in res.output and res.output.startswith("error: ")
    assert len(res.output.strip().splitlines()) == 1


def test_sparse_view_run_refuses_a_full_view_slice(sparse_run, tmp_path):
    from meddx.data.degrade import ct_reference
    from meddx.data.phantom import make_slices

    np.save(tmp_path / "full.npy", ct_reference(make_slices(1, size=96, seed=7).images[0]))  # no streaks at all
    res = _invoke(sparse_run, tmp_path / "full.npy")
    assert res.exit_code == 2 and "is not a 60-view FBP" in res.output and res.output.startswith("error: ")
    assert len(res.output.strip().splitlines()) == 1
    np.save(tmp_path / "air.npy", np.full((48, 48), -1000.0, np.float32))  # nothing to disagree about: accepted
    assert _invoke(sparse_run, tmp_path / "air.npy", "--out", tmp_path).exit_code == 0
