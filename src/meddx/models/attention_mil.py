"""``mil_resnet18_slim``: the default ResNet whose global average pooling is replaced by attention pooling.

Gated attention multiple-instance pooling (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple instance
learning"): every location of the feature map is an instance; the network scores each one,
``a = softmax_over_space(w . (tanh(V h) * sigmoid(U h)))``, and the classifier sees only ``sum(a * h)``. A finding
that is local (a nodule, a tumour) can only reach the classifier through the locations the attention picks, so
the attention map is the network's own answer to "where did it look" (method ``attention`` reads it back).

The instances sit on layer3's grid (stride 4: 12x12 at 48 px, 7x7 at 28 px), each described by its layer3 feature
and the layer4 feature above it (upsampled): layer4 alone is 6x6 at 48 px, too coarse to point at a 3-6 px nodule.

Written here rather than taken from MONAI: ``monai.networks.nets.MILModel`` pools over whole-slide-image tiles fed
through a torchvision ResNet-50 one tile at a time, not over the locations of one image's feature map.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F

SLIM_WIDTHS = (16, 32, 64, 128)
ATTENTION_WIDTH = 64  # the hidden width of the attention scorer (Ilse et al. use 128 for 500-d instances)


class SpatialSoftmax(nn.Module):
    """Softmax over all locations of (N, 1, *spatial) scores; a module so that explanations can hook its output."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores.flatten(2), -1).view_as(scores)


class GatedAttentionPool(nn.Module):
    """(N, C, *spatial) -> (N, C): the attention-weighted sum over locations; ``gate`` outputs the weights."""

    def __init__(self, channels: int, spatial_dims: int, hidden: int = ATTENTION_WIDTH) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.tanh_branch = conv(channels, hidden, 1)
        self.sigmoid_branch = conv(channels, hidden, 1)
        self.score = conv(hidden, 1, 1)
        self.gate = SpatialSoftmax()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.tanh_branch(h)) * torch.sigmoid(self.sigmoid_branch(h))
        weights = self.gate(self.score(hidden))
        return (h * weights).flatten(2).sum(-1)


@functools.cache
def _mil_resnet_class() -> type:
    from monai.networks.nets import ResNet

    class AttentionMILResNet(ResNet):
        """MONAI ResNet with attention pooling over layer3's grid of [layer3, upsampled layer4] features."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            _, _, c3, c4 = SLIM_WIDTHS
            self.pool = GatedAttentionPool(c3 + c4, kwargs["spatial_dims"])
            self.fc = nn.Linear(c3 + c4, kwargs["num_classes"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.bn1(self.conv1(x)))
            if not self.no_max_pool:
                x = self.maxpool(x)
            f3 = self.layer3(self.layer2(self.layer1(x)))
            f4 = F.interpolate(self.layer4(f3), size=f3.shape[2:], mode="nearest")
            return self.fc(self.pool(torch.cat([f3, f4], 1)))

    return AttentionMILResNet


def build_mil_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28,
                            spatial_dims: int = 2) -> nn.Module:
    from monai.networks.nets.resnet import ResNetBlock

    small = input_size <= 64
    return _mil_resnet_class()(
        block=ResNetBlock, layers=[2, 2, 2, 2], block_inplanes=list(SLIM_WIDTHS), spatial_dims=spatial_dims,
        n_input_channels=in_channels, conv1_t_size=3 if small else 7, conv1_t_stride=1 if small else 2,
        no_max_pool=small, num_classes=num_classes)
