"""MONAI's ResNet at reduced width: the fast default network for small 2D and 3D images."""

from __future__ import annotations

import torch.nn as nn

SLIM_WIDTHS = (16, 32, 64, 128)  # the default layout's stage widths: ResNet-18's at 1/4


def slim_resnet_kwargs(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2,
                       width: int = SLIM_WIDTHS[0]) -> dict:
    """MONAI ``ResNet`` keyword arguments of the slim layout that the default model and its attention variants
    share: 2-2-2-2 blocks of widths w, 2w, 4w, 8w; up to 64 px a 3x3 stride-1 stem without max pooling (the
    ImageNet 7x7 stride-2 stem + max pool would leave a 28 px image 7 px wide after the stem)."""
    small = input_size <= 64
    return {"layers": [2, 2, 2, 2], "block_inplanes": [width, 2 * width, 4 * width, 8 * width],
            "spatial_dims": spatial_dims, "n_input_channels": in_channels, "conv1_t_size": 3 if small else 7,
            "conv1_t_stride": 1 if small else 2, "no_max_pool": small, "num_classes": num_classes}


def build_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2,
                        width: int = SLIM_WIDTHS[0]) -> nn.Module:
    from monai.networks.nets import ResNet

    return ResNet("basic", **slim_resnet_kwargs(in_channels, num_classes, input_size, spatial_dims, width))
