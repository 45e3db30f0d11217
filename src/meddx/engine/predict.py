"""``Predictor``: a trained run applied to image files, preprocessing from its checkpoint, through a runtime.

The task turns files into results (``task.predict_files``: class probabilities, mask files, boxes); the
runtime (:mod:`meddx.runtimes`: ``torch``, ``onnx``, ``int8``) executes the network on raw images. With an ONNX
runtime (a classification run) nothing here imports PyTorch: ``meddx predict`` then starts in a fraction of
``import torch``'s time.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from meddx.errors import MeddxError
from meddx.runtimes import open_runtime

if TYPE_CHECKING:
    import torch


class Predictor:
    """Loads a run once; ``predict_files`` returns one dict per image.

    ``runtime``: ``torch``, ``onnx`` (the run's ``model.onnx``), ``int8`` (its ``model_int8.onnx``) or ``auto``
    (see :func:`meddx.runtimes.resolve_auto`). ``files`` lists the model files in use.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", runtime: str = "torch") -> None:
        source = Path(checkpoint)
        self.source = source
        self.runtime = open_runtime(runtime, source, device=device)
        self.meta: dict[str, Any] = self.runtime.meta
        self.classes: list[str] = self.meta["classes"]
        self._notices: set[str] = set()
        task_name = self.meta.get("task", "classification")
        if self.runtime.name != "torch" and task_name != "classification":
            raise MeddxError(f"runtime {self.runtime.name} serves classification runs; this is a "
                             f"{task_name} run (use --runtime torch)", source)

    @cached_property
    def task(self) -> Any:
        from meddx.tasks import task_from_meta

        return task_from_meta(self.meta)

    # the PyTorch pieces that tasks with their own inference (sliding windows, boxes) and explanations use
    model = property(lambda self: self._torch().model)
    norm = property(lambda self: self._torch().norm)
    files = property(lambda self: self.runtime.files)

    @property
    def device(self) -> torch.device:
        import torch

        return getattr(self.runtime, "device", torch.device("cpu"))

    def torch_model(self, device: str = "cpu") -> Predictor:
        """A predictor with the run's PyTorch model (``self`` when it has one): gradients for heat maps when
        the scores come from an ONNX/int8 runtime. A one-line error if there is no checkpoint (an .onnx file)."""
        if self.runtime.name == "torch":
            return self
        if self.source.suffix == ".onnx":
            raise MeddxError("heat maps need the run's PyTorch checkpoint; an .onnx file has none", self.source)
        return Predictor(self.source, device=device, runtime="torch")

    def _torch(self) -> Any:
        if self.runtime.name != "torch":
            raise MeddxError(f"this needs the PyTorch model; runtime {self.runtime.name} has only "
                             f"{self.runtime.files[0].name}")
        return self.runtime

    def load_image(self, path: str | Path) -> torch.Tensor:
        """Read one file and conform it to the checkpoint's input (meddx.data.contract); notices once each."""
        from meddx.data.contract import load_input

        return load_input(path, self.meta, self._notices)

    def load_array(self, path: str | Path) -> np.ndarray:
        """:meth:`load_image` as a numpy array (no torch needed)."""
        from meddx.data.contract import load_input_array

        return load_input_array(path, self.meta, self._notices)

    def predict_tensor(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        """Class probabilities for a batch of raw images (the checkpoint's stored dtype and range)."""
        return self.runtime.predict(images)

    def predict_files(self, paths: list[str | Path], out_dir: str | Path | None = None) -> list[dict[str, Any]]:
        """One dict per file; tasks with file outputs (segmentation masks) write them to ``out_dir``."""
        if self.runtime.name != "torch":  # a classification run (checked above): no task object, no torch
            from meddx.tasks.classification_files import classify_files

            return classify_files(self, paths, self.meta["kind"])
        return self.task.predict_files(self, paths, out_dir)
