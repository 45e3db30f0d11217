"""``Predictor``: a trained run applied to image files (PNG/JPEG/``.npy``), preprocessing from its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.augment import Normalization
from meddx.engine.checkpoint import load_model
from meddx.engine.loop import predict
from meddx.engine.run import RunDir
from meddx.errors import MeddxError
from meddx.tasks import task_from_meta
from meddx.utils.runtime import pick_device


class Predictor:
    """Loads a checkpoint once; ``predict_files`` returns one dict per image."""

    def __init__(self, checkpoint: str | Path, device: str = "auto", runtime: str = "torch") -> None:
        path = Path(checkpoint)
        self.onnx = None
        if runtime not in ("torch", "onnx"):
            raise MeddxError(f"runtime must be torch or onnx, got {runtime!r}")
        if runtime == "onnx":  # ONNX Runtime on CPU; preprocessing is inside the exported graph
            from meddx.deploy.onnx_export import OnnxPredictor

            self.onnx = OnnxPredictor(path)
            self.meta, self.classes = self.onnx.meta, self.onnx.meta["classes"]
            return
        if path.is_dir():
            path = RunDir.open(path).model_checkpoint()
        self.device = pick_device(device)
        self.model, self.meta = load_model(path, self.device)
        self.task = task_from_meta(self.meta)
        self.norm = Normalization(**self.meta["normalization"])
        self.classes: list[str] = self.meta["classes"]

    def load_image(self, path: str | Path) -> torch.Tensor:
        """Read one file and conform it to the checkpoint's input (meddx.data.contract); notices once each."""
        from meddx.data.contract import load_input

        return load_input(path, self.meta, self.__dict__.setdefault("_notices", set()))

    def predict_tensor(self, images: torch.Tensor) -> np.ndarray:
        if self.onnx is not None:
            return self.onnx.predict(images)
        y_score, _ = predict(self.model, images, self.task, self.norm, device=self.device)
        return y_score

    def predict_files(self, paths: list[str | Path], out_dir: str | Path | None = None) -> list[dict[str, Any]]:
        """One dict per file; tasks with file outputs (segmentation masks) write them to ``out_dir``."""
        if self.onnx is None and hasattr(self.task, "predict_files"):
            return self.task.predict_files(self, paths, out_dir)
        if not paths:
            raise MeddxError("no image files given")
        images = torch.stack([self.load_image(p) for p in paths])
        probs = self.predict_tensor(images)
        return [self.describe(str(p), row) for p, row in zip(paths, probs)]

    def describe(self, name: str, probs: np.ndarray) -> dict[str, Any]:
        from meddx.tasks.classification import MULTI_LABEL

        out: dict[str, Any] = {"file": name, "probabilities": {c: float(v) for c, v in zip(self.classes, probs)}}
        if self.meta["task_kind"] == MULTI_LABEL:
            out["labels"] = [c for c, v in zip(self.classes, probs) if v > 0.5]
        else:
            k = int(np.argmax(probs))
            out["label"], out["probability"] = self.classes[k], float(probs[k])
        return out
