"""meddx.explain: heat maps for every model (2D) and 3D, hook hygiene, faithfulness metrics, CLI, report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meddx.cli import app
from meddx.data.augment import Normalization
from meddx.engine.checkpoint import save_checkpoint
from meddx.engine.config import TrainConfig
from meddx.errors import MeddxError
from meddx.explain.faithfulness import (
    FaithfulnessMeter,
    curve_auc,
    deletion_auc,
    deletion_aucs,
    energy_in_mask,
    insertion_auc,
    perturbation_curve,
    pointing_game,
)
from meddx.explain.methods import METHODS, explain, get_method, hook_count, list_methods, resolve_layer
from meddx.models import create_model, get_model_spec, list_models
from tests.conftest import require_module

require_module("pytorch_grad_cam")  # skip without the explain extra; fail under MEDDX_REQUIRE_SHARED=1
require_module("captum")

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("one_torch_thread")

# small settings that still exercise every code path: integrated gradients' steps and internal batches,
# occlusion's window and stride (the defaults would slide a 2-px window over the image: slow for a unit test)
FAST = {"n_steps": 4, "internal_batch_size": 16, "window": 4, "stride": 4}


def _check_maps(maps, shape):
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32
    assert maps.shape == shape
    assert np.isfinite(maps).all() and maps.min() >= 0.0 and maps.max() <= 1.0


@pytest.mark.parametrize("name", list_models(kind="classifier"))
def test_gradcam_shape_and_range_for_every_registered_model(name):
    size = 28
    model = create_model(name, 1, 3, size)
    maps = explain(model, torch.randn(1, 1, size, size), method="gradcam")  # layer found from the registry
    _check_maps(maps, (1, size, size))
    assert hook_count(model) == 0
    assert resolve_layer(model, model_name=name)[1] == get_model_spec(name).target_layer


@pytest.fixture(scope="module")
def slim_2d():
    torch.manual_seed(0)
    return create_model("resnet18_slim", 3, 4, 28)


@pytest.fixture(scope="module")
def slim_3d():
    torch.manual_seed(0)
    return create_model("resnet18_slim", 1, 2, 12, spatial_dims=3)  # layer4 is 2x2x2: not a constant map


POST_HOC = [m for m in METHODS if METHODS[m].family != "attention"]  # attention models: tests/test_attention.py


@pytest.mark.parametrize("method", POST_HOC)
def test_every_method_2d(method, slim_2d):
    model = slim_2d
    n = 1 if method == "scorecam" else 2  # Score-CAM: one forward per channel and image
    maps = explain(model, torch.randn(n, 3, 28, 28, generator=torch.Generator().manual_seed(0)), target=1,
                   method=method, **FAST)
    _check_maps(maps, (n, 28, 28))
    assert maps.max() > 0  # not an empty map
    assert hook_count(model) == 0


@pytest.mark.parametrize("method", [m for m in list_methods(3) if m in POST_HOC])
def test_every_3d_method_on_a_3d_model(method, slim_3d):
    model = slim_3d
    maps = explain(model, torch.randn(1, 1, 12, 12, 12, generator=torch.Generator().manual_seed(0)), method=method,
                   **FAST)
    _check_maps(maps, (1, 12, 12, 12))
    assert maps.max() > 0
    assert hook_count(model) == 0


def test_3d_seednet_and_method_table():
    assert set(list_methods(3)) == {m.name for m in METHODS.values() if m.supports_3d}
    model = create_model("seednet", 1, 2, 10, spatial_dims=3)
    _check_maps(explain(model, torch.randn(2, 1, 10, 10, 10)), (2, 10, 10, 10))


def test_model_state_is_restored_and_no_grad_is_fine():
    model = create_model("resnet18_slim", 1, 2, 28).train()
    model.fc.weight.requires_grad_(False)
    grad = torch.ones_like(model.conv1.weight)
    model.conv1.weight.grad = grad
    with torch.no_grad():
        maps = explain(model, torch.randn(1, 1, 28, 28), method="gradcam")
    _check_maps(maps, (1, 28, 28))
    assert model.training and model.conv1.weight.grad is grad
    assert not model.fc.weight.requires_grad and model.conv1.weight.requires_grad
    assert all(p.grad is None for n, p in model.named_parameters() if n != "conv1.weight")


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("method", ["gradcam", "scorecam", "eigencam", "integrated_gradients"])
def test_hooks_released_after_an_exception(method):
    model = create_model("resnet18_slim", 1, 2, 16)
    model.fc = torch.nn.Sequential(model.fc, Boom())  # fails after the hooked layer ran
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, torch.randn(2, 1, 16, 16), method=method, model_name="resnet18_slim", **FAST)
    assert hook_count(model) == 0 and model.training  # restored to what it was
    # a bad target class is raised (pytorch-grad-cam's own `with` would swallow it) and releases too
    model = create_model("resnet18_slim", 1, 2, 16)
    with pytest.raises(MeddxError, match="out of range"):
        explain(model, torch.randn(1, 1, 16, 16), target=5, method=method, **FAST)
    assert hook_count(model) == 0
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


def test_bad_inputs_give_one_line_errors():
    model = create_model("resnet18_slim", 1, 2, 28)
    cases = [
        (dict(images=torch.randn(1, 3, 28, 28)), "3 channels, the model expects 1"),
        (dict(images=torch.randn(1, 28, 28)), "expected a batch"),
        (dict(images=torch.randn(1, 1, 8, 8, 8)), "takes 2D inputs"),
        (dict(images=torch.randn(1, 1, 28, 28), method="magic"), "unknown explanation method 'magic'"),
        (dict(images=torch.randn(1, 1, 28, 28), target="tumour", class_names=["a", "b"]),
         "unknown target class 'tumour'"),
        (dict(images=torch.randn(1, 1, 28, 28), target=[0, 1]), "2 targets for 1 images"),
        (dict(images=torch.full((1, 1, 28, 28), float("nan"))), "NaN"),
        (dict(images=torch.randn(1, 1, 28, 28), layer="layer9"), "no layer 'layer9'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(MeddxError, match=message) as info:
            explain(model, **kwargs)
        assert "\n" not in str(info.value)
    assert get_method("Grad-CAM++").name == "gradcam++" and get_method("IG").name == "integrated_gradients"


def test_class_name_targets_and_per_image_targets():
    torch.manual_seed(0)
    model = create_model("resnet18_slim", 1, 2, 28)
    x = torch.randn(2, 1, 28, 28)
    by_name = explain(model, x, target="Nodule", class_names=["no nodule", "nodule"])
    by_index = explain(model, x, target=[1, 1])
    np.testing.assert_allclose(by_name, by_index, atol=1e-6)


# --------------------------------------------------------------------------- faithfulness


def test_pointing_game_and_energy_on_hand_made_maps():
    mask = np.zeros((10, 10), np.uint8)
    mask[2:4, 2:4] = 1
    hit = np.zeros((10, 10))
    hit[3, 3] = 1.0
    miss = np.zeros((10, 10))
    miss[8, 8] = 1.0
    assert pointing_game(hit, mask) and not pointing_game(miss, mask)
    assert pointing_game(miss, np.zeros_like(mask)) is False
    near = np.zeros((10, 10))
    near[5, 3] = 1.0  # two pixels below the mask
    assert not pointing_game(near, mask) and pointing_game(near, mask, tolerance=2)
    assert not pointing_game(np.ones((10, 10)), mask)  # a constant map points nowhere
    tie = np.zeros((10, 10))
    tie[3, 3] = tie[2, 2] = tie[9, 9] = 1.0  # two of three tied peaks inside
    assert pointing_game(tie, mask)
    assert energy_in_mask(hit, mask) == 1.0 and energy_in_mask(miss, mask) == 0.0
    assert energy_in_mask(np.ones((10, 10)), mask) == pytest.approx(0.04)  # uniform = area fraction
    assert np.isnan(energy_in_mask(np.zeros((10, 10)), mask))
    vol_mask = np.zeros((4, 5, 5), bool)
    vol_mask[1, 2, 2] = True
    vol = np.zeros((4, 5, 5))
    vol[1, 2, 2] = 2.0
    vol[0, 0, 0] = 1.0
    assert pointing_game(vol, vol_mask) and energy_in_mask(vol, vol_mask) == pytest.approx(2 / 3)
    with pytest.raises(MeddxError, match="shape"):
        pointing_game(np.zeros((3, 3)), np.zeros((4, 4)))
    meter = FaithfulnessMeter()
    meter.update([hit, miss], [mask, mask])
    meter.add("deletion_auc", [0.2, 0.4])
    agg = meter.aggregate()
    assert agg["pointing_game"] == 0.5 and agg["energy_in_mask"] == 0.5 and agg["pointing_game_n"] == 2
    assert agg["deletion_auc"] == pytest.approx(0.3)


class PatchModel(torch.nn.Module):
    """Logit of class 1 = mean of the pixels in the top-left 4x4 patch (times 5); class 0 = 0."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(5.0))

    def forward(self, x):
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([torch.zeros_like(s), s], dim=1)


def test_deletion_and_insertion_reward_the_right_map():
    model = PatchModel()
    image = torch.ones(1, 16, 16)
    good = np.zeros((16, 16))
    good[:4, :4] = 1.0
    bad = 1.0 - good
    kw = dict(steps=16, baseline="mean")
    assert deletion_auc(model, image, good, 1, **kw) < deletion_auc(model, image, bad, 1, **kw) - 0.2
    assert insertion_auc(model, image, good, 1, **kw) > insertion_auc(model, image, bad, 1, **kw) + 0.2
    f, p = perturbation_curve(model, image, good, 1, **kw)
    assert f[0] == 0 and f[-1] == 1 and len(p) == 17 and p[0] > 0.99 and p[-1] == pytest.approx(0.5)
    assert curve_auc([0, 1], [1, 1]) == 1.0
    # batched over images = one by one; max_fraction covers only the start of the curve
    images, maps = torch.ones(2, 1, 16, 16), np.stack([good, bad])
    batched = deletion_aucs(model, images, maps, 1, steps=8)
    assert batched.shape == (2,) and batched[0] == pytest.approx(deletion_auc(model, image, good, 1, steps=8))
    f, p = perturbation_curve(model, image, good, 1, steps=4, max_fraction=1 / 16, baseline="mean")
    assert f[-1] == pytest.approx(1 / 16) and p[-1] == pytest.approx(0.5)  # the whole patch is gone at 1/16
    vol = torch.ones(1, 6, 6, 6)
    f, p = perturbation_curve(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(216, 2)), vol,
                              np.random.rand(6, 6, 6), 0, steps=4, baseline="blur")  # 3D
    assert len(p) == 5 and np.isfinite(p).all()


def test_impute_fills_removed_pixels_from_their_neighbours():
    from meddx.explain.faithfulness import impute

    x = torch.zeros(1, 1, 12, 12)
    x[..., :, 6:] = 2.0  # left half 0, right half 2
    removed = torch.zeros(1, 1, 12, 12, dtype=torch.bool)
    removed[..., 5:7, 1:3] = True  # a hole inside the left half
    removed[..., 5:7, 9:11] = True  # and one inside the right half
    out = impute(x, removed)
    assert torch.equal(out[~removed.expand_as(out)], x[~removed.expand_as(x)])  # kept pixels untouched
    assert out[..., 5:7, 1:3].abs().max() < 0.05 and (out[..., 5:7, 9:11] - 2).abs().max() < 0.05
    everything = torch.ones_like(removed)
    assert torch.equal(impute(x, everything), torch.zeros_like(x))  # nothing kept: the training mean
    vol = torch.full((1, 2, 6, 6, 6), 3.0)
    hole = torch.zeros(1, 1, 6, 6, 6, dtype=torch.bool)
    hole[..., 2:4, 2:4, 2:4] = True
    assert torch.allclose(impute(vol, hole), vol)  # 3D, two channels
    with pytest.raises(MeddxError, match="baseline"):
        deletion_auc(PatchModel(), torch.ones(1, 16, 16), np.zeros((16, 16)), 1, baseline="nope")


# --------------------------------------------------------------------------- CLI and report


def _fake_run(path, spatial=(32, 32), model="resnet18_slim", classes=("no nodule", "nodule")):
    """A run folder with an untrained checkpoint (explanations need weights, not accuracy)."""
    dims = len(spatial)
    path.mkdir(parents=True)
    cfg = TrainConfig(data="phantom", model=model, size=spatial[0])
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    torch.manual_seed(0)
    net = create_model(model, 1, len(classes), spatial[0], dims)
    meta = {"format": 2, "model": model, "task": "classification", "kind": "binary-class",
            "classes": list(classes), "num_outputs": len(classes), "in_channels": 1, "input_size": spatial[0],
            "image_shape": list(spatial), "spatial_dims": dims,
            "normalization": Normalization(1 / 255, [0.4], [0.25]).to_dict(), "modality": "ct",
            "dataset": "phantom", "epoch": 0, "monitor_value": 0.5, "input_dtype": "uint8"}
    save_checkpoint(path / "best.safetensors", net, meta)
    return path


def _png(path, size=32, seed=0):
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size), dtype=np.uint8)).save(path)
    return path


def test_cli_explain_writes_pngs_json_and_gallery(tmp_path):
    run = _fake_run(tmp_path / "run")
    a, b = _png(tmp_path / "a.png"), _png(tmp_path / "b.png", seed=1)
    r = runner.invoke(app, ["explain", str(run), str(a), str(b), "--target", "nodule", "--save-maps"])
    assert r.exit_code == 0, r.output
    out = run / "explanations"
    for name in ("a.gradcam.png", "b.gradcam.png", "gallery.html", "explanations.json", "maps.npz"):
        assert (out / name).is_file(), name
    assert (out / "a.gradcam.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "explanations.json").read_text())
    assert rec["method"] == "gradcam" and len(rec["items"]) == 2
    assert rec["layer"] == get_model_spec("resnet18_slim").target_layer
    item = rec["items"][0]
    assert item["target"] == "nodule" and item["predicted"] in ("no nodule", "nodule")
    assert item["map"]["shape"] == [32, 32] and 0 <= item["map"]["min"] <= item["map"]["max"] <= 1
    assert "data:image/png;base64," in (out / "gallery.html").read_text()
    r = runner.invoke(app, ["explain", str(run), str(a), "--method", "saliency", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0 and (tmp_path / "o" / "a.saliency.png").is_file()


def test_cli_explain_volume_writes_a_strip(tmp_path):
    run = _fake_run(tmp_path / "run3d", spatial=(10, 10, 10))
    vol = tmp_path / "vol.npy"
    np.save(vol, np.random.default_rng(0).integers(0, 255, (1, 10, 10, 10)).astype(np.uint8))  # (C, D, H, W)
    r = runner.invoke(app, ["explain", str(run), str(vol), "--method", "gradcam++"])
    assert r.exit_code == 0, r.output
    assert (run / "explanations" / "vol.gradcam++.png").is_file()
    rec = json.loads((run / "explanations" / "explanations.json").read_text())
    assert rec["items"][0]["map"]["shape"] == [10, 10, 10]


@pytest.mark.parametrize("args,message", [
    (["--method", "magic"], "unknown explanation method 'magic'"),
    (["--target", "tumour"], "unknown target class 'tumour'"),
    (["--target", "7"], "target class 7 is out of range"),
])
def test_cli_explain_bad_options(tmp_path, args, message):
    run = _fake_run(tmp_path / "run")
    r = runner.invoke(app, ["explain", str(run), str(_png(tmp_path / "a.png")), *args])
    assert r.exit_code == 2
    line = r.output.strip()
    assert line.startswith("error: ") and message in line and "\n" not in line


def test_cli_explain_wrong_channels(tmp_path):
    run = _fake_run(tmp_path / "run")
    p = tmp_path / "x.npy"
    np.save(p, np.zeros((2, 32, 32), np.float32))
    r = runner.invoke(app, ["explain", str(run), str(p)])
    assert r.exit_code == 2 and "channels" in r.output and str(p) in r.output


def _context(model, model_name, n=40, k=3, size=28, seed=0):
    from meddx.data import DataBundle, Split

    rng = np.random.default_rng(seed)
    imgs = torch.from_numpy(rng.integers(0, 255, (n, 1, size, size), dtype=np.uint8))
    labels = torch.arange(n) % k
    split = Split(imgs, labels)
    data = DataBundle("fake", "multi-class", [f"c{i}" for i in range(k)], split, split, split)
    y_score = rng.dirichlet(np.ones(k), n).astype(np.float32)
    meta = {"model": model_name, "kind": "multi-class",
            "normalization": Normalization(1 / 255, [0.5], [0.25]).to_dict()}
    return {"model": model, "meta": meta, "split": "test", "data": data, "y_true": labels.numpy(),
            "y_score": y_score}


def test_report_section_shows_maps_and_never_breaks():
    from meddx.explain.report_section import heatmap_section, pick_examples
    from meddx.tasks.classification import ClassificationTask

    model = create_model("resnet18_slim", 1, 3, 28)
    section = heatmap_section(_context(model, "resnet18_slim"))
    # the classification task puts this section into its report
    sections = ClassificationTask("multi-class", 3).report_sections(_context(model, "resnet18_slim"))
    assert [s.html for s in sections] == [section.html]
    assert "data:image/png;base64," in section.html and "c2" in section.html
    assert f"<code>{get_model_spec('resnet18_slim').target_layer}</code>" in section.html
    assert hook_count(model) == 0
    broken = heatmap_section(_context(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3)),
                                      "resnet18_slim"))
    assert "skipped" in broken.html and "data:image" not in broken.html
    y = np.array([0, 0, 1, 1])
    s = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4]])
    picks = {(c, kind): (idx, t) for c, kind, idx, t in pick_examples(y, s, multilabel=False)}
    assert picks[(0, "correct")] == ([0], [0]) and picks[(0, "wrong")] == ([1], [1])
    assert picks[(1, "correct")] == ([2], [1]) and picks[(1, "wrong")] == ([3], [0])
