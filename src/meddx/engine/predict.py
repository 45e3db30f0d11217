"""``Predictor``: a trained run applied to image files, preprocessing from its checkpoint, through a runtime.

The task turns files into results (``task.predict_files``: class probabilities, mask files, boxes); the
runtime (:mod:`meddx.runtimes`: ``torch``, ``onnx``, ``int8``) executes the network on raw images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.errors import MeddxError
from meddx.runtimes import open_runtime
from meddx.tasks import task_from_meta


class Predictor:
    """Loads a run once; ``predict_files`` returns one dict per image.

    ``runtime``: ``torch``, ``onnx`` (the run's ``model.onnx``), ``int8`` (its ``model_int8.onnx``) or ``auto``
    (int8 for a ptq/qat-compressed run, else torch). ``files`` lists the model files in use.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", runtime: str = "torch") -> None:
        source = Path(checkpoint)
        self.runtime = open_runtime(runtime, source, device=device)
        self.meta: dict[str, Any] = self.runtime.meta
        self.classes: list[str] = self.meta["classes"]
        self.task = task_from_meta(self.meta)
        self._notices: set[str] = set()
        if self.runtime.name != "torch" and not self.task.is_classifier:
            raise MeddxError(f"runtime {self.runtime.name} serves classification runs; this is a "
                             f"{self.task.name} run (use --runtime torch)", source)

    # the PyTorch pieces that tasks with their own inference (sliding windows, boxes) and explanations use
    model = property(lambda self: self._torch().model)
    norm = property(lambda self: self._torch().norm)
    device = property(lambda self: getattr(self.runtime, "device", torch.device("cpu")))
    files = property(lambda self: self.runtime.files)

    def _torch(self) -> Any:
        if self.runtime.name != "torch":
            raise MeddxError(f"this needs the PyTorch model; runtime {self.runtime.name} has only "
                             f"{self.runtime.files[0].name}")
        return self.runtime

    def load_image(self, path: str | Path) -> torch.Tensor:
        """Read one file and conform it to the checkpoint's input (meddx.data.contract); notices once each."""
        from meddx.data.contract import load_input

        return load_input(path, self.meta, self._notices)

    def predict_tensor(self, images: torch.Tensor) -> np.ndarray:
        """Class probabilities for a batch of raw images (the checkpoint's stored dtype and range)."""
        return self.runtime.predict(images)

    def predict_files(self, paths: list[str | Path], out_dir: str | Path | None = None) -> list[dict[str, Any]]:
        """One dict per file; tasks with file outputs (segmentation masks) write them to ``out_dir``."""
        return self.task.predict_files(self, paths, out_dir)
