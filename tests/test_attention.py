"""Attention models (registry rows, 2D/3D, transfer-learning heads), LeNet-5, and explanation method "attention"."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meddx.cli import app
from meddx.errors import MeddxError
from meddx.explain.attention import rollout
from meddx.explain.methods import explain, get_method, hook_count
from meddx.models import create_model, get_model_spec, list_models, load_pretrained
from meddx.models.registry import get_submodule
from tests.conftest import require_module

require_module("pytorch_grad_cam")
require_module("captum")

ATTENTION_CLASSIFIERS = ["se_resnet18_slim", "cbam_resnet18_slim", "ag_resnet18_slim", "mil_resnet18_slim", "vit_slim"]
# SE weighs channels: no spatial map
WITH_MAPS = ["cbam_resnet18_slim", "ag_resnet18_slim", "mil_resnet18_slim", "vit_slim"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_registry_has_the_attention_models_and_lenet():
    assert set(ATTENTION_CLASSIFIERS + ["lenet5"]) <= set(list_models(kind="classifier"))
    assert "attention_unet" in list_models(kind="segmenter")
    for name in ATTENTION_CLASSIFIERS + ["lenet5"]:
        assert get_model_spec(name).target_layer and get_model_spec(name).head


@pytest.mark.parametrize("name", [n for n in ATTENTION_CLASSIFIERS + ["lenet5"] if 3 in get_model_spec(n).spatial_dims])
def test_3d_attention_models(name):
    m = create_model(name, 2, 3, 16, spatial_dims=3).eval()
    with torch.no_grad():
        assert m(_x(2, 2, 16, 16, 16)).shape == (2, 3)
    assert get_submodule(m, get_model_spec(name).target_layer) is not None


def test_2d_only_models_refuse_3d():
    for name in ("cbam_resnet18_slim", "vit_slim"):
        with pytest.raises(MeddxError, match="supports 2D inputs, not 3D"):
            create_model(name, 1, 2, 16, spatial_dims=3)


@pytest.mark.parametrize("name", ATTENTION_CLASSIFIERS + ["lenet5"])
def test_transfer_learning_replaces_only_the_head(name, tmp_path):
    from safetensors.torch import save_file

    src = create_model(name, 3, 9, 32)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    dst = create_model(name, 1, 2, 32)
    head = get_model_spec(name).head
    info = load_pretrained(dst, tmp_path / "w.safetensors", head)
    assert info["reinitialised_head"] == [f"{head}.weight", f"{head}.bias"]
    shared = [k for k in src.state_dict() if not k.startswith(head + ".") and src.state_dict()[k].ndim < 3]
    assert shared and all(torch.equal(dst.state_dict()[k], src.state_dict()[k]) for k in shared)
    assert dst(_x(1, 1, 32, 32)).shape == (1, 2)


def test_lenet5_is_sized_to_the_input():
    m = create_model("lenet5", 1, 4, 28)
    widths = [mod.out_channels for mod in m.features if isinstance(mod, torch.nn.Conv2d)]
    fcs = [mod for mod in m.classifier if isinstance(mod, torch.nn.Linear)]
    assert widths == [6, 16] and [f.out_features for f in fcs] == [120, 84, 4]
    assert fcs[0].in_features == 16 * 5 * 5  # the classic 5x5 map at 28 px (conv1 padded by 2)
    for size in (16, 48, 64):
        assert create_model("lenet5", 1, 2, size)(_x(1, 1, size, size)).shape == (1, 2)
    with pytest.raises(MeddxError, match="at least 12 px"):
        create_model("lenet5", 1, 2, 8)


def test_attention_unet_segments_2d_and_3d():
    m = create_model("attention_unet", 1, 3, 32).eval()
    with torch.no_grad():
        assert m(_x(1, 1, 32, 32)).shape == (1, 3, 32, 32)
        assert create_model("attention_unet", 1, 2, 16, 3)(_x(1, 1, 16, 16, 16)).shape == (1, 2, 16, 16, 16)


# --------------------------------------------------------------------------- method "attention"


def _check(maps, shape):
    assert isinstance(maps, np.ndarray) and maps.dtype == np.float32 and maps.shape == shape
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0


@pytest.mark.parametrize("name", WITH_MAPS)
def test_attention_maps_shape_range_and_input_dependence(name):
    torch.manual_seed(0)
    model = create_model(name, 1, 2, 28)
    fused = [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")]
    a = explain(model, _x(2, 1, 28, 28), method="attention")
    _check(a, (2, 28, 28))
    assert not np.allclose(a[0], a[1], atol=1e-3)  # the map follows the image
    b = explain(model, _x(2, 1, 28, 28, seed=1), method="attention")
    assert not np.allclose(a, b, atol=1e-3)
    assert hook_count(model) == 0 and model.training
    assert [m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")] == fused  # timm kernel restored
    # class-agnostic: the target does not change the map, but it is still range-checked
    np.testing.assert_allclose(explain(model, _x(2, 1, 28, 28), target=0, method="attention"),
                               explain(model, _x(2, 1, 28, 28), target=1, method="attention"))
    with pytest.raises(MeddxError, match="out of range"):
        explain(model, _x(1, 1, 28, 28), target=4, method="attention")


def test_attention_maps_3d_and_options():
    torch.manual_seed(0)
    model = create_model("ag_resnet18_slim", 1, 2, 16, spatial_dims=3)
    _check(explain(model, _x(1, 1, 16, 16, 16), method="attention"), (1, 16, 16, 16))
    assert get_method("attention").supports_3d and get_method("attention").class_agnostic
    x = _x(1, 1, 28, 28)
    ag = create_model("ag_resnet18_slim", 1, 2, 28)
    default = explain(ag, x, method="attention")
    np.testing.assert_allclose(default, explain(ag, x, method="attention", gates="last"))  # the coarsest gate
    assert not np.allclose(default, explain(ag, x, method="attention", gates="all"))
    product = explain(ag, x, method="attention", gates="product")
    assert not np.allclose(product, explain(ag, x, method="attention", gates="all")) and product.min() >= 0
    with pytest.raises(MeddxError, match="gates must be"):
        explain(ag, x, method="attention", gates="middle")
    vit = create_model("vit_slim", 1, 2, 28)
    assert not np.allclose(explain(vit, x, method="attention"),
                           explain(vit, x, method="attention", vit_attention="last"))


def test_rollout_follows_attention_through_the_layers():
    # 1 image, 1 head, 4 tokens (CLS + 3): layer 1 sends every token to token 2; layer 2 sends CLS to token 1
    a1 = torch.zeros(1, 1, 4, 4)
    a1[..., 2] = 1.0
    a2 = torch.eye(4).view(1, 1, 4, 4).clone()
    a2[0, 0, 0] = torch.tensor([0.0, 1.0, 0.0, 0.0])
    last = rollout([a1, a2], last_only=True)[0]
    assert int(last.argmax()) == 1
    rolled = rollout([a1, a2])[0]
    assert torch.allclose(rolled.sum(), torch.tensor(1.0)) and rolled[2] > rolled[3] and rolled[1] > rolled[3]


class Boom(torch.nn.Module):
    def forward(self, x):
        raise RuntimeError("boom")


@pytest.mark.parametrize("name", WITH_MAPS)
def test_hooks_released_after_an_exception(name):
    model = create_model(name, 1, 2, 16)
    head = get_model_spec(name).head
    setattr(model, head, torch.nn.Sequential(get_submodule(model, head), Boom()))  # fails after the attention ran
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, _x(1, 1, 16, 16), method="attention")
    assert hook_count(model) == 0
    assert all(m.fused_attn for m in model.modules() if hasattr(m, "fused_attn"))


@pytest.mark.parametrize("name", ["resnet18_slim", "se_resnet18_slim", "lenet5"])
def test_model_without_attention_gives_one_line_error(name):
    model = create_model(name, 1, 2, 28)
    with pytest.raises(MeddxError, match="attention") as info:
        explain(model, _x(1, 1, 28, 28), method="attention")
    assert "\n" not in str(info.value) and hook_count(model) == 0


def test_cli_explain_attention_writes_overlays_and_gallery(tmp_path):
    from tests.test_explain import _fake_run, _png

    run = _fake_run(tmp_path / "run", model="ag_resnet18_slim")
    r = CliRunner().invoke(app, ["explain", str(run), str(_png(tmp_path / "a.png")), "--method", "attention"])
    assert r.exit_code == 0, r.output
    assert "Attention (the same for every class)" in r.output  # attention ignores the target class: not "for X"
    out = run / "explanations"
    assert (out / "a.attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rec = json.loads((out / "explanations.json").read_text())
    assert rec["method"] == "attention" and rec["layer"] is None and rec["items"][0]["map"]["shape"] == [32, 32]
    assert len(rec["model_files"]) == len(set(rec["model_files"])) >= 1  # scoring and maps share the weights
    assert "Attention" in (out / "gallery.html").read_text()
    plain = _fake_run(tmp_path / "plain")
    r = CliRunner().invoke(app, ["explain", str(plain), str(_png(tmp_path / "b.png")), "--method", "attention"])
    assert r.exit_code == 2 and r.output.startswith("error: ") and "no attention" in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_report_section_adds_the_networks_own_attention():
    from meddx.explain.report_section import heatmap_section
    from tests.test_explain import _context

    model = create_model("ag_resnet18_slim", 1, 3, 28)
    html = heatmap_section(_context(model, "ag_resnet18_slim")).html
    assert "own attention" in html and html.count("<table") == 2 and "skipped" not in html
    assert hook_count(model) == 0
    plain = heatmap_section(_context(create_model("resnet18_slim", 1, 3, 28), "resnet18_slim")).html
    assert "own attention" not in plain and plain.count("<table") == 1


def test_mil_instances_are_local_and_the_weights_sum_to_one():
    """The attention-MIL model's instances see a bounded neighbourhood (so its attention can only pick a place by
    what is there), and its attention weights form a distribution over locations, one per head."""
    from meddx.explain.attention import attention_modules, recorded_attention

    model = create_model("mil_resnet18_slim", 1, 2, 64).eval()
    x = _x(1, 1, 64, 64).requires_grad_(True)
    feats = {}
    handle = model.instance.register_forward_hook(lambda _m, _i, out: feats.__setitem__("h", out))
    try:
        model(x)
    finally:
        handle.remove()
    assert feats["h"].shape[2:] == (32, 32)  # one instance per 2 x 2 pixels
    feats["h"][0, :, 0, 0].sum().backward()  # the top-left instance
    reach = x.grad[0, 0].abs() > 0
    rows, cols = np.nonzero(reach.numpy())
    assert reach[0, 0] and rows.max() < 32 and cols.max() < 32  # local: far pixels cannot move it
    kind, modules = attention_modules(model)
    with recorded_attention(kind, modules) as maps, torch.no_grad():
        model(_x(3, 1, 64, 64, seed=1))
    from meddx.models.attention_mil import HEADS

    assert maps[0].shape == (3, HEADS, 32, 32)
    torch.testing.assert_close(maps[0].flatten(2).sum(2), torch.ones(3, HEADS))  # a distribution per head
    assert not torch.allclose(maps[0][:, 0], maps[0][:, 1])  # the heads are not copies of one another
