"""Segmentation: metrics against hand computation, patch sampling, 1-epoch runs (2D and 3D), CLI, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from meddx.data.augment import POLICIES, Normalization
from meddx.data.dataset import DataBundle, Split
from meddx.errors import MeddxError
from meddx.metrics.segmentation import evaluate_segmentation, mean_dice, segmentation_scores
from meddx.tasks import get_task
from meddx.tasks.segmentation import default_patch, sample_patches

# ----------------------------------------------------------------------------- metrics by hand


def _square_pair():
    true = np.zeros((1, 16, 16), np.int64)
    pred = np.zeros_like(true)
    true[0, 4:8, 4:8] = 1
    pred[0, 4:8, 5:9] = 1  # shifted one column: overlap 4x3 = 12 of 16 + 16
    return pred, true


def test_dice_iou_hd95_surface_dice_by_hand():
    pred, true = _square_pair()
    s = segmentation_scores(pred, true, 2)
    assert s["dice"][0, 0] == pytest.approx(2 * 12 / 32)
    assert s["iou"][0, 0] == pytest.approx(12 / 20)
    assert s["hd95"][0, 0] == pytest.approx(1.0)  # every boundary pixel is within one column of the other
    assert s["surface_dice"][0, 0] == pytest.approx(1.0)  # ... so all lie within a 1-pixel tolerance
    s = segmentation_scores(pred, true, 2, tolerance=0.5)
    assert s["surface_dice"][0, 0] < 1.0
    s = segmentation_scores(pred, true, 2, spacing=(1.0, 2.5))  # the shift is along x: 2.5 mm
    assert s["hd95"][0, 0] == pytest.approx(2.5)


def test_hd95_3d_shift_in_mm():
    true = np.zeros((1, 12, 12, 12), np.int64)
    true[0, 3:7, 3:7, 3:7] = 1
    pred = np.roll(true, 2, axis=1)  # two slices along z
    s = segmentation_scores(pred, true, 2, spacing=(3.0, 1.0, 1.0))
    assert s["hd95"][0, 0] == pytest.approx(6.0)
    assert s["dice"][0, 0] == pytest.approx(2 * 32 / 128)


def test_conventions_for_empty_cases_and_global_dice():
    pred, true = _square_pair()
    pred = np.concatenate([pred, np.zeros_like(pred), np.zeros_like(pred)])
    true = np.concatenate([true, np.zeros_like(true), np.zeros_like(true)])
    pred[1, 0:2, 0:2] = 1  # false positive in a case without the class
    true[2, 10:12, 10:12] = 1  # missed
    m = evaluate_segmentation(pred, true, ["background", "lesion"], n_bootstrap=0)
    row = m["per_class"][0]
    assert row["cases_with_class"] == 2 and row["false_positive_cases"] == 1 and row["missed_cases"] == 1
    assert m["dice"] == pytest.approx((0.75 + 0.0) / 2)  # the empty case is left out of the mean
    assert np.isnan(segmentation_scores(pred, true, 2)["hd95"][2, 0])  # undefined when missed ...
    assert m["hd95"] == pytest.approx(1.0)  # ... and left out of the mean (counted in missed_cases)
    assert m["dice_global"] == pytest.approx(2 * 12 / (16 + 16 + 4 + 4))  # pooled: FP and miss both count


def test_bootstrap_ci_and_multiclass():
    rng = np.random.default_rng(0)
    true = np.zeros((30, 16, 16), np.int64)
    true[:, 2:8, 2:8] = 1
    true[:, 9:14, 9:14] = 2
    pred = true.copy()
    for i in range(30):  # damage a random number of class-1 pixels
        k = int(rng.integers(0, 30))
        pred[i, 2 + np.arange(k) // 6, 2 + np.arange(k) % 6] = 0
    m = evaluate_segmentation(pred, true, ["bg", "a", "b"], n_bootstrap=200)
    a, b = m["per_class"]
    assert b["dice"] == pytest.approx(1.0) and b["hd95"] == pytest.approx(0.0)
    lo, hi = a["dice_ci"]
    assert lo < a["dice"] < hi and 0.5 < lo and hi < 1.0
    assert m["dice"] == pytest.approx((a["dice"] + b["dice"]) / 2)
    assert m == evaluate_segmentation(pred, true, ["bg", "a", "b"], n_bootstrap=200)  # deterministic


def test_metric_bad_input():
    with pytest.raises(MeddxError, match="prediction shape"):
        segmentation_scores(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)), 2)
    with pytest.raises(MeddxError, match="at least 2 classes"):
        segmentation_scores(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), 1)


def test_mean_dice_matches_monai():
    pred, true = _square_pair()
    assert mean_dice(torch.as_tensor(pred), torch.as_tensor(true), 2) == pytest.approx(0.75)


# ----------------------------------------------------------------------------- patches and batches


def test_default_patch():
    assert default_patch((64, 64)) == (64, 64)
    assert default_patch((200, 130)) == (96, 96)
    assert default_patch((48, 64, 64)) == (32, 32, 32)
    assert default_patch((20, 12, 100)) == (16, 16, 32)


def test_patches_oversample_foreground_and_pad():
    images = torch.zeros(8, 1, 40, 40, dtype=torch.uint8)
    masks = torch.zeros(8, 1, 40, 40, dtype=torch.uint8)
    masks[:, 0, 30:33, 5:8] = 1  # tiny foreground in a corner
    g = torch.Generator().manual_seed(0)
    _, y = sample_patches(images, masks, (16, 16), 1.0, g)
    assert y.shape == (8, 1, 16, 16) and bool((y.flatten(1).sum(1) > 0).all())
    _, y0 = sample_patches(images, masks, (16, 16), 0.0, torch.Generator().manual_seed(0))
    assert int((y0.flatten(1).sum(1) > 0).sum()) < 8  # uniform crops often miss it
    x, y = sample_patches(images[:, :, :10], masks[:, :, :10], (16, 16), 0.5, g)  # smaller than the patch
    assert x.shape == (8, 1, 16, 16) and y.shape == (8, 1, 16, 16)


def test_mirror_tta_averages_unflipped_probabilities():

    task = get_task("segmentation", num_classes=2, image_shape=(16, 16))
    norm = Normalization(1.0, [0.0], [1.0])
    x = torch.rand(2, 1, 16, 16)
    conv = torch.nn.Conv2d(1, 2, 1).eval()  # pointwise: mirror-equivariant, so TTA changes nothing
    plain = task.predict_probabilities(conv, x, norm)
    assert torch.allclose(task.predict_probabilities(conv, x, norm, tta=True), plain, atol=1e-5)

    class LeftBiased(torch.nn.Module):  # foreground logit grows to the right: flips see the mirror image
        def forward(self, t):
            ramp = torch.linspace(-4, 4, t.shape[-1]).expand_as(t[:, :1])
            return torch.cat([torch.zeros_like(ramp), ramp], 1)

    p = task.predict_probabilities(LeftBiased(), x, norm, tta=True)
    assert torch.allclose(p[:, 1], torch.full_like(p[:, 1], 0.5), atol=1e-5)  # ramp + mirrored ramp cancel
    assert task.tta  # evaluate/predict use it by default


def test_make_batch_warps_image_and_mask_together():
    task = get_task("segmentation", num_classes=2, image_shape=(32, 32), patch=(32, 32))
    img = torch.zeros(4, 1, 32, 32, dtype=torch.uint8)
    img[:, :, 8:20, 10:22] = 200
    mask = (img > 0).to(torch.uint8)
    norm = Normalization(scale=1 / 255, mean=[0.0], std=[1.0])
    split = Split(img, mask)
    x, y = task.make_batch(split, torch.arange(4), norm, torch.device("cpu"), POLICIES["ct"],
                           torch.Generator().manual_seed(1))
    assert y.dtype == torch.long and set(torch.unique(y).tolist()) <= {0, 1}
    bright = x[:, 0] > 0.4
    agree = (bright == (y[:, 0] == 1)).float().mean()
    assert agree > 0.97  # the same random affine moved image and mask


# ----------------------------------------------------------------------------- end to end


def _tiny_bundle(dims: int) -> DataBundle:
    from meddx.data.segdata import load_phantom3d, load_phantom_segmentation

    if dims == 2:
        return load_phantom_segmentation(32, seed=0, splits={"train": 16, "val": 4, "test": 6})
    return load_phantom3d(16, seed=0, splits={"train": 2, "val": 1, "test": 2})  # 12 slices < 16-voxel patch


@pytest.mark.parametrize("dims,model", [(2, "unet"), (3, "segresnet")])
def test_one_epoch_phantom_train_evaluate_predict(tmp_path, dims, model):
    from meddx.data.volumes import read_volume, write_nifti
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor

    data = _tiny_bundle(dims)
    # 2D: no model or batch size given -> the task's defaults (unet, 16 patches); 3D: explicit ones
    explicit = {} if dims == 2 else {"model": model, "batch_size": 4}
    cfg = TrainConfig(data="phantom" if dims == 2 else "phantom3d", task="segmentation", size=32, epochs=1,
                      out=str(tmp_path), name="r", progress=False, **explicit)
    run = fit(cfg, data=data)
    saved_cfg = json.loads(run.config.read_text())
    assert (saved_cfg["model"], saved_cfg["batch_size"]) == ((model, 16) if dims == 2 else (model, 4))
    hist = run.read_history()
    assert len(hist) == 1 and 0.0 <= hist[0]["val_dice"] <= 1.0 and np.isfinite(hist[0]["train_loss"])
    m = evaluate_run(run.path, data=data, n_bootstrap=20)
    assert m["task"] == "segmentation" and m["n"] == len(data.test) and 0.0 <= m["dice"] <= 1.0
    assert set(m["per_class"][0]) >= {"dice", "iou", "hd95", "surface_dice", "dice_ci", "dice_global"}
    assert m["distance_unit"] == "mm"
    saved = json.loads((run.path / "metrics.json").read_text())
    assert saved["headline"] == m["headline"]
    pred = np.load(run.path / "predictions_test.npz")
    assert pred["y_pred"].shape == data.test.labels[:, 0].shape
    html = (run.path / "report.html").read_text()
    assert "Segmentation results" in html and "Predicted vs reference masks" in html
    assert "data:image/png;base64," in html
    p = Predictor(run.path)
    if dims == 2:
        f = tmp_path / "slice.png"
        Image.fromarray(data.test.images[0, 0].numpy()).resize((48, 48)).save(f)  # other size: mask follows it
        res = p.predict_files([f], out_dir=tmp_path / "masks")
        mask = np.array(Image.open(res[0]["mask"]))
        assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
    else:
        f = write_nifti(tmp_path / "vol.nii.gz", data.test.images[0, 0].numpy(), tuple(data.extra["spacing"]))
        res = p.predict_files([f], out_dir=tmp_path / "masks")
        vol = read_volume(res[0]["mask"])
        assert vol.shape == tuple(data.image_size) and vol.spacing == pytest.approx(tuple(data.extra["spacing"]))
        assert np.array_equal(vol.array, pred["y_pred"][0])  # same as the evaluation's prediction
        assert set(res[0]["volume_ml"]) == {"nodule"}
    assert set(res[0]) >= {"file", "mask", "voxels"}


def test_bundle_and_task_errors():
    img = torch.zeros(2, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(MeddxError, match=r"mask shape \(8, 9\) does not match image shape \(8, 8\)"):
        Split_bundle(img, torch.zeros(2, 1, 8, 9, dtype=torch.uint8))
    with pytest.raises(MeddxError, match="mask value 3 out of range for 2 classes"):
        Split_bundle(img, torch.full((2, 1, 8, 8), 3, dtype=torch.uint8))
    with pytest.raises(MeddxError, match="at least one class"):
        get_task("segmentation", num_classes=1, image_shape=(8, 8))


def Split_bundle(images, masks):  # noqa: N802 - a tiny helper named after what it builds
    s = Split(images, masks)
    return DataBundle("t", "segmentation", ["background", "x"], s, s, s)


runner = CliRunner()


def test_cli_png_folder_train_evaluate_predict(tmp_path):
    from meddx.cli import app

    root = tmp_path / "set"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for k in range(12):
        img = rng.integers(0, 40, (24, 24)).astype(np.uint8)
        m = np.zeros((24, 24), np.uint8)
        r, c = rng.integers(3, 15, 2)
        img[r:r + 6, c:c + 6] = 220
        m[r:r + 6, c:c + 6] = 255
        Image.fromarray(img).save(root / "images" / f"c{k}.png")
        Image.fromarray(m).save(root / "masks" / f"c{k}.png")
    r = runner.invoke(app, ["train", "--data", str(root), "--task", "segmentation", "--model", "unet", "--size", "32",
                            "--epochs", "1", "--batch-size", "4", "--patch", "16", "--out", str(tmp_path / "runs"),
                            "--name", "p"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "Dice" in r.output and "HD95" in r.output
    assert json.loads((tmp_path / "runs" / "p" / "metrics.json").read_text())["patch"] == [16, 16]  # 32 px images
    r = runner.invoke(app, ["train", "--data", str(root), "--task", "segmentation", "--patch", "12"])
    assert r.exit_code == 2 and "patch must be a multiple of 8" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path / "runs" / "p"), str(root / "images" / "c0.png"), "--out",
                            str(tmp_path / "out")], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res[0]["mask"].endswith("c0_mask.png") and (tmp_path / "out" / "c0_mask.png").is_file()
    bad = tmp_path / "bad"
    (bad / "images").mkdir(parents=True)
    (bad / "masks").mkdir()
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(bad / "images" / "a.png")
    Image.fromarray(np.zeros((10, 12), np.uint8)).save(bad / "masks" / "a.png")
    r = runner.invoke(app, ["train", "--data", str(bad), "--task", "segmentation", "--epochs", "1"])
    assert r.exit_code == 2
    line = r.output.strip()
    assert line.startswith("error: ") and "a.png" in line and "does not match image shape" in line


def test_segmentation_task_needs_masks(tmp_path, fake_npz):
    from meddx.data import load_data
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    cfg = TrainConfig(data=str(fake_npz), task="segmentation", epochs=1, out=str(tmp_path), progress=False)
    with pytest.raises(MeddxError, match="segmentation needs masks"):
        fit(cfg, data=load_data(str(fake_npz)))
