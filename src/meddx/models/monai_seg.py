"""Segmentation networks from MONAI (2D and 3D): U-Net and SegResNet, sized for CPU-scale training.

Both downsample three times, so patch sides must be multiples of 8 (the segmentation task picks such
patches and sliding-window inference covers any image size).
"""

from __future__ import annotations

import torch.nn as nn


def build_unet(in_channels: int, num_classes: int, input_size: int = 64, spatial_dims: int = 2) -> nn.Module:
    """MONAI ``UNet`` with residual units, channels 16-32-64-128 (three stride-2 levels), instance norm."""
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=num_classes,
                channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, norm="instance")


def build_segresnet(in_channels: int, num_classes: int, input_size: int = 64, spatial_dims: int = 2) -> nn.Module:
    """MONAI ``SegResNet`` (Myronenko 2018, without the VAE branch), 8 initial filters, group norm."""
    from monai.networks.nets import SegResNet

    return SegResNet(spatial_dims=spatial_dims, init_filters=8, in_channels=in_channels, out_channels=num_classes,
                     blocks_down=(1, 2, 2, 4), blocks_up=(1, 1, 1))
