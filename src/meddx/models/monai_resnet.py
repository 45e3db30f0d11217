"""MONAI's ResNet at reduced width: the fast default network for small 2D and 3D images."""

from __future__ import annotations

import torch.nn as nn


def build_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2,
                        width: int = 16) -> nn.Module:
    from monai.networks.nets import ResNet

    small = input_size <= 64
    return ResNet("basic", [2, 2, 2, 2], [width, 2 * width, 4 * width, 8 * width], spatial_dims=spatial_dims,
                  n_input_channels=in_channels, conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2,
                  no_max_pool=small, num_classes=num_classes)
