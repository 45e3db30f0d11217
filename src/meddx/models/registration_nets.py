"""Deformable registration networks (2D/3D, MONAI): a (fixed, moving) pair in, a dense displacement field out.

The input is (N, 2, *S) (channel 0 fixed, channel 1 moving); the output is (N, D, *S) displacements in voxels,
MONAI ``Warp``'s convention (``warped(x) = moving(x + ddf(x))``). ``integrate=True`` reads the backbone's
output as a stationary velocity field and integrates it by scaling and squaring (MONAI ``DVF2DDF``), as
diffeomorphic VoxelMorph does, which keeps the map nearly fold-free. Inputs whose sides are not multiples of
the backbone's stride are padded (edge values) and the field cropped back.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class RegistrationNet(nn.Module):
    """``backbone`` (2 -> D channels) + optional scaling-and-squaring integration."""

    def __init__(self, backbone: nn.Module, spatial_dims: int, integrate: bool = True, multiple: int = 8,
                 steps: int = 7, half_res: bool = False) -> None:
        super().__init__()
        import warnings

        from monai.networks.blocks import DVF2DDF

        self.backbone = backbone
        self.spatial_dims = spatial_dims
        self.half_res = half_res  # VoxelMorph's option: the field at half resolution, upsampled (4-8x cheaper)
        self.multiple = multiple * (2 if half_res else 1)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Using PyTorch native grid_sample": informational, printed to users
            self.integrate = DVF2DDF(num_steps=steps, mode="bilinear", padding_mode="border") if integrate else None

    def forward(self, pair: torch.Tensor) -> torch.Tensor:
        spatial = pair.shape[2:]
        # sides: multiples of the stride, and at least two of them (instance norm needs > 1 voxel at the bottom)
        pad = [max((-s) % self.multiple, 2 * self.multiple - s) for s in spatial]
        if any(pad):
            widths = [w for p in reversed(pad) for w in (0, p)]
            pair = F.pad(pair, widths, mode="replicate")
        full = pair.shape[2:]
        if self.half_res:
            pair = F.avg_pool2d(pair, 2) if self.spatial_dims == 2 else F.avg_pool3d(pair, 2)
        field = self.backbone(pair).float()
        if self.integrate is not None:
            field = self.integrate(field)
        if self.half_res:  # displacements in half-resolution voxels: upsample and double
            field = 2.0 * F.interpolate(field, size=full, mode="bilinear" if self.spatial_dims == 2 else "trilinear",
                                        align_corners=False)
        return field[(slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)]


def _conv(spatial_dims: int) -> type[nn.Module]:
    return nn.Conv2d if spatial_dims == 2 else nn.Conv3d


def _small_last_conv(model: nn.Module, gain: float = 1e-2) -> None:
    """Scale the last convolution's weights so that the initial field is nearly zero (VoxelMorph's init)."""
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d,
                                                           nn.ConvTranspose3d))]
    with torch.no_grad():
        convs[-1].weight.mul_(gain)
        if convs[-1].bias is not None:
            convs[-1].bias.zero_()


def build_regunet(in_channels: int, num_classes: int, input_size: int = 64, spatial_dims: int = 2) -> nn.Module:
    """MONAI ``UNet`` (16-32-32-64, three stride-2 levels, residual units) predicting a stationary velocity field
    at half resolution, integrated by scaling and squaring and upsampled. ``num_classes`` (label structures) does
    not size the output: one displacement channel per spatial axis."""
    from monai.networks.nets import UNet

    unet = UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=16,
                channels=(16, 32, 32, 64), strides=(2, 2, 2), num_res_units=1, norm="instance", act="LEAKYRELU")
    head = nn.Sequential(unet, nn.LeakyReLU(0.2), _conv(spatial_dims)(16, spatial_dims, 3, padding=1))
    _small_last_conv(head)
    return RegistrationNet(head, spatial_dims, integrate=True, half_res=True)


def build_voxelmorph(in_channels: int, num_classes: int, input_size: int = 64, spatial_dims: int = 2) -> nn.Module:
    """MONAI ``VoxelMorphUNet`` (VoxelMorph-1 layout at 16-32-32-32) + scaling-and-squaring integration."""
    from monai.networks.nets import VoxelMorphUNet

    unet = VoxelMorphUNet(spatial_dims=spatial_dims, in_channels=in_channels, unet_out_channels=32,
                          channels=(16, 32, 32, 32, 32, 32), final_conv_channels=(16, 16))
    head = nn.Sequential(unet, nn.LeakyReLU(0.2), _conv(spatial_dims)(spatial_dims, spatial_dims, 3, padding=1))
    _small_last_conv(head)
    return RegistrationNet(head, spatial_dims, integrate=True, multiple=8)


def build_localnet(in_channels: int, num_classes: int, input_size: int = 64, spatial_dims: int = 2) -> nn.Module:
    """MONAI ``LocalNet`` (Hu et al. 2018; 16 initial channels, 4 levels) predicting the displacement directly."""
    from monai.networks.nets import LocalNet

    net = LocalNet(spatial_dims=spatial_dims, in_channels=in_channels, num_channel_initial=16,
                   extract_levels=(0, 1, 2, 3), out_channels=spatial_dims, out_kernel_initializer="zeros")
    return RegistrationNet(net, spatial_dims, integrate=False)


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """``image(x + ddf(x))`` with MONAI's ``Warp`` (edge values outside the image)."""
    import warnings

    from monai.networks.blocks import Warp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using PyTorch native grid_sample": informational
        return Warp(mode=mode, padding_mode="border")(image, ddf)


def diffusion_loss(ddf: torch.Tensor) -> torch.Tensor:
    """MONAI ``DiffusionLoss()`` (mean over voxels of the squared central differences of every component, on
    the interior), with tuple indexing: MONAI 1.5 slices with lists, which PyTorch 2.14 takes as advanced
    indexing (a copy, ~1 ms a call at 64 x 64, and a deprecation warning on every call)."""
    nd = ddf.ndim - 2
    squares = []
    for d in range(nd):
        ahead, behind = [slice(1, -1)] * nd, [slice(1, -1)] * nd
        ahead[d], behind[d] = slice(2, None), slice(None, -2)
        grad = (ddf[(slice(None), slice(None), *ahead)] - ddf[(slice(None), slice(None), *behind)]) / 2.0
        squares.append(grad ** 2)
    return sum(squares).mean()


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
    """Label maps (N, *S) warped by nearest-neighbour sampling."""
    return warp(labels[:, None].float(), ddf, mode="nearest")[:, 0].round().to(labels.dtype)
