"""The model registry: an explicit table of names -> builders (no import side effects).

Each entry says where its builder lives (imported lazily, so ``meddx models`` starts fast), which
spatial ranks it supports, which layer CAM explanations should hook by default, and which module is
the classification head that transfer learning replaces. Adding a model is one small builder file
plus one row here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

import torch.nn as nn

from meddx.errors import MeddxError


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: str  # "module:function" under meddx.models: fn(in_channels, num_classes, input_size, spatial_dims)
    summary: str
    source: str  # the library the network comes from
    target_layer: str  # default layer for CAM methods (dotted module path)
    head: str  # dotted path of the classifier module replaced by transfer learning
    spatial_dims: tuple[int, ...] = (2,)
    kind: str = "classifier"  # classifier | segmenter | detector | registration (only classifiers have a head)


_SPECS = (
    ModelSpec("seednet", "seednet:build",
              "classic two-conv CNN (conv-relu-conv-relu-maxpool-dropout-fc-relu-dropout-fc)", "torch.nn",
              "features", "classifier.fc2", (2, 3)),
    ModelSpec("resnet18_slim", "monai_resnet:build_resnet18_slim",
              "ResNet-18 layout at 1/4 width, 3x3 stride-1 stem (fast default for 28-64 px, 2D and 3D)",
              "MONAI", "layer3", "fc", (2, 3)),  # layer3 (12x12 at 48 px) beat layer4 in benchmarks/explain.py
    ModelSpec("resnet18", "torchvision_nets:build_resnet18", "ResNet-18 (small-input stem below 64 px, as MedMNIST)",
              "torchvision", "layer4", "fc"),
    ModelSpec("resnet50", "torchvision_nets:build_resnet50", "ResNet-50 (small-input stem below 64 px, as MedMNIST)",
              "torchvision", "layer4", "fc"),
    ModelSpec("mobilenet_v3_small", "torchvision_nets:build_mobilenet_v3_small", "MobileNetV3-Small",
              "torchvision", "features", "classifier.3"),
    ModelSpec("shufflenet_v2", "torchvision_nets:build_shufflenet_v2", "ShuffleNetV2 x1.0", "torchvision",
              "conv5", "fc"),
    ModelSpec("efficientnet_b0", "timm_nets:build_efficientnet_b0", "EfficientNet-B0", "timm", "conv_head",
              "classifier"),
    ModelSpec("lenet5", "lenet:build", "LeNet-5: conv-pool-conv-pool-fc-fc-fc, 6/16/120/84 (ReLU, max pool)",
              "torch.nn", "features", "classifier.fc3", (2, 3)),
    ModelSpec("se_resnet18_slim", "attention_nets:build_se_resnet18_slim",
              "resnet18_slim layout + squeeze-excitation (channel attention) in every block", "MONAI", "layer3",
              "fc", (2, 3)),
    ModelSpec("cbam_resnet18_slim", "attention_nets:build_cbam_resnet18_slim",
              "resnet18_slim layout + CBAM (channel + spatial attention) in every block; method attention",
              "timm", "layer3", "fc"),
    ModelSpec("ag_resnet18_slim", "attention_nets:build_ag_resnet18_slim",
              "resnet18_slim + attention gates (Attention U-Net's) on layer2/3 driven by layer4; method attention",
              "meddx", "layer3", "fc", (2, 3)),
    ModelSpec("mil_resnet18_slim", "attention_mil:build_mil_resnet18_slim",
              "resnet18_slim to layer2 (local instances), a per-location MLP and gated attention-MIL pooling "
              "with 4 heads; method attention", "meddx", "layer2", "fc", (2, 3)),
    ModelSpec("vit_slim", "attention_nets:build_vit_slim",
              "vision transformer, 4 px patches below 64 px, 6 blocks x 3 heads, width 96; method attention",
              "timm", "patch_embed.proj", "head"),
    ModelSpec("unet", "monai_seg:build_unet", "U-Net, residual units, 16-128 channels (segmentation, 2D/3D)",
              "MONAI", "", "", (2, 3), "segmenter"),
    ModelSpec("segresnet", "monai_seg:build_segresnet", "SegResNet, 8 initial filters (segmentation, 2D/3D)",
              "MONAI", "", "", (2, 3), "segmenter"),
    ModelSpec("attention_unet", "attention_nets:build_attention_unet",
              "Attention U-Net, channels 16-128 (segmentation, 2D/3D)", "MONAI", "", "", (2, 3), "segmenter"),
    ModelSpec("centernet_slim", "detectors:build_centernet_slim",
              "CenterNet heat-map detector, narrow ResNet encoder + FPN (2D stride 4, 3D stride 2)", "torch.nn",
              "", "", (2, 3), "detector"),
    ModelSpec("recon_unet", "recon_nets:build_recon_unet", "residual MONAI U-Net 16-128 ch (CT denoising / FBP "
              "post-processing, reconstruction)", "MONAI", "", "", (2,), "reconstructor"),
    ModelSpec("recon_unet_nl", "recon_nets:build_recon_unet_nl", "recon_unet given the input's measured noise "
              "level as a channel (low-dose CT over many doses, reconstruction)", "MONAI", "", "", (2,),
              "reconstructor"),
    ModelSpec("dncnn", "recon_nets:build_dncnn", "DnCNN-style residual CNN, 10 x 48 ch (reconstruction)",
              "torch.nn", "", "", (2,), "reconstructor"),
    ModelSpec("recon_unet_dc", "recon_nets:build_recon_unet_dc", "2 cascades of U-Net + k-space data consistency "
              "(undersampled MRI, reconstruction)", "MONAI", "", "", (2,), "reconstructor"),
    ModelSpec("regunet_svf", "registration_nets:build_regunet",
              "U-Net 16-64 predicting a velocity field, scaling-and-squaring (registration, 2D/3D)", "MONAI",
              "", "", (2, 3), "registration"),
    ModelSpec("voxelmorph", "registration_nets:build_voxelmorph",
              "VoxelMorph U-Net + scaling-and-squaring (diffeomorphic VoxelMorph; registration, 2D/3D)", "MONAI",
              "", "", (2, 3), "registration"),
    ModelSpec("localnet", "registration_nets:build_localnet", "LocalNet displacement field (registration, 2D/3D)",
              "MONAI", "", "", (2, 3), "registration"),
)
REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}
DEFAULT_MODEL = "resnet18_slim"


def list_models(kind: str | None = None) -> list[str]:
    """Names of all registered models (only those of ``kind``: classifier, segmenter, detector, if given)."""
    return [name for name, spec in REGISTRY.items() if kind is None or spec.kind == kind]


def get_model_spec(name: str) -> ModelSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise MeddxError(f"unknown model {name!r}; available: {', '.join(REGISTRY)}") from None


def create_model(name: str, in_channels: int, num_classes: int, input_size: int = 28,
                 spatial_dims: int = 2) -> nn.Module:
    """Build a registered model for ``in_channels`` inputs of ``input_size`` px and ``num_classes`` outputs."""
    spec = get_model_spec(name)
    if spatial_dims not in spec.spatial_dims:
        raise MeddxError(f"model {name!r} supports {'/'.join(f'{d}D' for d in spec.spatial_dims)} inputs, "
                         f"not {spatial_dims}D")
    if in_channels < 1 or num_classes < 1:
        raise MeddxError(f"in_channels and num_classes must be >= 1, got {in_channels} and {num_classes}")
    module_name, fn_name = spec.builder.split(":")
    builder = getattr(importlib.import_module(f"meddx.models.{module_name}"), fn_name)
    return builder(in_channels=in_channels, num_classes=num_classes, input_size=input_size,
                   spatial_dims=spatial_dims)


def get_submodule(model: nn.Module, path: str) -> nn.Module:
    """``model.get_submodule`` with a one-line error."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise MeddxError(f"model has no layer {path!r}") from None
