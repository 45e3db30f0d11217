"""Detection: VOC/COCO loaders, mAP and FROC/CPM against hand computations, the CenterNet task end to end."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meddx.data.detection import load_detection_data, load_phantom_boxes, load_phantom_nodules, read_voc_xml
from meddx.errors import MeddxError
from meddx.metrics.detection import box_iou, coco_map, froc
from tests.conftest import shared_path

# --------------------------------------------------------------------------- metrics vs hand computation


def _pred(boxes, scores, labels):
    return {"boxes": np.asarray(boxes, float).reshape(-1, 4), "scores": np.asarray(scores, float),
            "labels": np.asarray(labels)}


def test_coco_map_hand_computed():
    # Two objects; ranked detections TP (0.9), FP (0.8), TP (0.7): P/R = 1/.5, .5/.5, .667/1.
    # COCO's 101-point AP: recall points 0..0.50 (51) at precision 1, 0.51..1 (50) at 2/3.
    gt = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float), "labels": np.array([0, 0])}]
    pr = [_pred([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]], [0.9, 0.8, 0.7], [0, 0, 0])]
    m = coco_map(gt, pr, ["cell", "other"])
    expect = (51 * 1.0 + 50 * (2 / 3)) / 101
    assert m["map50"] == pytest.approx(expect, abs=1e-6)
    assert m["map"] == pytest.approx(expect, abs=1e-6)  # perfect boxes: same at every IoU threshold
    assert list(m["ap50_per_class"]) == ["cell"]  # classes without ground truth are not averaged


def test_coco_map_iou_thresholds_and_classes():
    gt = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([1])}]
    # IoU 0.62 with the truth: a hit at 0.50, 0.55, 0.60 but not from 0.65 up -> 3 of 10 thresholds
    m = coco_map(gt, [_pred([[0, 0, 10, 6.2]], [0.5], [1])], ["a", "b"])
    assert m["map50"] == pytest.approx(1.0) and m["map75"] == pytest.approx(0.0)
    assert m["map"] == pytest.approx(0.3)
    # the right box with the wrong class finds nothing
    assert coco_map(gt, [_pred([[0, 0, 10, 10]], [0.9], [0])], ["a", "b"])["map50"] == pytest.approx(0.0)
    assert coco_map(gt, [_pred([], [], [])], ["a", "b"])["map50"] == 0.0


def test_froc_and_cpm_hand_computed():
    # scan A: nodules at (10,10,10) d=4 and (30,30,30) d=6; scan B: none.
    nodules = [{"centres": np.array([[10, 10, 10], [30, 30, 30]], float), "diameters": np.array([4.0, 6.0])},
               {"centres": np.zeros((0, 3)), "diameters": np.zeros(0)}]
    cands = [{"centres": np.array([[10, 10, 11], [10, 11, 10], [50, 50, 50], [31, 30, 30]], float),
              "scores": np.array([0.9, 0.5, 0.8, 0.3])},  # 0.5 hits nodule 1 again: ignored (LUNA16)
             {"centres": np.array([[5, 5, 5], [9, 9, 9]], float), "scores": np.array([0.6, 0.2])}]
    m = froc(cands, nodules)
    # thresholds 0.9 (FP/scan 0, sens .5), 0.8 (.5, .5), 0.6 (1, .5), 0.3 (1, 1), 0.2 (1.5, 1)
    assert m["fps"] == [0.0, 0.5, 1.0, 1.5] and m["sens"] == [0.5, 0.5, 1.0, 1.0]
    assert [m["sensitivity"][r] for r in (0.125, 0.25, 0.5, 1, 2, 4, 8)] == [0.5, 0.5, 0.5, 1, 1, 1, 1]
    assert m["cpm"] == pytest.approx(5.5 / 7)
    assert m["n_nodules"] == 2 and m["n_detected"] == 2 and m["n_candidates"] == 5
    # interpolation between curve points: one FP at 0.95 ranked above one hit at 0.9 over 4 scans
    m = froc([{"centres": [[0, 0, 0], [9, 9, 9]], "scores": [0.9, 0.95]}] + [{"centres": [], "scores": []}] * 3,
             [{"centres": [[0, 0, 0]], "diameters": [2.0]}] + [{"centres": np.zeros((0, 3)), "diameters": []}] * 3)
    assert m["sensitivity"][0.125] == pytest.approx(0.5)  # halfway from (0, 0) to (0.25, 1)
    assert m["sensitivity"][1.0] == 1.0


def test_box_iou_2d_and_3d():
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 0, 15, 10]]))[0, 0] == pytest.approx(50 / 150)
    assert box_iou(np.array([[0, 0, 0, 2, 2, 2]]), np.array([[1, 1, 1, 3, 3, 3]]))[0, 0] == pytest.approx(1 / 15)


# --------------------------------------------------------------------------- loaders and bad input


def _voc(root: Path, objects: dict[str, list[tuple[str, int, int, int, int]]], size=(64, 48)) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, objs in objects.items():
        Image.fromarray(np.full((size[1], size[0], 3), 128, np.uint8)).save(root / "JPEGImages" / f"{stem}.jpg")
        body = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                       f"<ymax>{d}</ymax></bndbox></object>" for n, a, b, c, d in objs)
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
            f"{body}</annotation>")
    return root


def test_voc_loader_scales_boxes_and_drops_degenerate(tmp_path):
    objs = {f"im{i}": [("RBC", 4, 4, 20, 20), ("WBC", 30, 10, 60, 40)] for i in range(5)}
    objs["im0"].append(("RBC", 10, 10, 10, 30))  # degenerate: dropped with a warning
    root = _voc(tmp_path / "voc", objs)
    with pytest.warns(UserWarning, match="dropped 1 degenerate"):
        d = load_detection_data(str(root), size=128)
    assert d.task == "detection" and d.class_names == ["RBC", "WBC"] and d.image_size == (96, 128)
    assert len(d.train) + len(d.val) + len(d.test) == 5  # no ImageSets: a seeded random split
    t = (d.train.labels + d.val.labels + d.test.labels)[0]
    np.testing.assert_allclose(t["boxes"], [[8, 8, 40, 40], [60, 20, 120, 80]])  # x2 scale
    assert t["labels"].tolist() == [0, 1]


@pytest.mark.parametrize("objs,problem", [
    ([("RBC", 10, 10, 70, 20)], "lies outside the 64x48 image"),
    ([("Tumour", 1, 1, 5, 5)], "unknown class"),
])
def test_voc_bad_boxes(tmp_path, objs, problem):
    root = _voc(tmp_path / "voc", {"a": objs})
    with pytest.raises(MeddxError, match=problem) as exc:
        read_voc_xml(root / "Annotations" / "a.xml", ["RBC"])
    assert "a.xml" in str(exc.value)


def test_cli_reports_bad_box_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from meddx.cli import app

    root = _voc(tmp_path / "voc", {f"a{i}": [("RBC", 1, 1, 9, 9)] for i in range(3)})
    (root / "Annotations" / "a1.xml").write_text((root / "Annotations" / "a1.xml").read_text().replace(
        "<xmax>9</xmax>", "<xmax>90</xmax>"))
    r = CliRunner().invoke(app, ["train", "--data", str(root), "--task", "detection", "--out", str(tmp_path)])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: ") and "a1.xml" in r.output
    assert "box [1, 1, 90, 9] lies outside the 64x48 image" in r.output


def test_empty_and_broken_annotation_files(tmp_path):
    empty = tmp_path / "empty.xml"
    empty.write_text("  \n")
    with pytest.raises(MeddxError, match="empty annotation file"):
        read_voc_xml(empty)
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><size>")
    with pytest.raises(MeddxError, match="not a valid VOC XML"):
        read_voc_xml(broken)
    coco = tmp_path / "empty.json"
    coco.write_text("")
    with pytest.raises(MeddxError, match="empty annotation file"):
        load_detection_data(str(coco))
    coco.write_text('{"images": [], "annotations": [], "categories": []}')
    with pytest.raises(MeddxError, match="without images or categories"):
        load_detection_data(str(coco))


def _coco(tmp_path: Path, box: list[float]) -> Path:
    images = []
    for i in range(4):
        Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(tmp_path / f"i{i}.png")
        images.append({"id": 10 + i, "file_name": f"i{i}.png", "width": 64, "height": 32})
    anns = [{"id": i, "image_id": 10 + i, "category_id": 7, "bbox": box, "iscrowd": 0} for i in range(4)]
    anns.append({"id": 99, "image_id": 10, "category_id": 7, "bbox": [1, 1, 0, 5], "iscrowd": 0})  # degenerate
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 7, "name": "platelet"}]}))
    return path


def test_coco_loader(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        d = load_detection_data(str(_coco(tmp_path, [8, 4, 16, 8])), size=128)
    assert any("dropped 1 degenerate" in str(w.message) for w in caught)
    assert d.class_names == ["platelet"] and d.image_size == (64, 128)
    every = d.train.labels + d.val.labels + d.test.labels
    assert len(every) == 4 and all(t["boxes"].tolist() == [[16, 8, 48, 24]] for t in every)  # xywh -> xyxy, x2
    with pytest.raises(MeddxError, match="outside the 64x32 image"):
        load_detection_data(str(_coco(tmp_path, [60, 4, 16, 8])))


def test_split_validation_names_the_problem():
    d = load_phantom_boxes(32, splits={"train": 4, "val": 2, "test": 2})
    from meddx.data.detection import validate_detection_split

    split = d.train.subset([0, 1])
    split.labels[0] = {"boxes": np.array([[0, 0, 40, 8]], np.float32), "labels": np.array([0])}
    with pytest.raises(MeddxError, match="outside the image"):
        validate_detection_split(split, "detection", 1, "here")
    split.labels[0] = {"boxes": np.array([[0, 0, 4, 8]], np.float32), "labels": np.array([3])}
    with pytest.raises(MeddxError, match="class index out of range"):
        validate_detection_split(split, "detection", 1, "here")


def test_bccd_real_data():
    root = shared_path("bccd", "BCCD")
    with pytest.warns(UserWarning, match="dropped 2 degenerate"):
        d = load_detection_data(str(root))  # default: 320x240
    assert (len(d.train), len(d.val), len(d.test)) == (205, 87, 72)
    assert d.class_names == ["WBC", "RBC", "Platelets"] and d.image_size == (240, 320)  # order of first appearance
    from meddx.data.detection import count_boxes

    per_split = [count_boxes(s.labels, 3) for s in (d.train, d.val, d.test)]
    assert per_split == [[214, 2381, 209], [87, 967, 83], [71, 805, 69]]
    counts = np.sum(per_split, axis=0)
    assert dict(zip(d.class_names, counts.tolist())) == {"RBC": 4155 - 2, "WBC": 372, "Platelets": 361}


# --------------------------------------------------------------------------- task: targets, decoding, augmentation


def test_encode_decode_round_trip():
    from meddx.tasks.detection import DetectionTask

    task = DetectionTask(2, 2)
    boxes = torch.tensor([[8.0, 16.0, 40.0, 32.0], [44.0, 4.0, 60.0, 28.0]])  # grid order y1 x1 y2 x2
    heat, ind, size, off = task.encode([{"boxes": boxes, "labels": torch.tensor([0, 1])}], (16, 16), 4.0, "cpu")
    assert heat.shape == (1, 2, 16, 16) and heat[0, 0, 6, 6] == 1 and heat[0, 1, 13, 4] == 1
    out = torch.full((1, 6, 16, 16), -10.0)
    out[0, :2] = torch.logit(heat.clamp(1e-4, 1 - 1e-4))
    for k in range(2):
        cell = ind[k, 1]
        out[0, 2:4].view(2, -1)[:, cell] = size[k]
        out[0, 4:6].view(2, -1)[:, cell] = off[k]
    det = task.decode(out, 4.0)[0]
    top = np.argsort(-det["scores"])[:2]
    got = sorted(det["boxes"][top].tolist())
    assert np.allclose(got, sorted([[16, 8, 32, 40], [4, 44, 28, 60]]), atol=1e-3)  # back to x1 y1 x2 y2


class _FixedHeat(torch.nn.Module):
    """Ignores its input: one heat-map peak at a fixed 3D cell (not flip-equivariant)."""

    def forward(self, x):
        out = torch.full((x.shape[0], 7, 4, 4, 4), -8.0)
        out[:, 0, 0, 1, 2] = 4.0
        return out


def test_flip_tta_unflips_maps():
    from meddx.data.augment import Normalization
    from meddx.tasks.detection import DetectionTask

    task = DetectionTask(1, 3)
    assert task.tta  # on by default for volumes
    x = torch.rand(2, 1, 8, 8, 8)
    norm = Normalization(1.0, [0.0], [1.0])
    # a pointwise (1x1x1) network is flip-equivariant: averaging the unflipped maps changes nothing
    conv = torch.nn.Conv3d(1, 7, 1).eval()
    plain = task._flip_averaged(conv, x, conv(x))
    assert torch.allclose(torch.sigmoid(plain[:, 0]), torch.sigmoid(conv(x)[:, 0]), atol=1e-5)
    assert torch.equal(plain[:, 1:], conv(x)[:, 1:])
    # a fixed peak is seen once unflipped and at 7 mirrored cells otherwise: its average drops to 1/8 of it
    heat = torch.sigmoid(task._flip_averaged(_FixedHeat(), x, _FixedHeat()(x))[0, 0])
    p, q = torch.sigmoid(torch.tensor(4.0)), torch.sigmoid(torch.tensor(-8.0))
    assert torch.isclose(heat[0, 1, 2], (p + 7 * q) / 8, atol=1e-5)
    assert torch.isclose(heat[3, 2, 1], (p + 7 * q) / 8, atol=1e-5)  # the all-axes mirror of (0, 1, 2)
    dets = task.detect(_FixedHeat(), x, norm, tta=True)
    assert len(dets) == 2 and dets[0]["scores"].max() < float(p)


def test_augment_moves_boxes_with_pixels():
    from meddx.tasks.detection import augment

    img = torch.zeros(6, 1, 32, 48)
    img[:, :, 4:12, 20:30] = 255.0
    targets = [{"boxes": torch.tensor([[4.0, 20.0, 12.0, 30.0]]), "labels": torch.tensor([0])} for _ in range(6)]
    out, tg = augment(img, targets, torch.Generator().manual_seed(3))
    for k in range(6):
        # with this seed no box is cropped below MIN_VISIBLE: every one must survive (and keep its label)
        assert len(tg[k]["boxes"]) == 1 and tg[k]["labels"].tolist() == [0], (k, tg[k])
        y1, x1, y2, x2 = tg[k]["boxes"][0].round().int().tolist()
        inside = out[k, 0, y1:y2, x1:x2].mean()
        assert inside > out[k, 0].mean() + 60, (k, tg[k]["boxes"])  # the bright patch is under its box


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def phantom_detection_run(tmp_path_factory):
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    data = load_phantom_boxes(64, splits={"train": 48, "val": 12, "test": 16})
    cfg = TrainConfig(data="phantom", task="detection", size=64, epochs=1, batch_size=16, progress=False,
                      out=str(tmp_path_factory.mktemp("runs")), name="det2d")
    run = fit(cfg, data=data)
    metrics = evaluate_run(run.path, data=data, n_bootstrap=0)
    return run.path, metrics


def test_phantom_2d_one_epoch_end_to_end(phantom_detection_run, tmp_path):
    run, metrics = phantom_detection_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"] == "centernet_slim"  # the task's default model replaces the classifier default
    assert 0.0 <= metrics["map50"] <= 1.0 and metrics["task"] == "detection" and "mAP@0.5" in metrics["headline"]
    dets = json.loads((run / "detections_test.json").read_text())
    assert len(dets) == 16 and {"id", "detections"} <= set(dets[0])
    # images loaded at 64x64 from (say) 128x96 files: the JSON boxes go back to the files' pixels
    from meddx.engine.evaluate import evaluate_run

    data = load_phantom_boxes(64, splits={"train": 48, "val": 12, "test": 16})
    data.extra["test"]["orig_size"] = [(128, 96)] * 16
    evaluate_run(run, data=data, n_bootstrap=0, report=False)
    scaled = json.loads((run / "detections_test.json").read_text())
    k = next(i for i, d in enumerate(dets) if d["detections"])
    assert scaled[k]["image_size"] == [128, 96]
    got, ref = np.array(scaled[k]["detections"][0]["box"]), np.array(dets[k]["detections"][0]["box"])
    assert np.allclose(got, ref * [2, 1.5, 2, 1.5], atol=0.2)
    html = (run / "report.html").read_text()
    assert "Detection results" in html and "data:image/png;base64," in html

    from typer.testing import CliRunner

    from meddx.cli import app

    img = tmp_path / "slice.png"
    Image.fromarray(np.full((128, 128), 90, np.uint8)).save(img)
    r = CliRunner().invoke(app, ["predict", str(run), str(img), "--out", str(tmp_path / "out")],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res[0]["image_with_boxes"].endswith("slice_boxes.png") and res[0]["image_size"] == [128, 128]
    assert Image.open(res[0]["image_with_boxes"]).size == (128, 128)
    assert isinstance(res[0]["detections"], list)


def test_structured_pruning_of_a_detection_run(phantom_detection_run, tmp_path):
    """`meddx compress` on a CenterNet run: channels removed, scored as `meddx evaluate` scores it, on mAP@0.5."""
    from meddx.deploy.compress import compress_run
    from meddx.engine.checkpoint import load_model

    run, _ = phantom_detection_run
    data = load_phantom_boxes(64, splits={"train": 48, "val": 12, "test": 16})
    new = compress_run(run, "prune-structured", amount=0.5, epochs=1, max_train=16, out=tmp_path, name="c",
                       n_bootstrap=0, data=data)
    m = json.loads(new.metrics.read_text())
    info = json.loads((new.path / "compress.json").read_text())
    assert m["task"] == "detection" and m["delta_map50"] == pytest.approx(m["map50"] - m["source_map50"])
    assert info["after"]["params"] < 0.5 * info["before"]["params"]
    assert (new.path / "detections_test.json").is_file()  # the task's own outputs, as `meddx evaluate` writes
    model, _ = load_model(new.best)
    assert model(torch.zeros(1, 1, 64, 64)).shape[1] == load_model(run / "best.safetensors")[0](
        torch.zeros(1, 1, 64, 64)).shape[1]


def test_phantom_3d_one_epoch_end_to_end(tmp_path):
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    data = load_phantom_nodules((24, 32, 32), splits={"train": 8, "val": 4, "test": 6})
    assert data.spatial_dims == 3 and data.train.labels[0]["boxes"].shape[1] == 6
    cfg = TrainConfig(data="phantom3d", task="detection", epochs=1, batch_size=4, progress=False,
                      out=str(tmp_path), name="det3d")
    run = fit(cfg, data=data)
    m = evaluate_run(run.path, data=data, n_bootstrap=20)
    assert set(m["sensitivity"]) == {0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0}
    assert 0.0 <= m["cpm"] <= 1.0 and len(m["cpm_ci"]) == 2 and m["n_nodules"] == sum(
        len(t["diameters"]) for t in data.test.labels)
    assert "FROC" in (run.path / "report.html").read_text()
    assert not math.isnan(json.loads((run.path / "metrics.json").read_text())["cpm"])
