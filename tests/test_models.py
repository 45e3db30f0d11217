"""Model registry and transfer learning."""

from __future__ import annotations

import pytest
import torch

from meddx.errors import MeddxError
from meddx.models import create_model, get_model_spec, list_models, load_pretrained
from meddx.models.registry import get_submodule


def test_registry_lists_required_models():
    assert {
        "seednet",
        "resnet18",
        "resnet50",
        "mobilenet_v3_small",
        "shufflenet_v2",
        "efficientnet_b0",
        "resnet18_slim",
    } <= set(list_models())


@pytest.mark.parametrize("name,channels,classes", [  # one resnet50 shape is enough (slow to build)
    (n, c, k) for n in list_models(kind="classifier") for c, k in ((1, 2), (3, 5)) if not (n == "resnet50" and c == 3)])
def test_every_model_builds_and_declares_layers(name, channels, classes):
    m = create_model(name, channels, classes, 28).eval()
    with torch.no_grad():
        out = m(torch.randn(2, channels, 28, 28))
    assert out.shape == (2, classes)
    spec = get_model_spec(name)
    get_submodule(m, spec.target_layer)
    head = get_submodule(m, spec.head)
    assert isinstance(head, torch.nn.Linear) and head.out_features == classes


def test_batchnorm_statistics_follow_short_schedules():
    # running statistics must track the data within a short training run (torchvision's MobileNetV3 uses
    # momentum 0.01, which left its eval-mode outputs at one class after a few hundred steps)
    for name in list_models(kind="classifier"):
        m = create_model(name, 1, 2, 28)
        momenta = {x.momentum for x in m.modules() if isinstance(x, torch.nn.modules.batchnorm._BatchNorm)}
        assert momenta <= {0.1, None}, (name, momenta)


def test_seednet_is_sized_to_input_and_3d_models():
    assert create_model("seednet", 1, 2, 64)(torch.randn(1, 1, 64, 64)).shape == (1, 2)
    assert create_model("resnet18_slim", 1, 3, 28, spatial_dims=3)(torch.randn(1, 1, 28, 28, 28)).shape == (
        1,
        3,
    )
    with pytest.raises(MeddxError, match="supports 2D inputs, not 3D"):
        create_model("resnet18", 1, 2, 28, spatial_dims=3)


def test_unknown_model():
    with pytest.raises(MeddxError, match="unknown model 'vgg'"):
        create_model("vgg", 1, 2)


def test_pretrained_replaces_head_and_adapts_channels(tmp_path):
    from safetensors.torch import save_file

    src = create_model("resnet18_slim", 3, 9, 28)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(src.state_dict(), tmp_path / "w.pt")
    for f in ("w.safetensors", "w.pt"):
        dst = create_model("resnet18_slim", 1, 2, 28)
        info = load_pretrained(dst, tmp_path / f, "fc")
        assert info["reinitialised_head"] == ["fc.weight", "fc.bias"]
        key = "layer1.0.conv1.weight"
        assert torch.equal(dst.state_dict()[key], src.state_dict()[key])
        assert torch.allclose(
            dst.state_dict()["conv1.weight"], src.state_dict()["conv1.weight"].sum(1, keepdim=True)
        )


def test_pretrained_mismatch_is_clear(tmp_path):
    from safetensors.torch import save_file

    save_file(create_model("seednet", 1, 2, 28).state_dict(), str(tmp_path / "s.safetensors"))
    with pytest.raises(MeddxError, match=r"weights have no 'conv1.weight'"):
        load_pretrained(create_model("resnet18_slim", 1, 2, 28), tmp_path / "s.safetensors", "fc")
    (tmp_path / "evil.pt").write_bytes(b"not a pickle")
    with pytest.raises(MeddxError, match="not a loadable state dict"):
        load_pretrained(create_model("seednet", 1, 2, 28), tmp_path / "evil.pt", "classifier.fc2")


@pytest.mark.parametrize("name", [n for n in list_models("classifier") if 2 in get_model_spec(n).spatial_dims])
def test_channels_last_copy_gives_the_same_outputs(name):
    # the CPU runtime scores 2D images through a channels-last copy (meddx.runtimes.torch_runtime): a network
    # that reshapes activations with .view or assumes contiguous strides would fail or differ here
    import copy

    torch.manual_seed(0)
    size = 32 if name.startswith("vit") else 28
    model = create_model(name, 1, 3, size).eval()
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(4, 1, size, size)
    with torch.no_grad():
        want = model(x)
        got = fast(x.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)
