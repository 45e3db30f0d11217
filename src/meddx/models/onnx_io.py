"""ONNX model files and ONNX Runtime sessions: meddx metadata in ``metadata_props``, CPU sessions, batched runs.

Below the engine and the deploy tools, so that runtimes (``meddx.runtimes``) and the exporter share it. Running a
model imports neither torch nor onnx (the metadata comes from the ONNX Runtime session), so ``meddx predict``
with an ONNX runtime starts fast.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from meddx.errors import MeddxError
from meddx.utils.checkpoints import upgrade_meta

META_KEY = "meddx"


def set_meta(proto: Any, meta: dict[str, Any]) -> None:
    """Store the meddx metadata in an ONNX model's ``metadata_props``."""
    for p in list(proto.metadata_props):
        if p.key == META_KEY:
            proto.metadata_props.remove(p)
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


def read_meta(path: str | Path) -> dict[str, Any]:
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises several protobuf/decoding errors
        raise MeddxError(f"not a readable ONNX model ({exc})", path) from None
    props = {p.key: p.value for p in proto.metadata_props}
    if META_KEY not in props:
        raise MeddxError("ONNX model has no meddx metadata (not exported by meddx)", path)
    return upgrade_meta(json.loads(props[META_KEY]))


def session_meta(session: Any, path: str | Path) -> dict[str, Any]:
    """The meddx metadata of the model an ORT session runs (read by ONNX Runtime: no ``import onnx``)."""
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise MeddxError("ONNX model has no meddx metadata (not exported by meddx)", path)
    return upgrade_meta(json.loads(props[META_KEY]))


def ort_session(path: str | Path, threads: int | None = None, optimized_path: str | Path | None = None):
    """An ONNX Runtime CPU session (``threads`` intra-op threads, full graph optimisation)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        raise MeddxError(f"ONNX Runtime cannot load the model ({str(exc).splitlines()[0]})", path) from None


def as_numpy(images: Any) -> np.ndarray:
    """A CPU torch tensor or any array as numpy, without importing torch."""
    return images.numpy() if hasattr(images, "numpy") and not isinstance(images, np.ndarray) else np.asarray(images)


def ort_run(session: Any, images: Any, batch_size: int = 256) -> np.ndarray:
    """Probabilities for a raw batch (numpy or a CPU tensor) through an ORT session, in chunks of ``batch_size``."""
    x = as_numpy(images)
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i:i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.zeros((0, 0), np.float32)


class OnnxPredictor:
    """A meddx ONNX model in ONNX Runtime: ``predict(raw_images) -> probabilities``; metadata from the file."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = find_onnx(path)
        self.session = ort_session(self.path, threads)
        self.meta = session_meta(self.session, self.path)

    def predict(self, images: Any, batch_size: int = 256) -> np.ndarray:
        x = as_numpy(images)
        want = np.uint8 if self.meta.get("input_dtype", "uint8") == "uint8" else np.float32
        return ort_run(self.session, x.astype(want, copy=False), batch_size)


ONNX_NAMES = ("model_int8.onnx", "model.onnx")


def find_onnx(path: str | Path) -> Path:
    """``path`` itself if it is a file, else the run folder's int8 model, else its fp32 model."""
    p = Path(path)
    if p.is_file() and p.suffix == ".safetensors":
        p = p.parent
    if p.is_dir():
        for name in ONNX_NAMES:
            if (p / name).is_file():
                return p / name
        raise MeddxError("run has no ONNX model (create one with `meddx export RUN`)", p)
    if not p.is_file():
        raise MeddxError("ONNX model not found", p)
    return p
