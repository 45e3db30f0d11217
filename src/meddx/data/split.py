"""One split of an in-memory data set: images and labels as whole tensors (detection: a list of box dicts)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Split:
    """One split: ``images`` (N, C, H, W) or (N, C, D, H, W) raw values; ``labels`` (N,) or (N, K)."""

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str] | None = None  # file names or indices, for reports and error messages

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray | torch.Tensor) -> Split:
        idx = torch.as_tensor(index, dtype=torch.long)
        ids = [self.ids[i] for i in idx.tolist()] if self.ids is not None else None
        if isinstance(self.labels, list):  # detection: one dict of boxes per image
            return Split(self.images[idx], [self.labels[i] for i in idx.tolist()], ids)
        return Split(self.images[idx], self.labels[idx], ids)
