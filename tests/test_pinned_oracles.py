"""Known-answer models end to end: a network that outputs the ground truth must score exactly 1.

Three "oracle" networks read the answer off their input image (they are pure functions of the pixels, so
the engine's sliding windows, mirror averaging and box rescaling are the only things that can spoil it):

* classification: the class-k square of :func:`tests.conftest.write_fake_medmnist` sits at a fixed place;
  the logit of class k is the mean intensity there -> AUC = ACC = 1.
* segmentation: images are exactly 0 (background) or 255 (structure), so the normalised image is negative on
  background and positive on the structure; the logits are +-10 by sign -> Dice = 1 through MONAI's
  Gaussian-weighted sliding window (patch 16 < image) and mirror test-time augmentation (4 passes in 2D, 8 in
  3D). A stitching or un-flipping mistake puts wrong labels on the asymmetric masks.
* detection: black images with white rectangles (COCO JSON, 128x80 px files loaded at 64x32, i.e. scaled by
  2 in x and 2.5 in y); the oracle finds each rectangle (connected component above the image's mid-range) and
  writes CenterNet's heat-map peak, log-size and offset for it -> mAP = 1, and the boxes written to
  ``detections_test.json`` and returned by ``Predictor.predict_files`` equal the annotation in the file's
  own pixels (a swapped x/y scale factor would not).

The oracles enter through the model registry under test-only names (fixture ``oracles`` removes them again);
the run folders are written by the public ``fit`` and scored by the public ``evaluate_run``.
Internal names used: ``meddx.models.registry.REGISTRY``, ``ModelSpec`` (builder "module:function" resolved
under ``meddx.models``), CenterNet's output layout (class logits, log-sizes, offsets at stride 4).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from meddx.data import DataBundle, Split
from meddx.engine.config import TrainConfig
from meddx.engine.evaluate import evaluate_run
from meddx.engine.fit import fit
from meddx.engine.predict import Predictor
from meddx.models import ModelSpec
from tests.conftest import write_fake_medmnist

ORACLE_MODULE = "meddx.models._pinned_test_oracles"


class _Oracle(nn.Module):
    """Base: one dummy parameter so that ``fit`` has something to optimise (its gradient is zero)."""

    def __init__(self, num_classes: int, spatial_dims: int) -> None:
        super().__init__()
        self.num_classes, self.spatial_dims = num_classes, spatial_dims
        self.dummy = nn.Parameter(torch.zeros(()))


class ClassificationOracle(_Oracle):
    """Logit k = 5 x mean of the 8x8 square where write_fake_medmnist draws class k."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        logits = []
        for k in range(self.num_classes):
            r, c = (k * 7) % (size - 8), (k * 11) % (size - 8)
            logits.append(x[:, :, r:r + 8, c:c + 8].mean(dim=(1, 2, 3)))
        return 5 * torch.stack(logits, 1) + 0 * self.dummy


class SegmentationOracle(_Oracle):
    """Foreground where the normalised image is positive (0/255 images: exactly the mask)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = 10 * torch.sign(x[:, :1])
        return torch.cat([-fg, fg], 1) + 0 * self.dummy


class DetectionOracle(_Oracle):
    """CenterNet output (class logits, log-size y/x, offset y/x at stride 4) of the image's white rectangles.

    Class 0 ("tall") when a rectangle is higher than wide, else class 1 ("wide").
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from scipy import ndimage

        stride = 4
        b, _, h, w = x.shape
        out = torch.zeros(b, self.num_classes + 4, h // stride, w // stride)
        out[:, :self.num_classes] = -10.0
        for i in range(b):
            img = x[i].mean(0)
            lo, hi = float(img.min()), float(img.max())
            if hi - lo < 1e-6:
                continue
            labels, _ = ndimage.label((img > (lo + hi) / 2).numpy())
            for sl in ndimage.find_objects(labels):
                y1, y2, x1, x2 = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
                centre = np.array([(y1 + y2) / 2, (x1 + x2) / 2]) / stride
                cell = np.floor(centre).astype(int)
                k = 0 if (y2 - y1) > (x2 - x1) else 1
                out[i, k, cell[0], cell[1]] = 10.0
                out[i, self.num_classes:self.num_classes + 2, cell[0], cell[1]] = torch.tensor(
                    np.log([(y2 - y1) / stride, (x2 - x1) / stride]), dtype=torch.float32)
                out[i, self.num_classes + 2:, cell[0], cell[1]] = torch.tensor(centre - cell, dtype=torch.float32)
        return out + 0 * self.dummy


def build_classifier(in_channels, num_classes, input_size=28, spatial_dims=2):
    return ClassificationOracle(num_classes, spatial_dims)


def build_segmenter(in_channels, num_classes, input_size=28, spatial_dims=2):
    return SegmentationOracle(num_classes, spatial_dims)


def build_detector(in_channels, num_classes, input_size=28, spatial_dims=2):
    return DetectionOracle(num_classes, spatial_dims)


SPECS = (
    ModelSpec("_oracle_cls", "_pinned_test_oracles:build_classifier", "test oracle", "tests", "", "", (2,)),
    ModelSpec("_oracle_seg", "_pinned_test_oracles:build_segmenter", "test oracle", "tests", "", "", (2, 3),
              "segmenter"),
    ModelSpec("_oracle_det", "_pinned_test_oracles:build_detector", "test oracle", "tests", "", "", (2,),
              "detector"),
)


@pytest.fixture
def oracles(monkeypatch):
    """Register the oracles under test-only names; monkeypatch removes them (and the module alias) afterwards."""
    from meddx.models import registry

    monkeypatch.setitem(sys.modules, ORACLE_MODULE, sys.modules[__name__])
    for spec in SPECS:
        monkeypatch.setitem(registry.REGISTRY, spec.name, spec)


def test_oracle_registration_is_removed_afterwards():
    from meddx.models import list_models

    assert not any(name.startswith("_oracle") for name in list_models())


def _cfg(tmp_path, **kw):
    base = dict(epochs=1, out=str(tmp_path / "runs"), name="oracle", progress=False, augment="none", batch_size=4)
    return TrainConfig(**(base | kw))


# --------------------------------------------------------------------------- classification


def test_classification_oracle_scores_auc_and_acc_one(oracles, tmp_path):
    npz = write_fake_medmnist(tmp_path / "oracle3.npz", n=(12, 6, 30), classes=3)
    run = fit(_cfg(tmp_path, data=str(npz), model="_oracle_cls"))
    m = evaluate_run(run.path, n_bootstrap=50, report=False)
    assert m["kind"] == "multi-class" and m["task"] == "classification" and m["n"] == 30
    assert m["auc"] == 1.0 and m["acc"] == 1.0
    assert m["auc_ci"] == [1.0, 1.0] and m["acc_ci"] == [1.0, 1.0]
    pred = np.load(run.path / "predictions_test.npz")
    assert np.array_equal(pred["y_score"].argmax(1), pred["y_true"].reshape(-1))


# --------------------------------------------------------------------------- segmentation


def _rect_masks(n: int, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One or two random axis-aligned boxes per image (asymmetric: mirroring without un-flipping fails)."""
    masks = np.zeros((n, 1, *shape), np.uint8)
    for i in range(n):
        for _ in range(1 + i % 2):
            lo = [int(rng.integers(0, s - 6)) for s in shape]
            hi = [int(rng.integers(a + 3, min(s, a + 12) + 1)) for a, s in zip(lo, shape)]
            masks[(i, 0) + tuple(slice(a, b) for a, b in zip(lo, hi))] = 1
    return masks


def _seg_bundle(shape: tuple[int, ...], counts=(4, 2, 4)) -> DataBundle:
    rng = np.random.default_rng(len(shape))
    splits = {}
    for name, n in zip(("train", "val", "test"), counts):
        masks = _rect_masks(n, shape, rng)
        splits[name] = Split(torch.from_numpy(masks * 255), torch.from_numpy(masks),
                             [f"{name}-{k}" for k in range(n)])
    return DataBundle(name=f"oracle-seg{len(shape)}d", task="segmentation", class_names=["background", "lesion"],
                      modality="ct", source="synthetic", extra={"spacing": [1.0] * len(shape)}, **splits)


@pytest.mark.parametrize("shape", [(40, 44), (20, 24, 28)], ids=["2d", "3d"])
def test_segmentation_oracle_scores_dice_one_through_windows_and_mirrors(oracles, tmp_path, shape):
    data = _seg_bundle(shape)
    run = fit(_cfg(tmp_path, task="segmentation", model="_oracle_seg", patch=16), data=data)
    m = evaluate_run(run.path, data=data, n_bootstrap=20, report=False)
    assert m["patch"] == [16] * len(shape) and m["mirror_tta"] is True  # windows smaller than the image
    assert m["n"] == 4 and m["dice"] == 1.0 and m["iou"] == 1.0
    assert m["per_class"][0]["dice"] == 1.0 and m["per_class"][0]["hd95"] == 0.0
    pred = np.load(run.path / "predictions_test.npz")
    assert np.array_equal(pred["y_pred"], data.test.labels[:, 0].numpy())
    if len(shape) == 2:  # the file path: PNG in, mask PNG out (0/255), mirrored and windowed the same way
        f = tmp_path / "case.png"
        Image.fromarray(data.test.images[1, 0].numpy()).save(f)
        res = Predictor(run.path).predict_files([f], out_dir=tmp_path / "masks")
        mask = np.array(Image.open(res[0]["mask"]))
        assert np.array_equal(mask, data.test.labels[1, 0].numpy() * 255)
        assert res[0]["voxels"] == {"lesion": int(data.test.labels[1].sum())}


# --------------------------------------------------------------------------- detection


def _coco_folder(root, n: int = 20, seed: int = 0):
    """128x80 px black PNGs with 1-2 white rectangles each (x edges even, y edges multiples of 5: exact after
    the 2x / 2.5x downscale to 64x32); categories given out of id order (tall id 3, wide id 7)."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    (root / "images").mkdir(parents=True)
    for i in range(n):
        arr = np.zeros((80, 128, 3), np.uint8)
        slots = [(0, 64), (64, 128)]  # one rectangle per half, so that no two share a heat-map cell
        for xa, _xb in slots[: 1 + i % 2]:
            tall = bool(rng.integers(0, 2))
            bw, bh = (16, 40) if tall else (40, 20)
            x = xa + 2 * int(rng.integers(1, (64 - bw) // 2 - 1))
            y = 5 * int(rng.integers(1, (80 - bh) // 5 - 1))
            arr[y:y + bh, x:x + bw] = 255
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 3 if tall else 7,
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
        name = f"img{i:02d}.png"
        Image.fromarray(arr).save(root / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": 128, "height": 80})
    doc = {"images": images, "annotations": anns,
           "categories": [{"id": 7, "name": "wide"}, {"id": 3, "name": "tall"}]}
    path = root / "boxes.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_detection_oracle_scores_map_one_and_boxes_map_back_to_file_pixels(oracles, tmp_path):
    path, doc = _coco_folder(tmp_path / "coco")
    run = fit(_cfg(tmp_path, data=str(path), task="detection", model="_oracle_det", size=64))
    m = evaluate_run(run.path, n_bootstrap=0, report=False)  # data loaded from the run's config, as the CLI does
    assert m["task"] == "detection" and m["n"] == 4  # 70/10/20 of 20 images
    assert m["map50"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["ap50_per_class"] == pytest.approx({"tall": 1.0, "wide": 1.0})

    by_file = {im["file_name"]: im["id"] for im in doc["images"]}
    names = {3: "tall", 7: "wide"}

    def truth(file_name):
        return sorted((names[a["category_id"]], [a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                                                  a["bbox"][1] + a["bbox"][3]])
                      for a in doc["annotations"] if a["image_id"] == by_file[file_name])

    records = json.loads((run.path / "detections_test.json").read_text())
    assert len(records) == 4
    for rec in records:
        file_name = rec["id"].split(":", 1)[1]
        assert rec["image_size"] == [128, 80]
        got = sorted((d["label"], d["box"]) for d in rec["detections"] if d["score"] > 0.5)
        want = truth(file_name)
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=0.051)
    # prediction on the original files maps boxes back the same way
    files = [tmp_path / "coco" / "images" / r["id"].split(":", 1)[1] for r in records[:2]]
    res = Predictor(run.path).predict_files(files, out_dir=tmp_path / "boxes")
    for f, r in zip(files, res):
        assert r["image_size"] == [128, 80]
        got = sorted((d["label"], d["box"]) for d in r["detections"])
        want = truth(f.name)
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], atol=0.051)
