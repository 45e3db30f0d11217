"""Reconstruction networks (2D): image-domain residual denoisers for CT and a U-Net with data consistency
for undersampled MRI.

* ``recon_unet``: MONAI ``UNet`` (residual units, 16-128 channels, three stride-2 levels) predicting a
  correction added to its input (FBPConvNet-style post-processing of FBP: Jin et al. 2017).
* ``recon_unet_nl``: the same, also given the input's measured noise level as a channel (default for low-dose
  CT, whose training spans many doses and patient sizes).
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


NOISE_SCALE = 10.0  # model units are HU / 1000: noise SD 0.05-0.15 becomes a channel of 0.5-1.5


def noise_level(x: torch.Tensor) -> torch.Tensor:
    """Each image's noise SD (N, 1, 1, 1) from its first channel, as scikit-image's ``estimate_sigma`` measures it
    (Donoho's MAD of the finest diagonal Haar detail, / 0.6745), written in torch so the model carries it (no
    separate pre-processing at inference). Exact zeros are left out: pixels outside the scanner's field of view
    are set to air and carry no noise, and a patch near a corner holds more of them than a whole slice."""
    x = x[:, :1, : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]).abs() / 2
    hh = torch.where(hh > 0, hh, torch.full_like(hh, float("nan"))).flatten(1)
    sigma = torch.nan_to_num(hh.nanmedian(dim=1).values, nan=0.0) / 0.6745
    return sigma.view(-1, 1, 1, 1)


class NoiseAwareUNet(ResidualUNet):
    """:class:`ResidualUNet` given the input's own noise level as an extra constant channel (as FFDNet is given
    a noise map, Zhang et al. 2018, here measured rather than supplied): one network trained over many doses
    and patient sizes can then still treat each noise level as its own, where a blind one averages them."""

    def __init__(self, in_channels: int = 1) -> None:
        super().__init__(in_channels + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        level = (noise_level(x) * NOISE_SCALE).expand(-1, 1, *x.shape[-2:])
        return x[:, :1] + self.head(self.unet(torch.cat([x, level], 1)))


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


def build_recon_unet_nl(in_channels: int, num_classes: int = 1, input_size: int = 128,
                        spatial_dims: int = 2) -> nn.Module:
    return NoiseAwareUNet(in_channels)


def build_dncnn(in_channels: int, num_classes: int = 1, input_size: int = 128, spatial_dims: int = 2) -> nn.Module:
    return DnCNN(in_channels)


def build_recon_unet_dc(in_channels: int, num_classes: int = 1, input_size: int = 128,
                        spatial_dims: int = 2) -> nn.Module:
    return UNetDC()
