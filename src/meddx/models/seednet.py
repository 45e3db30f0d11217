"""The classic small CNN of the seed: conv-relu-conv-relu-maxpool-dropout-fc-relu-dropout-fc.

Written with plain torch layers (it is six lines of nn.Sequential; no library ships this exact net).
The first fully connected layer is sized to the input, as in the original Keras MNIST example.
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn


def build(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2) -> nn.Module:
    conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
    pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
    side = (input_size - 4) // 2
    flat = 64 * side**spatial_dims
    features = nn.Sequential(OrderedDict(
        conv1=conv(in_channels, 32, 3), relu1=nn.ReLU(inplace=True),
        conv2=conv(32, 64, 3), relu2=nn.ReLU(inplace=True)))
    classifier = nn.Sequential(OrderedDict(
        pool=pool(2), drop1=nn.Dropout(0.25), flatten=nn.Flatten(), fc1=nn.Linear(flat, 128),
        relu=nn.ReLU(inplace=True), drop2=nn.Dropout(0.5), fc2=nn.Linear(128, num_classes)))
    return nn.Sequential(OrderedDict(features=features, classifier=classifier))
