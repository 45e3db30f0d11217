"""ONNX Runtime on CPU: the run's exported ``model.onnx`` (fp32) or ``model_int8.onnx`` (int8).

Preprocessing and the softmax/sigmoid are inside the exported graph, so the runtime takes raw images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meddx.errors import MeddxError
from meddx.models.onnx_io import OnnxPredictor


class OnnxRuntime:
    """``model.onnx`` of a run folder (or any meddx ``.onnx`` file given directly)."""

    name = "onnx"
    label = "onnxruntime fp32"
    file_name = "model.onnx"
    hint = "create it with `meddx export RUN`"

    def __init__(self, source: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.predictor = OnnxPredictor(self._model_file(Path(source)), threads=threads)
        self.meta = self.predictor.meta
        self.files = [self.predictor.path]

    def _model_file(self, path: Path) -> Path:
        if path.is_file() and path.suffix == ".onnx":
            return path
        folder = path.parent if path.is_file() else path
        candidate = folder / self.file_name
        if not candidate.is_file():
            raise MeddxError(f"run has no {self.file_name} for runtime {self.name} ({self.hint})", folder)
        return candidate

    def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
        return self.predictor.predict(images, batch_size)


class Int8Runtime(OnnxRuntime):
    """``model_int8.onnx``: written by ``meddx export --int8`` and by ``meddx compress --method ptq|qat``."""

    name = "int8"
    label = "onnxruntime int8"
    file_name = "model_int8.onnx"
    hint = "create it with `meddx export RUN --int8` or `meddx compress RUN --method ptq`"
