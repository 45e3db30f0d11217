"""``mil_resnet18_slim``: the default ResNet's first two stages as a local feature extractor, and gated attention
pooling in place of the deeper stages and global average pooling.

Gated attention multiple-instance pooling (Ilse, Tomczak & Welling 2018, "Attention-based deep multiple instance
learning"): every location of the feature map is an instance; the network scores each one,
``a = softmax_over_space(w . (tanh(V h) * sigmoid(U h)))``, and the classifier sees only ``sum(a * h)``. A finding
that is local (a nodule, a tumour) can only reach the classifier through the locations the attention picks, so
the attention map is the network's own answer to "where did it look" (method ``attention`` reads it back).

The instances must be local for that to hold. A first version pooled over layer3's grid on [layer3, layer4]
features: every instance saw most of the image, the classifier did not need the attention to find anything, and
its map pointed at the phantom's nodules in none of 120 test images (within 3 px; Grad-CAM of the same model 0.68).
Here the instances are layer2's features (receptive field ~25 px, stride 2: 24 x 24 at 48 px), each passed
through a per-location MLP (two 1x1 convolutions, ``INSTANCE_WIDTH``) before the pooling; layer3 and layer4 are
dropped. The pooling has ``HEADS`` attention distributions, each with its own weighted sum (the classifier sees
their concatenation; the map is their mean). With one head the model gave up 0.012 AUC on PneumoniaMNIST against
the default model (3 seeds), as the first, deep version had too (0.011): a single softmax over locations, not the
lost depth, cost the AUC on a diffuse finding. With four heads: -0.004 AUC there, +0.014 on BreastMNIST; its map
points at the phantom's test nodules within 3 px in 0.883 of images (validation 0.925; one head: 0.908 / 0.933)
(benchmarks/RESULTS.md).

Written here rather than taken from MONAI: ``monai.networks.nets.MILModel`` pools over whole-slide-image tiles fed
through a torchvision ResNet-50 one tile at a time, not over the locations of one image's feature map.
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn

from meddx.models.monai_resnet import SLIM_WIDTHS, slim_resnet_kwargs

INSTANCE_WIDTH = 128  # the per-location MLP's width (layer2 has 32 channels)
ATTENTION_WIDTH = 64  # the hidden width of the attention scorer (Ilse et al. use 128 for 500-d instances)
HEADS = 4  # attention distributions over the locations, each pooling its own weighted sum


class SpatialSoftmax(nn.Module):
    """Softmax over all locations of (N, 1, *spatial) scores; a module so that explanations can hook its output."""

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores.flatten(2), -1).view_as(scores)


class GatedAttentionPool(nn.Module):
    """(N, C, *spatial) -> (N, heads * C): one attention-weighted sum over locations per head; ``gate`` outputs the
    weights (N, heads, *spatial)."""

    def __init__(self, channels: int, spatial_dims: int, hidden: int = ATTENTION_WIDTH, heads: int = HEADS) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.tanh_branch = conv(channels, hidden, 1)
        self.sigmoid_branch = conv(channels, hidden, 1)
        self.score = conv(hidden, heads, 1)
        self.gate = SpatialSoftmax()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        hidden = torch.tanh(self.tanh_branch(h)) * torch.sigmoid(self.sigmoid_branch(h))
        weights = self.gate(self.score(hidden))  # (N, heads, *S)
        return torch.bmm(weights.flatten(2), h.flatten(2).transpose(1, 2)).flatten(1)  # (N, heads * C)


@functools.cache
def _mil_resnet_class() -> type:
    from monai.networks.nets import ResNet

    class AttentionMILResNet(ResNet):
        """MONAI ResNet cut after layer2 (local instances), a per-location MLP, and gated attention pooling."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            dims, c2 = kwargs["spatial_dims"], SLIM_WIDTHS[1]
            conv, norm = (nn.Conv2d, nn.BatchNorm2d) if dims == 2 else (nn.Conv3d, nn.BatchNorm3d)
            width = INSTANCE_WIDTH
            self.layer3 = self.layer4 = None  # instances must stay local: no deeper, wider receptive fields
            self.instance = nn.Sequential(conv(c2, width, 1), norm(width), nn.ReLU(inplace=True),
                                          conv(width, width, 1), norm(width), nn.ReLU(inplace=True))
            self.pool = GatedAttentionPool(width, dims)
            self.fc = nn.Linear(width * HEADS, kwargs["num_classes"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.act(self.bn1(self.conv1(x)))
            if not self.no_max_pool:
                x = self.maxpool(x)
            return self.fc(self.pool(self.instance(self.layer2(self.layer1(x)))))

    return AttentionMILResNet


def build_mil_resnet18_slim(in_channels: int, num_classes: int, input_size: int = 28,
                            spatial_dims: int = 2) -> nn.Module:
    from monai.networks.nets.resnet import ResNetBlock

    return _mil_resnet_class()(
        block=ResNetBlock, **slim_resnet_kwargs(in_channels, num_classes, input_size, spatial_dims))
