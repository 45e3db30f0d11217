"""Networks with attention, built from the field's libraries (MONAI, timm), sized for 28-64 px inputs.

* ``se_resnet18_slim`` / ``cbam_resnet18_slim``: the default ResNet layout (MONAI ``ResNet``, 1/4 width,
  3x3 stride-1 stem below 64 px) with an attention module after each basic block's second convolution:
  MONAI's ``ChannelSELayer`` (squeeze-excitation, Hu et al. 2018; 2D and 3D) or timm's ``CbamModule``
  (channel + spatial attention, Woo et al. 2018; timm's layers are 2D only).
* ``ag_resnet18_slim``: an attention-gated classifier (Schlemper et al. 2019, the gates of Attention U-Net):
  MONAI ``AttentionBlock`` gates weigh layer2 and layer3 features by a gating signal from layer4; the head
  sees only the attention-weighted averages of the gated features, sum(gate * f) / sum(gate), as in the
  paper's classifier (layer4 is the gating signal only, so the gates must find the evidence; 2D and 3D).
* ``vit_slim``: a small timm ``VisionTransformer`` with 4 px patches below 64 px (7x7 tokens at 28 px).
* ``attention_unet``: MONAI ``AttentionUnet`` for segmentation (2D and 3D).

``meddx.explain`` reads the attention of these networks back (method ``"attention"``): the sigmoid
coefficients of MONAI ``AttentionBlock.psi`` and timm CBAM's spatial gate, and the ViT's softmax attention.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.models.monai_resnet import SLIM_WIDTHS, slim_resnet_kwargs


@functools.cache
def _attention_block_class(attention: str) -> type:
    """MONAI's basic ResNet block with an attention module on the residual branch (as in SE-ResNet/CBAM)."""
    from monai.networks.nets.resnet import ResNetBlock

    class AttentionResNetBlock(ResNetBlock):
        def __init__(self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1,
                     downsample=None, **kwargs) -> None:
            super().__init__(in_planes, planes, spatial_dims, stride, downsample, **kwargs)
            self.attn = _attention_module(attention, spatial_dims, planes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
            out = self.attn(out)
            residual = x if self.downsample is None else self.downsample(x)
            return self.act(out + residual)

    AttentionResNetBlock.__name__ = f"{attention.upper()}ResNetBlock"
    return AttentionResNetBlock


def _attention_module(attention: str, spatial_dims: int, channels: int) -> nn.Module:
    if attention == "se":
        from monai.networks.blocks import ChannelSELayer

        return ChannelSELayer(spatial_dims, channels, r=4)
    from timm.layers.cbam import CbamModule

    return CbamModule(channels, rd_ratio=1 / 4)


def _slim_resnet(block, in_channels: int, num_classes: int, input_size: int, spatial_dims: int):
    from monai.networks.nets import ResNet

    return ResNet(block, **slim_resnet_kwargs(in_channels, num_classes, input_size, spatial_dims))


def build_se_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28,
                           spatial_dims: int = 2) -> nn.Module:
    return _slim_resnet(_attention_block_class("se"), in_channels, num_classes, input_size, spatial_dims)


def build_cbam_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28,
                             spatial_dims: int = 2) -> nn.Module:
    return _slim_resnet(_attention_block_class("cbam"), in_channels, num_classes, input_size, spatial_dims)


@functools.cache
def _attention_gated_class() -> type:
    from monai.networks.nets import ResNet
    from monai.networks.nets.attentionunet import AttentionBlock

    class AttentionGatedResNet(ResNet):
        """MONAI ResNet whose layer2/layer3 features pass attention gates driven by layer4 (gating signal)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            dims, (_, c2, c3, c4) = kwargs["spatial_dims"], SLIM_WIDTHS
            self.gate2 = AttentionBlock(dims, f_int=c2, f_g=c4, f_l=c2)
            self.gate3 = AttentionBlock(dims, f_int=c3, f_g=c4, f_l=c3)
            self.fc = nn.Linear(c2 + c3, kwargs["num_classes"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.bn1(self.conv1(x)))
            if not self.no_max_pool:
                x = self.maxpool(x)
            f2 = self.layer2(self.layer1(x))
            f3 = self.layer3(f2)
            g = self.layer4(f3)
            pooled = [self._attention_pool(gate, g, f) for gate, f in ((self.gate2, f2), (self.gate3, f3))]
            return self.fc(torch.cat(pooled, 1))

        @staticmethod
        def _attention_pool(gate: nn.Module, g: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
            """sum(psi * f) / sum(psi) over space; psi computed as MONAI's AttentionBlock.forward does, by hand
            because its forward returns only the product f * psi and the pooling needs psi itself."""
            mode = "bilinear" if f.ndim == 4 else "trilinear"
            g_up = F.interpolate(g, size=f.shape[2:], mode=mode, align_corners=False)  # as Attention U-Net's upsampling
            psi = gate.psi(gate.relu(gate.W_g(g_up) + gate.W_x(f))).flatten(2)
            return (f.flatten(2) * psi).sum(-1) / psi.sum(-1).clamp_min(1e-6)

    return AttentionGatedResNet


def build_ag_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28,
                           spatial_dims: int = 2) -> nn.Module:
    from monai.networks.nets.resnet import ResNetBlock

    return _attention_gated_class()(
        block=ResNetBlock, **slim_resnet_kwargs(in_channels, num_classes, input_size, spatial_dims))


def vit_patch_size(input_size: int) -> int:
    """4 px patches up to 64 px (7x7 tokens at 28, 12x12 at 48), else about 16 tokens per side."""
    return 4 if input_size <= 64 else max(4, input_size // 16)


def build_vit_slim(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=input_size, patch_size=vit_patch_size(input_size), in_chans=in_channels,
                             num_classes=num_classes, embed_dim=96, depth=6, num_heads=3, mlp_ratio=2.0,
                             dynamic_img_pad=True)


def build_attention_unet(in_channels: int, num_classes: int, input_size: int = 64,
                         spatial_dims: int = 2) -> nn.Module:
    """MONAI ``AttentionUnet`` (Oktay et al. 2018), channels 16-32-64-128 (three stride-2 levels)."""
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                         channels=(16, 32, 64, 128), strides=(2, 2, 2))
