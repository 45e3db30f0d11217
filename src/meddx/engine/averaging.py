"""Weight averaging done right with BatchNorm: EMA / tail (SWA-style) averages whose running statistics are
re-estimated on training batches after averaging.

``torch.optim.swa_utils.AveragedModel`` averages parameters only (``use_buffers=False``): its BatchNorm
running means/variances stay those of the copy it was built from (for an EMA made at step 0: mean 0, var 1),
so an averaged model validated as-is pushes every image to one class. meddx's EMA before this module did
exactly that (BreastMNIST test ACC 0.55). Here every averaged model gets :func:`recalibrate_bn` before use.
"""

from __future__ import annotations

from typing import Any

import torch

from meddx.data.augment import AugmentPolicy, Normalization, random_affine

AVERAGE_PREFIX = "tailavg."  # tensors of the running tail average inside last.safetensors (resume)


def recalibrate_bn(model: torch.nn.Module, images: torch.Tensor, norm: Normalization, n: int = 8192,
                   batch_size: int = 256, device: Any = "cpu", policy: AugmentPolicy | None = None,
                   seed: int = 0) -> None:
    """Re-estimate BatchNorm running statistics on up to ``n`` training images ("precise BN").

    Pruning and weight averaging change every layer's activation statistics; a short fine-tune only
    half-updates the running means/variances (momentum 0.1 over a few steps), which leaves the network
    miscalibrated: AUC intact, but every image pushed to one class. ``torch.optim.swa_utils.update_bn``
    re-estimates them from scratch as a cumulative average. As in precise BN (pycls/fvcore: 8192 samples from
    the training loader), the images pass through the training augmentation ``policy``: the layers after each
    BatchNorm were trained on augmented batches. The sample size matters: on the PneumoniaMNIST benchmark
    model, re-estimating from 2,048 clean images alone (no pruning) moved test ACC by 1.3 pt; the full
    training set by 0.2 pt.
    """
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    gen = torch.Generator().manual_seed(seed)
    count = min(n, len(images))
    order = torch.randperm(len(images), generator=gen)[:count] if count < len(images) else torch.arange(count)

    def batches():  # a generator: one batch in memory at a time
        for i in range(0, count, batch_size):
            x = norm(images[order[i:i + batch_size]].to(device))
            yield random_affine(x, policy, gen) if policy is not None else x

    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches(), model)
    model.eval()


def make_ema(model: torch.nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of the parameters (updated every step); call :func:`recalibrate_bn` on
    its ``module`` before validating it (its BatchNorm buffers are not averaged)."""
    return torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay), use_buffers=False)


class TailAverage:
    """Equal-weight average (SWA) of the epoch-end weights from epoch ``start`` on, over the annealing tail of
    the cosine schedule. Snapshots are taken at epoch ends, so a resume continues the same average."""

    def __init__(self, model: torch.nn.Module, start: int) -> None:
        self.start = start
        self.averaged = torch.optim.swa_utils.AveragedModel(model, use_buffers=False)

    @property
    def count(self) -> int:
        return int(self.averaged.n_averaged)

    def update(self, model: torch.nn.Module, epoch: int) -> None:
        """Add ``model``'s weights after ``epoch`` when the epoch is in the tail."""
        if epoch >= self.start:
            self.averaged.update_parameters(model)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The running average as checkpoint tensors (saved in ``last`` beside the live weights)."""
        if self.count == 0:
            return {}
        state = {f"{AVERAGE_PREFIX}{k}": v for k, v in self.averaged.module.state_dict().items()}
        return state | {f"{AVERAGE_PREFIX}n_averaged": self.averaged.n_averaged.clone()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        own = {k[len(AVERAGE_PREFIX):]: v for k, v in tensors.items() if k.startswith(AVERAGE_PREFIX)}
        if "n_averaged" in own:
            self.averaged.n_averaged.copy_(own.pop("n_averaged"))
            self.averaged.module.load_state_dict(own)

    def settled_model(self, images: torch.Tensor, norm: Normalization, device: Any,
                      policy: AugmentPolicy | None, seed: int = 0) -> torch.nn.Module | None:
        """The averaged network with BatchNorm re-estimated on training images; None before any snapshot."""
        if self.count == 0:
            return None
        model = self.averaged.module
        recalibrate_bn(model, images, norm, device=device, policy=policy, seed=seed)
        return model
