"""torchvision classifiers adapted to any channel count and to small (28-64 px) inputs.

Below 64 px the stem's stride-2 convolution and max-pool would leave a 1x1 map after two stages, so,
as in the MedMNIST benchmark, the first convolution becomes 3x3 stride 1 and the max-pool is dropped.
"""

from __future__ import annotations

import torch.nn as nn

SMALL = 64


def _conv_like(old: nn.Conv2d, in_channels: int, kernel: int | None = None, stride: int | None = None) -> nn.Conv2d:
    k = kernel or old.kernel_size[0]
    return nn.Conv2d(in_channels, old.out_channels, k, stride=stride or old.stride[0], padding=k // 2,
                     bias=old.bias is not None)


def _resnet(fn, in_channels: int, num_classes: int, input_size: int) -> nn.Module:
    m = fn(weights=None, num_classes=num_classes)
    small = input_size <= SMALL
    m.conv1 = _conv_like(m.conv1, in_channels, 3 if small else 7, 1 if small else 2)
    if small:
        m.maxpool = nn.Identity()
    return m


def build_resnet18(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2) -> nn.Module:
    from torchvision.models import resnet18

    return _resnet(resnet18, in_channels, num_classes, input_size)


def build_resnet50(in_channels: int, num_classes: int, input_size: int = 28, spatial_dims: int = 2) -> nn.Module:
    from torchvision.models import resnet50

    return _resnet(resnet50, in_channels, num_classes, input_size)


def build_mobilenet_v3_small(in_channels: int, num_classes: int, input_size: int = 28,
                             spatial_dims: int = 2) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    m = mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = m.features[0][0]
    m.features[0][0] = _conv_like(first, in_channels, stride=1 if input_size <= SMALL else 2)
    # torchvision sets BatchNorm momentum 0.01 for its long ImageNet schedule; after a few hundred steps the
    # running statistics are still near their initial values and eval-mode outputs collapse to one class
    # (measured: majority-class ACC on PneumoniaMNIST and BreastMNIST). PyTorch's default 0.1, as every other
    # registered model uses.
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.momentum = 0.1
    return m


def build_shufflenet_v2(in_channels: int, num_classes: int, input_size: int = 28,
                        spatial_dims: int = 2) -> nn.Module:
    from torchvision.models import shufflenet_v2_x1_0

    m = shufflenet_v2_x1_0(weights=None, num_classes=num_classes)
    small = input_size <= SMALL
    m.conv1[0] = _conv_like(m.conv1[0], in_channels, stride=1 if small else 2)
    if small:
        m.maxpool = nn.Identity()
    return m
