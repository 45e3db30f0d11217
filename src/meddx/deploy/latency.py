"""CPU latency (batch 1) and throughput (batch 64) of a PyTorch module or an ONNX Runtime session.

One function for both runtimes so every row of a comparison is measured the same way: fixed thread count
(``torch.set_num_threads`` / ORT ``intra_op_num_threads``), warm-up calls, then the median of timed calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import torch


def _median_seconds(fn: Callable[[], Any], warmup: int, repeats: int, min_seconds: float) -> float:
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < repeats or (time.perf_counter() - start < min_seconds and len(times) < 10 * repeats):
        tic = time.perf_counter()
        fn()
        times.append(time.perf_counter() - tic)
    return statistics.median(times)


def measure_latency(model: Any, example: torch.Tensor, threads: int = 2, batch: int = 64,
                    repeats_1: int = 30, repeats_n: int = 5) -> dict[str, float]:
    """``latency_ms`` at batch 1 and ``images_per_s`` at ``batch`` for a torch module or an ORT session.

    ``example`` is one raw image batch (N >= 1) in the model's input dtype; it is repeated to ``batch``.
    A torch module receives it as is (wrap it with its preprocessing); an ORT session as a NumPy array.
    """
    one = example[:1]
    many = one.repeat(batch, *([1] * (one.ndim - 1)))
    if hasattr(model, "get_inputs"):  # an onnxruntime.InferenceSession (its threads are set at creation)
        name = model.get_inputs()[0].name
        a1, an = one.numpy(), many.numpy()

        def run1() -> Any:
            return model.run(None, {name: a1})

        def run_n() -> Any:
            return model.run(None, {name: an})
    else:
        model.eval()

        def run1() -> Any:
            with torch.inference_mode():
                return model(one)

        def run_n() -> Any:
            with torch.inference_mode():
                return model(many)

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        t1 = _median_seconds(run1, warmup=5, repeats=repeats_1, min_seconds=1.0)
        tn = _median_seconds(run_n, warmup=2, repeats=repeats_n, min_seconds=2.0)
    finally:
        torch.set_num_threads(old)
    return {"latency_ms": 1000.0 * t1, "images_per_s": batch / tn, "threads": threads, "batch": batch}


def file_mb(path: Any) -> float:
    """File size in MB (10^6 bytes)."""
    from pathlib import Path

    return Path(path).stat().st_size / 1e6


def weights_mb(path: Any) -> float:
    """Bytes of the model weights in a meddx checkpoint (optimiser state of a ``last`` checkpoint excluded)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return sum(_nbytes(f.get_slice(k)) for k in f.keys() if k.startswith("model.")) / 1e6


def _nbytes(tensor_slice: Any) -> int:
    import math

    sizes = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1, "F64": 8}
    return math.prod(tensor_slice.get_shape()) * sizes.get(tensor_slice.get_dtype(), 4)


def zipped_mb(path: Any) -> float:
    """Size after DEFLATE compression: what zero weights from unstructured pruning save in storage."""
    import zlib
    from pathlib import Path

    return len(zlib.compress(Path(path).read_bytes(), 6)) / 1e6


def count_parameters(model: torch.nn.Module) -> dict[str, int]:
    """Total and non-zero parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    nonzero = sum(int(torch.count_nonzero(p)) for p in model.parameters())
    return {"params": int(total), "nonzero_params": int(nonzero)}

