"""Reading an archive's files for a batch job, in ``torch.utils.data.DataLoader`` worker processes.

Two layouts (:func:`plan_workers`; :func:`meddx.engine.batch_predict.workers_score` picks):

- **a 2D model on the CPU** (PyTorch on CPU, ONNX Runtime): each worker reads a whole batch of files *and*
  scores it with its own copy of the runtime (:class:`ScoredBatches`), one model thread per worker, so every
  core runs the model and decoding overlaps with scoring across workers. A model of 28-px images costs ~0.6 ms
  an image and a small PNG ~0.2 ms to read (2-core machine, ``benchmarks/scale.py``): one decoding process
  feeding one model thread left the decoder idle three quarters of the time;
- **a model on a GPU, or of 3D volumes**: workers only decode (:class:`FileDataset`), the main process runs the
  model (CUDA cannot be used from forked workers, and one GPU is faster than any number of CPU copies; a 3D
  network's activations are too large to hold once per core).

Either way the loader yields ``(probabilities, paths, error messages, notices)`` per batch, in input order.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from meddx.errors import MeddxError

# images per model call on the CPU: small batches keep a network's activations in cache (resnet18_slim at 28 px, 1
# thread: 0.76 ms an image in batches of 16-32, 0.98 ms in batches of 256; ONNX Runtime 0.53 vs 0.57 ms). 32
# images up to 64 x 64, fewer above, one from ~360 x 360: one copy of the model per core must not hold the
# activations of hundreds of large images
CHUNK_IMAGES, CHUNK_PIXELS = 32, 32 * 64 * 64


def model_chunk(image_shape: list[int] | tuple[int, ...]) -> int:
    """Images per model call for inputs of ``image_shape`` (spatial, without channels)."""
    return max(1, min(CHUNK_IMAGES, CHUNK_PIXELS // max(1, int(np.prod(image_shape)))))


def plan_workers(workers: int | None, scoring: bool, cores: int) -> tuple[int, int]:
    """(worker processes, model threads of the main process) for a job with ``cores`` cores.

    ``scoring`` (a 2D model on the CPU): one scoring worker per core by default, one model thread each (a forked
    PyTorch must not start OpenMP threads; the parent may have); 0 workers, the default on one core, reads and
    scores in the main process with every core. Otherwise: a quarter of the cores decode (at least one), the
    rest are the main process's model threads."""
    if scoring:
        n = (cores if cores > 1 else 0) if workers is None else max(0, workers)
        return n, 1 if n else cores
    n = max(1, cores // 4) if workers is None else max(0, workers)
    return n, max(1, cores - n)


class FileDataset(torch.utils.data.Dataset):
    """Files -> (tensor or None, path, error message, notice texts), read by the one reader."""

    def __init__(self, paths: list[str], meta: dict[str, Any]) -> None:
        self.paths, self.meta = paths, meta

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | None, str, str, list[str]]:
        from meddx.data.contract import read_input
        from meddx.data.pixels import first_line

        path = self.paths[i]
        try:
            tensor, notices = read_input(path, self.meta)
        except MeddxError as exc:  # the row names the file: keep only the problem
            text = str(exc)
            return None, path, text.split(": ", 1)[1] if exc.path and text.startswith(exc.path) else text, []
        except Exception as exc:  # noqa: BLE001 - any decoder failure on one file is that file's error row
            return None, path, first_line(exc), []
        return tensor, path, "", [f"{n.kind}\t{n.text}" for n in notices]


def collate(items: list[tuple]) -> tuple[torch.Tensor | None, list[str], list[str], list[str]]:
    """Stack the readable images; keep every path (in order) with its error message ('' when read)."""
    tensors = [t for t, *_ in items if t is not None]
    notices = [n for *_, ns in items for n in ns]
    return (torch.stack(tensors) if tensors else None, [p for _, p, _, _ in items], [e for _, _, e, _ in items],
            notices)


def probabilities(rt: Any, images: torch.Tensor | None, n_classes: int) -> np.ndarray:
    """The runtime's probabilities for a batch (none read: an empty table); on the CPU in calls of
    :func:`model_chunk`, on a GPU in one call."""
    if images is None:
        return np.zeros((0, n_classes), np.float32)
    on_gpu = getattr(getattr(rt, "device", None), "type", "cpu") != "cpu"
    return rt.predict(images, batch_size=len(images) if on_gpu else model_chunk(images.shape[2:]))


class ScoredBatches(torch.utils.data.Dataset):
    """Batch ``k`` of the files -> (probabilities, paths, errors, notices), read and scored in the worker process
    that gets it, with one model thread. Each worker opens its own runtime on first use (a forked copy of an ONNX
    Runtime session is not safe to use; the parent has imported the modules already, so opening costs ~0.05 s)."""

    def __init__(self, paths: list[str], batch_size: int, meta: dict[str, Any], run: str, runtime: str) -> None:
        self.paths, self.batch_size, self.meta = paths, batch_size, meta
        self.run, self.runtime = str(run), runtime
        self.rt: Any = None

    def __len__(self) -> int:
        return -(-len(self.paths) // self.batch_size)

    def __getitem__(self, k: int) -> tuple[np.ndarray, list[str], list[str], list[str]]:
        if self.rt is None:
            from meddx.runtimes import open_runtime

            torch.set_num_threads(1)
            self.rt = open_runtime(self.runtime, self.run, device="cpu", threads=1)
        files = FileDataset(self.paths[k * self.batch_size:(k + 1) * self.batch_size], self.meta)
        images, names, errs, notices = collate([files[i] for i in range(len(files))])
        return probabilities(self.rt, images, len(self.meta["classes"])), names, errs, notices


def _one_thread(_: int) -> None:
    torch.set_num_threads(1)  # decoding workers: the main process's threads run the model


def scored_batches(paths: list[str], meta: dict[str, Any], batch_size: int, n_workers: int, *, rt: Any,
                   run: str, scoring: bool):
    """``(probabilities, paths, errors, notices)`` per batch of ``paths``, in order (see the module docstring);
    ``n_workers`` 0: read and scored in this process by ``rt``."""
    loader = torch.utils.data.DataLoader
    n_workers = min(n_workers, -(-len(paths) // batch_size))  # a worker takes whole batches: none left idle
    if n_workers and scoring:
        yield from loader(ScoredBatches(paths, batch_size, meta, run, rt.name), batch_size=None,
                          num_workers=n_workers, prefetch_factor=2, persistent_workers=False)
        return
    decoded = loader(FileDataset(paths, meta), batch_size=batch_size, num_workers=n_workers, collate_fn=collate,
                     worker_init_fn=_one_thread if n_workers else None, prefetch_factor=2 if n_workers else None,
                     persistent_workers=False)
    for images, names, errs, notices in decoded:
        yield probabilities(rt, images, len(meta["classes"])), names, errs, notices
