"""Real-anatomy loaders (Debian mricron-data, insighttoolkit5-examples; PyPI nilearn) and the brain pairs.

Each skips with its reason when the package is absent, unless MEDDX_REQUIRE_SHARED=1 (CI), where it must run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import require_module

MRICRON = "/usr/share/mricron/templates/ch2.nii.gz"
ITK = "/usr/share/doc/insighttoolkit5-examples/examples/Data/BrainT1Slice.png"


def _require_file(path: str, package: str) -> None:
    if not os.path.exists(path):
        msg = f"{path} absent (Debian package {package})"
        if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; MEDDX_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)


def test_colin27_and_aal_share_a_grid():
    _require_file(MRICRON, "mricron-data")
    from meddx.data.anatomy import aal, colin27

    brain, atlas = colin27(), aal()
    assert brain.shape == atlas.shape == (181, 217, 181) and brain.spacing == (1.0, 1.0, 1.0)
    labels = np.unique(atlas.array)
    assert len(labels) == 117 and labels[0] == 0  # 116 regions + outside
    assert brain.array[atlas.array > 0].mean() > 2 * brain.array[atlas.array == 0].mean()


def test_mni152_masks():
    require_module("nilearn")
    from meddx.data.anatomy import mni152

    m = mni152()
    assert {k: v.shape for k, v in m.items()} == {k: (95, 117, 99) for k in ("t1", "brain", "gm", "wm")}
    gm, wm = m["gm"].array > 0.5, m["wm"].array > 0.5
    assert gm.sum() > 50_000 and wm.sum() > 50_000 and not (gm & wm).any()
    assert (m["brain"].array[gm | wm] > 0.5).mean() > 0.95


def test_itk_slices():
    _require_file(ITK, "insighttoolkit5-examples")
    from meddx.data.anatomy import itk_brain_slices

    s = itk_brain_slices()
    assert s["pd"].shape == s["t1"].shape == (217, 181) and s["t1"].max() > 100


def test_brain2d_pairs_hold_out_slices():
    require_module("nilearn")
    from meddx.data.registration_brain import load_brain2d

    data = load_brain2d(per_slice=1)
    slices = lambda split: {i.split("-z")[1].split("-")[0] for i in getattr(data, split).ids}  # noqa: E731
    assert not slices("train") & slices("test") and not slices("train") & slices("val")
    assert data.class_names == ["background", "other brain", "grey matter", "white matter"]
    assert data.test.images.shape[1:] == (2, 64, 56) and len(data.extra["test"]["landmarks"]) == len(data.test)


def test_colin_mni_pair_overlaps_but_differs():
    require_module("nilearn")
    _require_file(MRICRON, "mricron-data")
    from meddx.data.registration_brain import colin_mni_pair

    fixed, moving, fl, ml = colin_mni_pair()
    assert fixed.shape == moving.shape == fl.shape == ml.shape == (48, 64, 56)
    dice = 2 * ((fl > 0) & (ml > 0)).sum() / ((fl > 0).sum() + (ml > 0).sum())
    assert 0.7 < dice < 0.99  # same space, different subjects


def test_nifti_pair_folder(tmp_path):
    import nibabel as nib

    from meddx.data.registration import load_registration

    rng = np.random.default_rng(0)
    for sub in ("fixed", "moving", "labels/fixed", "labels/moving"):
        (tmp_path / sub).mkdir(parents=True)
    for k in range(4):
        vol = rng.random((16, 16, 16)).astype(np.float32)
        for sub in ("fixed", "moving"):
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(tmp_path / sub / f"c{k}.nii.gz"))
        for sub in ("fixed", "moving"):
            nib.save(nib.Nifti1Image((vol > 0.5).astype(np.int16), np.eye(4)),
                     str(tmp_path / "labels" / sub / f"c{k}.nii.gz"))
    data = load_registration(str(tmp_path))
    assert data.task == "registration" and data.spatial_dims == 3
    assert len(data.train) + len(data.val) + len(data.test) == 4
    assert data.class_names == ["background", "structure 1"] and int(data.test.labels.max()) == 1
