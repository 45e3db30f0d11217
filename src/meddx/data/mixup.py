"""Mixup (Zhang et al., ICLR 2018): train on convex combinations of two images and of their targets.

Written here rather than taken from timm's ``Mixup``: timm's draws its mixing weight from NumPy's global
generator (a run would no longer repeat from its seed) and returns soft one-hot targets, which the ordinal
squared-EMD loss cannot take. Here the batch keeps its integer targets and the loss is mixed instead,
``lam * L(out, a) + (1 - lam) * L(out, b)``, which equals the loss on mixed targets for cross-entropy (with
label smoothing and class weights) and BCE, and is defined for every loss the classification task has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class MixedTargets:
    """The targets of a mixed batch: a share ``lam`` of ``a`` (the batch's own) and ``1 - lam`` of ``b``."""

    a: torch.Tensor
    b: torch.Tensor
    lam: float

    def loss(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
             output: torch.Tensor) -> torch.Tensor:
        return self.lam * loss_fn(output, self.a) + (1.0 - self.lam) * loss_fn(output, self.b)


def mix_batch(x: torch.Tensor, y: torch.Tensor, alpha: float,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, MixedTargets]:
    """``lam * x + (1 - lam) * x[perm]`` with one ``lam ~ Beta(alpha, alpha)`` per batch and a random pairing
    ``perm``; both drawn from ``generator`` so that a seeded run repeats exactly."""
    if alpha <= 0:
        raise ValueError(f"mixup alpha must be > 0, got {alpha}")
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=generator).to(x.device)
    return x.mul(lam).add_(x[perm], alpha=1.0 - lam), MixedTargets(y, y[perm], lam)
