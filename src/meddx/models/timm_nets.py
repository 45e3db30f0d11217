"""timm classifiers (timm adapts the stem to any channel count itself)."""

from __future__ import annotations

import torch.nn as nn


def build_efficientnet_b0(in_channels: int, num_classes: int, input_size: int = 28,
                          spatial_dims: int = 2) -> nn.Module:
    import timm

    m = timm.create_model("efficientnet_b0", pretrained=False, in_chans=in_channels, num_classes=num_classes)
    if input_size <= 64:  # keep more resolution for small inputs: stem stride 1 (total stride 16)
        m.conv_stem.stride = (1, 1)
    return m
