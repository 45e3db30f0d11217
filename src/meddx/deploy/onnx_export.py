"""ONNX export with the preprocessing folded in, verification against PyTorch, and ONNX Runtime inference.

The exported graph takes the raw image in its stored range and dtype (uint8 0..255 for 8-bit data) with a
dynamic batch axis, and returns probabilities: ``Normalization`` and the task's softmax/sigmoid are part of
the graph, so a deployment needs nothing but ONNX Runtime and the file. The checkpoint metadata travels in
the ONNX ``metadata_props`` (key ``meddx``), so :class:`OnnxPredictor` needs only the ``.onnx`` file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from meddx.data.augment import Normalization
from meddx.errors import MeddxError
from meddx.models.onnx_io import (  # noqa: F401  (re-exported: the ONNX file and session helpers)
    META_KEY,
    ONNX_NAMES,
    OnnxPredictor,
    find_onnx,
    ort_run,
    ort_session,
    read_meta,
    set_meta,
)
from meddx.utils.io import atomic_path

OPSET = 17


class DeployWrapper(nn.Module):
    """raw image (stored dtype/range) -> normalise -> network -> probabilities, as one traceable module."""

    def __init__(self, model: nn.Module, norm: Normalization, multi_label: bool) -> None:
        super().__init__()
        self.model = model
        mean = torch.tensor(norm.mean, dtype=torch.float32)
        std = torch.tensor(norm.std, dtype=torch.float32)
        # (raw * scale - mean) / std == raw * a + b: one Mul and one Add in the graph.
        self.register_buffer("a", norm.scale / std)
        self.register_buffer("b", -mean / std)
        self.multi_label = multi_label

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (raw.ndim - 2)
        x = raw.to(torch.float32) * self.a.view(view) + self.b.view(view)
        out = self.model(x)
        return torch.sigmoid(out) if self.multi_label else torch.softmax(out, dim=1)


def wrap_for_deploy(model: nn.Module, meta: dict[str, Any]) -> DeployWrapper:
    """The deployable module for a checkpoint's model and metadata (classification tasks)."""
    from meddx.kinds import MULTI_LABEL

    if meta.get("task", "classification") != "classification":
        raise MeddxError(f"ONNX export folds classification probabilities; task {meta.get('task')!r} "
                         "is not supported yet")
    return DeployWrapper(model.eval(), Normalization(**meta["normalization"]), meta["kind"] == MULTI_LABEL)


def example_input(meta: dict[str, Any], batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A random raw batch in the model's stored input range and dtype."""
    gen = torch.Generator().manual_seed(seed)
    shape = (batch, meta["in_channels"], *meta["image_shape"])
    if meta.get("input_dtype", "uint8") == "uint8":
        return torch.randint(0, 256, shape, generator=gen, dtype=torch.uint8)
    return torch.rand(shape, generator=gen)


def export_onnx(model: nn.Module, meta: dict[str, Any], path: str | Path, opset: int = OPSET) -> Path:
    """Write ``model`` (+ folded preprocessing and probabilities) to ``path`` with a dynamic batch axis."""
    import onnx

    wrapper = wrap_for_deploy(model, meta).cpu()
    x = example_input(meta)
    path = Path(path)
    with atomic_path(path) as tmp:
        # TorchScript-based exporter (dynamo=False): folds BatchNorm into the convolutions and gives a
        # plain graph that ORT's quantizer handles; the dynamo exporter needs onnxscript rewrites for that.
        torch.onnx.export(wrapper, (x,), str(tmp), input_names=["image"], output_names=["probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=opset, do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        set_meta(proto, meta)
        onnx.save(proto, str(tmp))
    return path


def verify_onnx(model: nn.Module, meta: dict[str, Any], path: str | Path, images: torch.Tensor | None = None,
                tol: float | None = 1e-4) -> float:
    """Max abs difference of ORT vs PyTorch probabilities on ``images``; raise if above ``tol``."""
    x = images if images is not None else example_input(meta, batch=8)
    with torch.no_grad():
        ref = wrap_for_deploy(model, meta).cpu()(x).numpy()
    diff = float(np.abs(ort_run(ort_session(path), x) - ref).max())
    if tol is not None and diff > tol:
        raise MeddxError(f"ONNX outputs differ from PyTorch by {diff:.2e} (> {tol:.0e})", path)
    return diff
