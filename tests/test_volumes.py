"""Volume and mask loaders: NIfTI/NRRD/DICOM reading, resampling that keeps the physical size, bad pairs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from meddx.data.masks import find_mask_pairs, load_mask_folder, read_image_mask_pair, read_mask
from meddx.data.segdata import find_volume_pairs, load_volume_folder
from meddx.data.volumes import Volume, check_pair, read_pair, read_volume, resample, write_nifti
from meddx.errors import MeddxError
from tests.conftest import shared_path


def _marked(shape=(6, 8, 10)) -> np.ndarray:
    a = np.zeros(shape, np.int16)
    a[1, 2, 3] = 7  # one voxel at (z, y, x) = (1, 2, 3) tells whether the axes were kept apart
    return a


def test_nifti_roundtrip_keeps_axes_and_spacing(tmp_path):
    path = write_nifti(tmp_path / "v.nii.gz", _marked(), (3.0, 1.5, 0.5))
    vol = read_volume(path)
    assert vol.shape == (6, 8, 10) and vol.spacing == pytest.approx((3.0, 1.5, 0.5))
    assert tuple(np.argwhere(vol.array == 7)[0]) == (1, 2, 3)
    assert vol.extent_mm == pytest.approx((18.0, 12.0, 5.0))


def test_nrrd_read_with_simpleitk(tmp_path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(_marked())  # SimpleITK arrays are (z, y, x) too
    img.SetSpacing((0.5, 1.5, 3.0))  # (x, y, z)
    sitk.WriteImage(img, str(tmp_path / "v.nrrd"))
    vol = read_volume(tmp_path / "v.nrrd")
    assert vol.shape == (6, 8, 10) and vol.spacing == pytest.approx((3.0, 1.5, 0.5))
    # ITK's identity direction is LPS; volumes come out in nibabel's RAS+ voxel order (x and y reversed)
    assert tuple(np.argwhere(vol.array == 7)[0]) == (1, 8 - 1 - 2, 10 - 1 - 3)
    write_nifti(tmp_path / "v.nii.gz", vol.array, vol.spacing, vol.affine)  # same place in scanner space
    back = read_volume(tmp_path / "v.nii.gz")
    assert np.array_equal(back.array, vol.array) and np.allclose(back.affine, vol.affine)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (2.0, 0.7, 1.3), 1.75])
def test_resample_keeps_physical_size(spacing):
    affine = np.diag([0.5, 1.0, 3.0, 1.0])
    affine[:3, 3] = (10.0, -20.0, 5.0)
    vol = Volume(np.random.default_rng(0).normal(size=(10, 20, 30)).astype(np.float32), (3.0, 1.0, 0.5), "", affine)
    out = resample(vol, spacing)
    for corner in ([-0.5, -0.5, -0.5, 1], [29.5, 19.5, 9.5, 1]):  # outer voxel edges stay in place
        far = [out.shape[2] - 0.5, out.shape[1] - 0.5, out.shape[0] - 0.5, 1]
        mine = [-0.5, -0.5, -0.5, 1] if corner[0] < 0 else far
        assert np.allclose(out.affine @ mine, affine @ corner)
    target = (spacing,) * 3 if np.isscalar(spacing) else spacing
    assert out.extent_mm == pytest.approx(vol.extent_mm)
    assert out.shape == tuple(round(e / t) for e, t in zip(vol.extent_mm, target))
    for got, want, n in zip(out.spacing, target, out.shape):
        assert abs(got - want) <= 0.5 * want / n + 1e-9  # the extent is off by at most half a voxel


def test_resample_labels_nearest_and_centred():
    lab = np.zeros((10, 10, 10), np.int64)
    lab[4:6, 4:6, 4:6] = 3
    out = resample(Volume(lab, (2.0, 2.0, 2.0)), 1.0, label=True)
    assert out.shape == (20, 20, 20) and set(np.unique(out.array)) == {0, 3}
    idx = np.argwhere(out.array == 3)
    assert idx.min(0).tolist() == [8, 8, 8] and idx.max(0).tolist() == [11, 11, 11]  # same physical place
    assert (out.array == 3).sum() * 1.0 == (lab == 3).sum() * 8.0  # same physical volume


def test_pair_mismatch_errors(tmp_path):
    a = write_nifti(tmp_path / "img.nii.gz", np.zeros((4, 5, 6), np.int16), (1.0, 1.0, 1.0))
    b = write_nifti(tmp_path / "lab.nii.gz", np.zeros((4, 5, 7), np.uint8), (1.0, 1.0, 1.0))
    c = write_nifti(tmp_path / "lab2.nii.gz", np.zeros((4, 5, 6), np.uint8), (2.0, 1.0, 1.0))
    with pytest.raises(MeddxError, match=r"label map of shape \(4, 5, 7\) does not match image shape \(4, 5, 6\)"):
        read_pair(a, b)
    with pytest.raises(MeddxError, match="label spacing 2x1x1 mm differs from the image's 1x1x1 mm") as exc:
        read_pair(a, c)
    assert str(c) in str(exc.value)
    with pytest.raises(MeddxError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "bad.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(MeddxError, match="not a readable volume"):
        read_volume(tmp_path / "bad.nii.gz")
    with pytest.raises(MeddxError, match="spacing must be three positive numbers"):
        resample(Volume(np.zeros((2, 2, 2)), (1, 1, 1)), (1.0, 0.0, 1.0))


def test_volume_folder_bundle(tmp_path):
    rng = np.random.default_rng(0)
    for k in range(5):
        img = rng.normal(0, 100, size=(8, 16, 16 + k)).astype(np.int16)  # different widths: padded to one shape
        lab = np.zeros_like(img, dtype=np.uint8)
        lab[3:5, 6:9, 6:9] = 1
        write_nifti(tmp_path / f"case{k}_image.nii.gz", img, (2.0, 1.0, 1.0))
        write_nifti(tmp_path / f"case{k}_label.nii.gz", lab, (2.0, 1.0, 1.0))
    assert len(find_volume_pairs(tmp_path)) == 5
    data = load_volume_folder(tmp_path, spacing=(1.0, 1.0, 1.0))
    assert data.task == "segmentation" and data.image_size == (16, 16, 20) and data.spatial_dims == 3
    assert data.class_names == ["background", "label 1"] and data.extra["spacing"] == pytest.approx([1, 1, 1])
    assert len(data.train) + len(data.val) + len(data.test) == 5
    assert data.train.labels.dtype == torch.uint8 and int(data.train.labels.max()) == 1
    with pytest.raises(MeddxError, match="no image/label volume pairs"):
        find_volume_pairs(tmp_path / "..")


def _png_pair(root, name, img_shape, mask_shape):
    (root / "images").mkdir(exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    Image.fromarray(np.full(img_shape, 80, np.uint8)).save(root / "images" / f"{name}.png")
    m = np.zeros(mask_shape, np.uint8)
    m[2:6, 2:6] = 255
    Image.fromarray(m).save(root / "masks" / f"{name}.png")


def test_png_mask_pairs(tmp_path):
    for k in range(6):
        _png_pair(tmp_path, f"im{k}", (20, 24), (20, 24))
    pairs = find_mask_pairs(tmp_path)
    img, mask = read_image_mask_pair(*pairs[0])
    assert img.shape == (1, 20, 24) and set(np.unique(mask)) == {0, 1}  # 0/255 read as 0/1
    data = load_mask_folder(tmp_path, size=16)
    assert data.image_size == (16, 16) and data.class_names == ["background", "foreground"]
    assert set(torch.unique(data.train.labels).tolist()) == {0, 1}


def test_png_mask_errors(tmp_path):
    _png_pair(tmp_path, "a", (20, 24), (20, 20))
    with pytest.raises(MeddxError, match=r"mask of shape \(20, 20\) does not match image shape \(20, 24\)"):
        read_image_mask_pair(*find_mask_pairs(tmp_path)[0])
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "images" / "b.png")
    with pytest.raises(MeddxError, match="image b.png has no mask"):
        find_mask_pairs(tmp_path)
    (tmp_path / "masks" / "c.png").write_bytes(b"garbage")
    with pytest.raises(MeddxError, match="not a readable mask image"):
        read_mask(tmp_path / "masks" / "c.png")
    with pytest.raises(MeddxError, match="needs images/ and masks/"):
        find_mask_pairs(tmp_path / "images")


# ----------------------------------------------------------------------------- real data (../shared/datasets)


def test_real_nrrd_pairs_load():
    root = shared_path("pyradiomics_testcases")
    img, lab = read_pair(root / "breast1_image.nrrd", root / "breast1_label.nrrd")
    assert img.shape == (21, 120, 45) and img.spacing == pytest.approx((2.1, 0.664, 0.664), abs=1e-3)
    assert int(lab.array.sum()) == 143
    img2, lab2 = read_pair(root / "breast1_image.nrrd", root / "breast1_label.nrrd", spacing=1.0)
    assert img2.extent_mm == pytest.approx(img.extent_mm)
    assert abs(int(lab2.array.sum()) * 1.0 - 143 * np.prod(img.spacing)) < 0.35 * 143 * np.prod(img.spacing)


def test_real_nifti_and_dicom_series():
    root = shared_path("totalsegmentator_examples")
    img, lab = read_pair(root / "example_ct_sm.nii.gz", root / "example_seg.nii.gz")
    assert img.shape == (30, 101, 122) and img.spacing == pytest.approx((3.0, 3.0, 3.0))
    assert int(lab.array.max()) <= 117 and len(np.unique(lab.array)) == 42  # as SOURCE.md: 42 values (0..117)
    ct = read_volume(root / "example_ct_dicom")
    assert ct.shape == (20, 512, 512) and ct.spacing[1] == pytest.approx(0.977, abs=1e-3)
    assert -1100 < float(ct.array.min()) and float(ct.array.max()) < 4000  # rescaled to HU by GDCM
    # the series (SimpleITK) and its label map (nibabel) come out in the same voxel order
    ct2, seg = read_pair(root / "example_ct_dicom", root / "example_seg_dicom.nii.gz")
    assert seg.shape == ct2.shape and ct2.spacing == pytest.approx((2.0, 0.9766, 0.9766), abs=1e-3)
    body = ct2.array > -500
    assert (seg.array > 0).sum() > 1000 and body[seg.array > 0].mean() > 0.9  # organs lie inside the body
    with pytest.raises(MeddxError, match="differs from the image's"):
        check_pair(ct, Volume(seg.array, (3.0, 0.9766, 0.9766), "seg_3mm.nii.gz"))


@pytest.mark.slow
def test_real_nrrd_folder_as_segmentation_bundle():
    """The PyRadiomics cases as a folder of <case>_image/_label (and -label) pairs, resampled to one spacing."""
    root = shared_path("pyradiomics_testcases")
    data = load_volume_folder(root)
    assert len(data.train) + len(data.val) + len(data.test) == 4 and data.spatial_dims == 3
    assert data.class_names[0] == "background" and len(data.class_names) == 10  # prostate labels go up to 9
    assert data.extra["spacing"][0] == pytest.approx(4.75, abs=0.05)  # median of 6.5, 6.5, 2.1, 3.0 mm (z)
    assert data.train.images.dtype == torch.float32 and bool(torch.isfinite(data.train.images).all())


@pytest.mark.slow
def test_real_adrenalmnist3d_one_epoch(tmp_path):
    """3D classification through the same fit/evaluate/predict as 2D (a subset, one epoch)."""
    from meddx.data import load_data
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor

    path = shared_path("adrenalmnist3d", "adrenalmnist3d.npz")
    data = load_data(str(path))
    assert data.image_size == (28, 28, 28) and data.spatial_dims == 3 and len(data.test) == 298
    data.train, data.val, data.test = data.train.subset(range(32)), data.val.subset(range(16)), data.test.subset(
        range(16))
    cfg = TrainConfig(data=str(path), model="seednet", epochs=1, batch_size=16, out=str(tmp_path), name="a",
                      progress=False)
    run = fit(cfg, data=data)
    m = evaluate_run(run.path, data=data, n_bootstrap=20, report=False)
    assert m["n"] == 16 and 0 <= m["acc"] <= 1
    np.save(tmp_path / "v.npy", data.test.images[0, 0].numpy())
    res = Predictor(run.path).predict_files([tmp_path / "v.npy"])
    assert res[0]["label"] in ("normal", "hyperplasia")
