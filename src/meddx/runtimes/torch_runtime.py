"""The PyTorch runtime: the run's safetensors checkpoint in the registered network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meddx.data.augment import Normalization
from meddx.engine.checkpoint import load_model
from meddx.engine.run import RunDir
from meddx.models.inference import predict
from meddx.tasks import task_from_meta
from meddx.utils.runtime import pick_device


class TorchRuntime:
    """Loads the checkpoint once (a run folder: the checkpoint its ``select`` setting names)."""

    name = "torch"
    label = "torch"

    def __init__(self, source: str | Path, device: str = "auto") -> None:
        path = Path(source)
        if path.is_dir():
            path = RunDir.open(path).model_checkpoint()
        self.device = pick_device(device)
        self.model, self.meta = load_model(path, self.device)
        self.task = task_from_meta(self.meta)
        self.norm = Normalization(**self.meta["normalization"])
        self.files = [path]

    def predict(self, images: torch.Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
        images = torch.as_tensor(images)
        y_score, _ = predict(self.model, images, self.task, self.norm, batch_size=batch_size, device=self.device)
        return y_score
