"""Detection augmentation: random flips (+ zoom/translate and intensity jitter in 2D) with the boxes moved along.

Boxes are in grid order (``[y1, x1, y2, x2]`` in 2D, ``[z1, y1, x1, z2, y2, x2]`` in 3D), pixels/voxels,
inclusive-exclusive; see :mod:`meddx.tasks.detection`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

ZOOM = (0.75, 1.33)  # 2D scale augmentation range
MIN_VISIBLE = 0.35  # a box cropped by augmentation is kept when at least this share of it stays visible


def augment(raw: torch.Tensor, targets: list[dict[str, torch.Tensor]], generator: torch.Generator | None,
            zoom: bool = True) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Random flips along every axis (+ zoom/translate and intensity jitter in 2D), boxes transformed with them.

    Raw (un-normalised) float images in; areas uncovered by zooming out get the image's mean value.
    """
    n, d = raw.shape[0], raw.ndim - 2
    spatial = torch.tensor(raw.shape[2:], dtype=torch.float32)

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator)

    flips = rand(n, d) < 0.5
    scale = torch.exp(rand(n) * (math.log(ZOOM[1]) - math.log(ZOOM[0])) + math.log(ZOOM[0])) if zoom \
        else torch.ones(n)
    # translation of the zoomed image, in pixels, so that it still covers the centre region
    shift = (rand(n, d) * 2 - 1) * spatial * 0.5 * (scale[:, None] - 1).abs() if zoom else torch.zeros(n, d)
    # output coordinate o (grid order, pixels) samples input i = (o - c - shift) / scale + c, mirrored when flipped
    centre = spatial / 2
    theta = torch.zeros(n, d, d + 1)
    for a in range(d):
        sign = torch.where(flips[:, a], -1.0, 1.0)
        col = d - 1 - a  # affine_grid's axis order is (x, y[, z]): reversed grid order
        theta[:, col, col] = sign / scale
        theta[:, col, d] = -shift[:, a] / scale / centre[a]
    dev = raw.device
    if zoom or flips.any():
        grid = F.affine_grid(theta.to(dev), list(raw.shape), align_corners=False)
        mean = raw.mean(dim=tuple(range(2, raw.ndim)), keepdim=True)
        raw = F.grid_sample(raw - mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + mean
    if zoom:  # brightness / contrast jitter (+-10 %)
        gain = (1 + (rand(n) * 0.2 - 0.1)).view(-1, *[1] * (d + 1)).to(dev)
        bias = ((rand(n) * 0.2 - 0.1) * 255 * 0.5).view(-1, *[1] * (d + 1)).to(dev)
        raw = (raw * gain + bias).clamp(0, 255)
    out = []
    for k, t in enumerate(targets):
        boxes = t["boxes"]
        if len(boxes) == 0:
            out.append(t)
            continue
        lo, hi = boxes[:, :d].cpu(), boxes[:, d:].cpu()
        new_lo, new_hi = [], []
        for a in range(d):
            s, sh, c = scale[k], shift[k, a], centre[a]
            f_lo, f_hi = (lo[:, a] - c) * s + c + sh, (hi[:, a] - c) * s + c + sh
            if flips[k, a]:
                f_lo, f_hi = spatial[a] - f_hi, spatial[a] - f_lo
            new_lo.append(f_lo)
            new_hi.append(f_hi)
        nb = torch.cat([torch.stack(new_lo, 1), torch.stack(new_hi, 1)], 1)
        full = (nb[:, d:] - nb[:, :d]).prod(1)
        clipped = torch.cat([torch.maximum(nb[:, :d], torch.zeros(d)), torch.minimum(nb[:, d:], spatial)], 1)
        visible = (clipped[:, d:] - clipped[:, :d]).clamp_min(0).prod(1)
        keep = (visible >= MIN_VISIBLE * full) & ((clipped[:, d:] - clipped[:, :d]) >= 1).all(1)
        out.append({"boxes": clipped[keep].to(dev), "labels": t["labels"][keep.to(t["labels"].device)]})
    return raw, out
