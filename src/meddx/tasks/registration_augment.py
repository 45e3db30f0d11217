"""Fresh registration pairs every batch: the stored pairs under new random smooth deformations.

A registration network over-fits a few hundred stored pairs: on phantom 2D (240 pairs) the validation Dice
peaked near epoch 100 of 300 and then fell while the training loss kept improving. Each training batch
therefore (1) deforms both images of a pair by one shared random field ``a`` (new anatomy, the same relative
motion) and (2) the fixed image by a second, smaller field ``b`` (new relative motion). Labels follow the same
fields (nearest neighbour). No true field is needed: the losses are similarity, regularisation and label Dice.

The fields come from :func:`meddx.data.registration_pairs.safe_field` (smooth random part + small affine map,
never folding), the generator of the stored pairs, seeded from the engine's torch generator; they are applied
with the task's warp (:mod:`meddx.models.registration_nets`), which is why this lives beside the task and not in
``meddx.data`` (the data layer does not import the models).
"""

from __future__ import annotations

import numpy as np
import torch

SHARED, RELATIVE = 0.04, 0.02  # amplitudes of the fields a and b, as fractions of the longest side


def _fields(n: int, shape: tuple[int, ...], fraction: float, seed: int) -> torch.Tensor:
    from meddx.data.registration_pairs import safe_field

    rng = np.random.default_rng(seed)
    return torch.from_numpy(np.stack([safe_field(rng, shape, fraction * max(shape)) for _ in range(n)]))


def augment_pairs(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator | None,
                  shared: float = SHARED, relative: float = RELATIVE) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 2, *S) images and labels -> the same pairs under fresh random fields (see the module docstring)."""
    from meddx.models.registration_nets import warp, warp_labels

    n, shape = images.shape[0], tuple(images.shape[2:])
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
    a = _fields(n, shape, shared, seed).to(images.device, images.dtype)
    b = _fields(n, shape, relative, seed + 1).to(images.device, images.dtype)
    on_fixed = b + warp(a, b)  # x -> x + b(x) -> then a: one resampling of the fixed image
    out = torch.cat([warp(images[:, :1], on_fixed), warp(images[:, 1:2], a)], 1)
    lab = torch.stack([warp_labels(labels[:, 0], on_fixed), warp_labels(labels[:, 1], a)], 1)
    return out, lab
