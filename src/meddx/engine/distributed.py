"""Data-parallel training on ``torch.distributed`` (DDP): the process group, sharding, gathering, rank-0 writes.

A run launched by ``torchrun`` (or ``meddx train --nproc N``, which calls torchrun's API) has ``WORLD_SIZE``
and ``RANK`` in its environment; :func:`setup` then joins the process group (gloo on CPU, NCCL on GPU) with a
timeout, so a collective whose peer died fails within :func:`timeout_s` seconds instead of hanging. A plain
``meddx train`` has no such variables and none of this code changes it.

How the engine's loop is made data-parallel without changing it: :class:`DistributedTask` wraps the run's
task (the Task protocol is all the loop sees).

- **Sharding.** Every rank draws the same per-epoch seeded permutation (the loop's generator is seeded with
  the seed and the epoch on every rank) and cuts the same global batches of ``batch_size`` samples; rank r
  trains on ``global_batch.tensor_split(N)[r]``. So one optimiser step sees exactly the single-process run's
  global batch, and the learning rate is the single-process one. Remainder rule: an epoch drops the last
  ``len(train) % batch_size`` samples of its permutation (as the single process does, ``drop_last``); a
  global batch that ``N`` does not divide gives ranks ceil/floor shares, and each rank's loss is weighted by
  its share so that DDP's gradient average is the global batch mean.
- **Augmentation** draws from a per-rank generator derived from the shared one, so ranks do not apply the
  same random transform to different images.
- **BatchNorm.** ``SyncBatchNorm`` has no CPU implementation. Each rank normalises with the statistics of
  its own B/N samples; running statistics are rank 0's (DDP's ``forward_sync_buffers``, formerly
  ``broadcast_buffers``, before every forward, and :func:`broadcast_buffers` before validation), which is
  what rank 0 checkpoints. The accuracy effect
  is measured in ``benchmarks/scale.py``.
- **Validation** of a classifier: each rank scores a contiguous slice of the split, the probabilities are
  gathered in order (padding used for transport only, trimmed: no duplicates) and the metrics computed once
  over the whole split. Other tasks (sliding windows, box decoding) validate on rank 0, result broadcast.

Only rank 0 writes the run folder (:func:`on_main`: run, then a barrier); only rank 0 shows progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from meddx.errors import MeddxError

DEFAULT_TIMEOUT_S = 300  # longest wait of a collective (checkpoint writes on rank 0 sit inside it)


def launched() -> bool:
    """True in a process started by torchrun with more than one rank."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def timeout_s() -> float:
    """Seconds a collective waits for a peer (``MEDDX_DIST_TIMEOUT``, default 300)."""
    return float(os.environ.get("MEDDX_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))


def threads_per_rank() -> int:
    """``MEDDX_THREADS_PER_RANK``, else this machine's cores divided among its local ranks (N x threads <= cores)."""
    if os.environ.get("MEDDX_THREADS_PER_RANK"):
        return max(1, int(os.environ["MEDDX_THREADS_PER_RANK"]))
    return max(1, cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def cores() -> int:
    """CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup(device: torch.device) -> torch.device:
    """Join the process group when launched by torchrun (else do nothing); the device this rank uses."""
    if not launched() or active():
        return _rank_device(device)
    device = _rank_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(threads_per_rank())
    # torchrun shares one store across restarts: a fresh key prefix per restart, else gloo would read the dead
    # workers' addresses and fail to connect
    store, r, world = next(dist.rendezvous("env://", timeout=timedelta(seconds=timeout_s())))
    store = dist.PrefixStore(f"meddx-restart-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=store, rank=r, world_size=world, timeout=timedelta(seconds=timeout_s()))
    return device


def _rank_device(device: torch.device) -> torch.device:
    if device.type == "cuda" and launched() and device.index is None:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def shutdown() -> None:
    """Leave the process group together: a rank that destroys its gloo group while a peer still uses it can
    abort the peer ("terminate called without an active exception", seen once in CI), so all meet first."""
    if active():
        dist.barrier()
        dist.destroy_process_group()


def exit_worker(code: int | str | None) -> None:
    """End a torchrun worker now (``os._exit``) with ``code`` as ``sys.exit`` reads it, after flushing the
    standard streams and logging, skipping the interpreter shutdown that can abort on gloo's threads
    (:mod:`meddx.train`)."""
    import logging

    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(0 if code is None else int(code))


def barrier() -> None:
    if active():
        dist.barrier()


def on_main(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on rank 0 only (the run folder's writes), then let every rank pass a barrier."""
    result = fn(*args, **kwargs) if is_main() else None
    barrier()
    return result


def broadcast_json(obj: Any) -> Any:
    """Rank 0's JSON-able ``obj`` on every rank (sent as UTF-8 bytes in tensors: no pickle)."""
    if not active():
        return obj
    dev = _comm_device()
    data = torch.tensor(list(json.dumps(obj).encode()) if is_main() else [], dtype=torch.uint8, device=dev)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=dev)
    dist.broadcast(size, 0)
    if not is_main():
        data = torch.empty(int(size), dtype=torch.uint8, device=dev)
    dist.broadcast(data, 0)
    return json.loads(bytes(data.cpu().tolist()).decode())


def mean_over_ranks(value: float) -> float:
    """The mean of a float over ranks (e.g. the epoch's training loss)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t) / world_size()


def broadcast_buffers(model: nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank."""
    if active():
        for b in model.buffers():
            dist.broadcast(b.data, 0)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# ---------------------------------------------------------------- sharding and gathering


def shard_bounds(n: int, world: int, r: int) -> tuple[int, int]:
    """Contiguous slice ``[lo, hi)`` of ``n`` items for rank ``r`` of ``world`` (sizes differ by at most one)."""
    base, extra = divmod(n, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (r < extra)


def gather_rows(local: torch.Tensor, n: int) -> torch.Tensor:
    """Concatenate each rank's contiguous shard (from :func:`shard_bounds` of ``n``) in rank order, exactly ``n``
    rows: shards are padded to the largest for ``all_gather`` and the padding is cut off again."""
    if not active():
        return local
    world = world_size()
    sizes = [shard_bounds(n, world, r) for r in range(world)]
    biggest = max(hi - lo for lo, hi in sizes)
    dev = _comm_device()
    padded = torch.zeros((biggest, *local.shape[1:]), dtype=local.dtype, device=dev)
    padded[:len(local)] = local.to(dev)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:hi - lo] for p, (lo, hi) in zip(parts, sizes)]).cpu()


def gather_probabilities(model: nn.Module, task: Any, split: Any, norm: Any, *, device: torch.device,
                         batch_size: int, amp: bool = False) -> tuple[np.ndarray, float]:
    """Class probabilities of the whole ``split`` (every rank scores its slice) and the mean loss."""
    from meddx.models.inference import predict

    broadcast_buffers(model)
    lo, hi = shard_bounds(len(split), world_size(), rank())
    y_score, loss = predict(model, split.images[lo:hi], task, norm, batch_size=batch_size, device=device, amp=amp,
                            labels=split.labels[lo:hi])
    local = torch.from_numpy(y_score).reshape(hi - lo, task.num_outputs)
    total = mean_over_ranks(float(loss or 0.0) * (hi - lo)) * world_size()
    return gather_rows(local, len(split)).numpy(), total / max(len(split), 1)


class DistributedTask:
    """The run's task as the loop sees it under DDP: rank-local batches, a DDP forward, gathered validation.

    Everything else (``monitor``, ``evaluate``, ...) is the wrapped task's.
    """

    def __init__(self, task: Any, model: nn.Module, device: torch.device) -> None:
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.task, self.model = task, model
        # detection/segmentation networks may leave parameters unused in a step; classifiers never do
        ids = [device.index] if device.type == "cuda" else None
        self.ddp = DDP(model, device_ids=ids, forward_sync_buffers=True,  # rank 0's BN running statistics
                       find_unused_parameters=not task.is_classifier)
        self.weight = 1.0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def make_batch(self, split: Any, idx: torch.Tensor, normalize: Any, device: torch.device, policy: Any,
                   generator: torch.Generator | None) -> tuple[Any, Any]:
        """This rank's share of the global batch ``idx``, augmented from a rank-specific generator."""
        world = world_size()
        local = idx.tensor_split(world)[rank()]
        self.weight = len(local) * world / max(len(idx), 1)
        rank_gen = None
        if generator is not None:  # one draw on every rank keeps the shared generator in step
            seed = int(torch.randint(0, 2**62, (1,), generator=generator))
            rank_gen = torch.Generator().manual_seed(seed + rank())
        return self.task.make_batch(split, local, normalize, device, policy, rank_gen)

    def training_loss(self, model: nn.Module, x: Any, y: Any) -> torch.Tensor:
        """The task's loss through the DDP wrapper (gradients all-reduced in ``backward``), share-weighted."""
        if model is not self.model:
            raise MeddxError("DistributedTask trains only the model it wraps")
        return self.task.training_loss(self.ddp, x, y) * self.weight

    def validate(self, model: nn.Module, split: Any, normalize: Any, *, device: torch.device, batch_size: int,
                 amp: bool = False) -> dict[str, float]:
        """Metrics over the whole split, computed once from gathered predictions (classifiers) or on rank 0."""
        if self.task.is_classifier:
            y_score, loss = gather_probabilities(model, self.task, split, normalize, device=device,
                                                 batch_size=batch_size, amp=amp)
            return {"loss": loss, **self.task.quick_metrics(split.labels.numpy(), y_score)}
        broadcast_buffers(model)
        metrics = self.task.validate(model, split, normalize, device=device, batch_size=batch_size,
                                     amp=amp) if is_main() else None
        return broadcast_json(metrics)


def resume_after_restart(cfg: Any, resume: Any) -> Any:
    """After torchrun restarted the workers (``--max-restarts``), continue the named run folder if it exists."""
    from pathlib import Path

    if resume is not None or int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0 or not cfg.name:
        return resume
    folder = Path(cfg.out) / cfg.name
    return folder if (folder / "config.json").is_file() else None


def wrap_task(task: Any, model: nn.Module, device: torch.device, cfg: Any) -> Any:
    """Under DDP: the :class:`DistributedTask` around ``task`` (progress bar on rank 0 only); else ``task``."""
    if not active():
        return task
    if cfg.batch_size < world_size():
        raise MeddxError(f"batch size {cfg.batch_size} is smaller than the {world_size()} processes; use at least "
                         f"--batch-size {world_size()}")
    cfg.progress = cfg.progress and is_main()
    return DistributedTask(task, model, device)


def start_on_main(start: Any, *args: Any) -> Any:
    """Rank 0 creates the run folder (``start(*args)`` returns a ``RunDir``); every rank gets its path."""
    from pathlib import Path

    path = str(start(*args).path) if is_main() else None
    return Path(broadcast_json(path))


PEER_LOST = ("gloo", "nccl", "connection reset", "connection closed", "timed out", "timeout", "broken pipe",
             "processgroup")


def lost_peer(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because a peer died or stalled (not a bug of this rank)."""
    import torch.distributed as td

    return isinstance(exc, td.DistError) or any(k in str(exc).lower() for k in PEER_LOST)


def lost_peer_message(exc: BaseException) -> str:
    """One line for a collective that failed because another rank died or the group timed out."""
    first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
    return (f"rank {rank()}: lost the other training processes ({first}): a rank died, or stalled longer than "
            f"the {timeout_s():g} s timeout (MEDDX_DIST_TIMEOUT); continue with --resume RUN")
