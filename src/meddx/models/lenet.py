"""LeNet-5 (LeCun et al. 1998): conv-pool-conv-pool-fc-fc-fc with the classic 6/16/120/84 widths.

Written by hand with plain torch layers: no library (torchvision, timm, MONAI) ships LeNet-5. Modern
rendition: ReLU and max pooling instead of the original scaled tanh and trainable subsampling. Sized to
the input as the original was to 32 px: the first convolution pads by 2 (so 28 px MNIST-size inputs keep
the classic 5x5 map before the fully connected layers), and the first fully connected layer takes
whatever the two pools leave. 2D and 3D.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn

from meddx.errors import MeddxError


def feature_side(input_size: int) -> int:
    """Side of the map after conv(5, pad 2)-pool(2)-conv(5)-pool(2): 5 at 28 px, 10 at 48 px."""
    return ((input_size // 2) - 4) // 2


def build(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2) -> nn.Module:
    side = feature_side(input_size)
    if side < 1:
        raise MeddxError(f"LeNet-5 needs inputs of at least 12 px, got {input_size}")
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    features = nn.Sequential(OrderedDict(
        conv1=conv(in_channels, 6, 5, padding=2), relu1=nn.ReLU(inplace=True), pool1=pool(2),
        conv2=conv(6, 16, 5), relu2=nn.ReLU(inplace=True)))
    classifier = nn.Sequential(OrderedDict(
        pool2=pool(2), flatten=nn.Flatten(), fc1=nn.Linear(16 * side**spatial_dims, 120), relu3=nn.ReLU(inplace=True),
        fc2=nn.Linear(120, 84), relu4=nn.ReLU(inplace=True), fc3=nn.Linear(84, num_classes)))
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))
