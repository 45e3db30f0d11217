"""Reconstruction networks (2D): image-domain residual denoisers for CT and a U-Net with data consistency
for undersampled MRI.

* ``recon_unet``: MONAI ``UNet`` (residual units, 16-128 channels, three stride-2 levels) predicting a
  correction added to its input (FBPConvNet-style post-processing of FBP: Jin et al. 2017).
* ``dncnn``: DnCNN-style plain residual CNN (Zhang et al. 2017), 10 layers of 48 channels: smaller and slower
  to converge, offered as the classic alternative.
* ``recon_unet_dc``: for MRI; its input has 3 channels (real and imaginary parts of the zero-filled image and
  the sampled k-space columns as 0/1 rows); each of two cascades adds a U-Net correction to the complex image
  and then replaces the sampled k-space lines by the measured ones (hard data consistency, as in Schlemper
  et al.'s cascades); the output is the magnitude. Its ``in_channels`` argument is ignored: the input layout
  is fixed by the MRI degradation.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def _unet(in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=(16, 32, 64, 128),
                strides=(2, 2, 2), num_res_units=1, norm="batch")


def _zero_head(channels: int, out_channels: int) -> nn.Conv2d:
    """A 1x1 output convolution starting at zero, so that a residual network starts as the identity (its first
    outputs are the degraded input, not noise from random weights)."""
    head = nn.Conv2d(channels, out_channels, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class ResidualUNet(nn.Module):
    """``x[:, :1] + head(unet(x))``: the network learns the artefact/noise, not the image."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__()
        self.unet = _unet(in_channels, 8)
        self.head = _zero_head(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] + self.head(self.unet(x))


class DnCNN(nn.Module):
    """conv-ReLU, (conv-BN-ReLU) x (depth - 2), conv; the output is the input minus the predicted noise."""

    def __init__(self, in_channels: int = 1, depth: int = 10, width: int = 48) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :1] - self.body(x)


def fft2c(x: torch.Tensor) -> torch.Tensor:
    """Centred orthonormal 2D FFT over the last two axes (the convention of meddx.data.degrade.kspace)."""
    return torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(x, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


def ifft2c(k: torch.Tensor) -> torch.Tensor:
    return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1)), norm="ortho"), dim=(-2, -1))


class UNetDC(nn.Module):
    """Cascades of (U-Net correction of the complex image, hard k-space data consistency); magnitude out."""

    def __init__(self, cascades: int = 2) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nn.Sequential(_unet(3, 8), _zero_head(8, 2)) for _ in range(cascades))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        mask = x[:, 2:3] > 0.5
        measured = fft2c(torch.complex(x[:, 0], x[:, 1]))[:, None]
        image = x[:, :2]
        for net in self.nets:
            image = image + net(torch.cat([image, x[:, 2:3]], 1))
            k = torch.where(mask, measured, fft2c(torch.complex(image[:, 0], image[:, 1])[:, None]))
            c = ifft2c(k)
            image = torch.cat([c.real, c.imag], 1)
        return torch.sqrt(image[:, :1] ** 2 + image[:, 1:] ** 2 + 1e-12)


def build_recon_unet(in_channels: int, num_classes: int = 1, input_size: int = 128, spatial_dims: int = 2) -> nn.Module:
    return ResidualUNet(in_channels)


def build_dncnn(in_channels: int, num_classes: int = 1, input_size: int = 128, spatial_dims: int = 2) -> nn.Module:
    return DnCNN(in_channels)


def build_recon_unet_dc(in_channels: int, num_classes: int = 1, input_size: int = 128,
                        spatial_dims: int = 2) -> nn.Module:
    return UNetDC()
