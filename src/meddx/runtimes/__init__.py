"""Runtimes: what executes a trained run's network on raw images (PyTorch, ONNX Runtime fp32, ONNX Runtime int8).

One small registry shared by ``predict``, ``evaluate``, ``explain`` and the HTTP server. A runtime is
opened on a run folder (or a model file) and offers ``predict(raw_images) -> probabilities``, ``label`` (what
reports and ``metrics.json`` print), ``files`` (the files it loaded) and ``meta`` (the checkpoint metadata).
To add one: a small module with a class of that shape, plus one row in :data:`RUNTIMES`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from meddx.errors import MeddxError

# name -> "module:class" (imported on first use: onnxruntime is heavy and optional)
RUNTIMES = {
    "torch": "meddx.runtimes.torch_runtime:TorchRuntime",
    "onnx": "meddx.runtimes.onnx_runtime:OnnxRuntime",
    "int8": "meddx.runtimes.onnx_runtime:Int8Runtime",
}
INT8_COMPRESSION = ("ptq", "qat")


def runtime_names() -> list[str]:
    return list(RUNTIMES)


def check_runtime(name: str) -> str:
    """``name`` if it is ``auto`` or a registered runtime, else a one-line error listing them."""
    if name != "auto" and name not in RUNTIMES:
        raise MeddxError(f"runtime must be auto, {', '.join(RUNTIMES)}; got {name!r}")
    return name


def default_runtime(source: str | Path, meta: dict[str, Any] | None) -> str:
    """``int8`` for an int8-compressed run (ptq/qat) that ships ``model_int8.onnx``, else ``torch``."""
    folder = Path(source)
    folder = folder.parent if folder.is_file() else folder
    compressed = ((meta or {}).get("compression") or {}).get("method") in INT8_COMPRESSION
    return "int8" if compressed and (folder / "model_int8.onnx").is_file() else "torch"


def open_runtime(name: str, source: str | Path, device: str = "auto", loaded: Any = None) -> Any:
    """Open runtime ``name`` on a run folder or a model file.

    ``auto``: :func:`default_runtime` from the checkpoint's metadata (``onnx`` for a ``.onnx`` file given
    directly). ``loaded``: an open ``torch`` runtime of the same run, reused rather than loading the checkpoint
    again (``auto`` needs it for the metadata anyway).
    """
    name = check_runtime(name)
    if name == "auto" and Path(source).suffix == ".onnx":
        name = "onnx"
    if name in ("auto", "torch"):
        loaded = loaded if loaded is not None else _open("torch", source, device)
        if name == "torch" or default_runtime(source, loaded.meta) == "torch":
            return loaded
        name = "int8"
    return _open(name, source, device)


def _open(name: str, source: str | Path, device: str) -> Any:
    module, cls = RUNTIMES[name].split(":")
    return getattr(importlib.import_module(module), cls)(source, device=device)
