"""Class probabilities for image files, without torch: shared by the classification task (any runtime) and the
ONNX/int8 prediction path, which starts without importing PyTorch at all."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meddx.errors import MeddxError
from meddx.kinds import MULTI_LABEL


def classify_files(predictor: Any, paths: list[str | Path], kind: str) -> list[dict[str, Any]]:
    """One dict per file: the probabilities and the predicted label (labels above 0.5 for multi-label).

    ``predictor`` offers ``load_array(path)`` (the file conformed to the run's input, as numpy),
    ``predict_tensor(batch)`` (probabilities) and ``classes``.
    """
    if not paths:
        raise MeddxError("no image files given")
    images = np.stack([predictor.load_array(p) for p in paths])
    probs = predictor.predict_tensor(images)
    return [describe(str(p), row, predictor.classes, kind) for p, row in zip(paths, probs)]


def describe(name: str, probs: np.ndarray, classes: list[str], kind: str) -> dict[str, Any]:
    """The result of one image: probabilities by class name, and the label (``labels`` for multi-label)."""
    out: dict[str, Any] = {"file": name, "probabilities": {c: float(v) for c, v in zip(classes, probs)}}
    if kind == MULTI_LABEL:
        out["labels"] = [c for c, v in zip(classes, probs) if v > 0.5]
    else:
        k = int(np.argmax(probs))
        out["label"], out["probability"] = classes[k], float(probs[k])
    return out
