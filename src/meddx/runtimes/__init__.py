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


def default_runtime(checkpoint: Path, meta: dict[str, Any] | None) -> str:
    """For the run ``checkpoint`` belongs to: ``int8`` for an int8-compressed run (ptq/qat) that ships
    ``model_int8.onnx``; ``onnx`` when its ``model.onnx`` was exported from this very checkpoint (``export.json``
    records that file's sha256) and ONNX Runtime is installed; else ``torch``."""
    folder = checkpoint.parent
    compressed = ((meta or {}).get("compression") or {}).get("method") in INT8_COMPRESSION
    if compressed and (folder / "model_int8.onnx").is_file():
        return "int8"
    return "onnx" if _exported_from(checkpoint) else "torch"


def _exported_from(checkpoint: Path) -> bool:
    import importlib.util
    import json

    from meddx.utils.io import file_digest

    folder = checkpoint.parent
    try:
        record = json.loads((folder / "export.json").read_text())
    except (OSError, ValueError):
        return False
    # the file name and its bytes, not the path: a run folder may have been moved or copied since the export
    return (Path(record.get("checkpoint", "")).name == checkpoint.name and (folder / "model.onnx").is_file()
            and record.get("checkpoint_sha256") == file_digest(checkpoint, "sha256")
            and importlib.util.find_spec("onnxruntime") is not None)


def resolve(name: str, source: str | Path) -> str:
    """The runtime ``name`` stands for on ``source``: ``auto`` by :func:`default_runtime` from the checkpoint's
    metadata (read without torch), ``onnx`` for a ``.onnx`` file given directly."""
    name = check_runtime(name)
    if name != "auto":
        return name
    path = Path(source)
    if path.suffix == ".onnx":
        return "onnx"
    from meddx.utils.checkpoints import read_meta

    ckpt = _checkpoint(path)
    return default_runtime(ckpt, read_meta(ckpt))


def source_meta(source: str | Path) -> dict[str, Any]:
    """The metadata of a run folder's checkpoint, a checkpoint or a ``.onnx`` file, without loading the model."""
    path = Path(source)
    if path.suffix == ".onnx":
        from meddx.models.onnx_io import read_meta as onnx_meta

        return onnx_meta(path)
    from meddx.utils.checkpoints import read_meta

    return read_meta(_checkpoint(path))


def _checkpoint(path: Path) -> Path:
    """``path`` itself if it is a file, else the checkpoint its run folder's ``select`` setting names."""
    from meddx.engine.run import RunDir

    return path if path.is_file() else RunDir.open(path).model_checkpoint()


def open_runtime(name: str, source: str | Path, device: str = "auto", loaded: Any = None,
                 threads: int | None = None) -> Any:
    """Open runtime ``name`` (``auto``: :func:`resolve`) on a run folder or a model file. ``loaded``: an open
    ``torch`` runtime of the same run, reused rather than loading the checkpoint again. ``threads``: intra-op
    threads of a runtime with its own thread pool (ONNX Runtime); PyTorch's are the process's
    (``torch.set_num_threads``), the caller's to set."""
    name = resolve(name, source)
    if name == "torch" and loaded is not None:
        return loaded
    return _open(name, source, device, threads)


def _open(name: str, source: str | Path, device: str, threads: int | None = None) -> Any:
    module, cls = RUNTIMES[name].split(":")
    extra = {"threads": threads} if threads and name != "torch" else {}
    return getattr(importlib.import_module(module), cls)(source, device=device, **extra)
