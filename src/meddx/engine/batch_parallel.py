"""``meddx predict RUN --input ... --output ... --nproc N``: the archive scored by N worker processes.

The parent opens the job as one process would (:func:`meddx.engine.batch_predict.open_job`, on the CPU: it only
needs the classes and the pending files), splits the pending files into N contiguous shards (a fresh run's
merged output keeps the input order) and starts N processes with the "spawn" context (no torchrun: inference
needs no process group). Worker ``k`` opens its own runtime (``cuda:{k % GPUs}`` when the device is cuda/auto
and GPUs exist; on CPU a ``cores // N`` share of the cores, split by
:func:`meddx.engine.batch_read.plan_workers`) and appends its rows to its own rank table
(:mod:`meddx.engine.batch_output`). Workers report row counts on a queue that feeds the parent's progress bar;
the parent polls the processes, so a worker that dies fails the job with one line (its rows are kept for the
rerun) instead of hanging. At the end the parent's table merges every rank's rows into the output.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meddx.engine.batch_predict import BatchSummary, open_job, predict_archive, workers_score
from meddx.errors import MeddxError

POLL_S = 0.2  # how often the parent looks at the processes while no message comes
JOIN_S = 30.0  # a worker that said it is done and does not exit within this is terminated


def predict_parallel(run: str | Path, inputs: str | Path, output: str | Path, *, nproc: int = 1,
                     runtime: str = "auto", device: str = "auto", batch_size: int = 256,
                     workers: int | None = None, progress: bool = True) -> BatchSummary:
    """:func:`predict_archive` over ``nproc`` processes (capped at the pending files; 1 is the one-process
    job itself)."""
    import time

    if nproc < 1:
        raise MeddxError(f"--nproc must be at least 1; got {nproc}")
    kwargs = dict(runtime=runtime, device=device, batch_size=batch_size, workers=workers, progress=progress)
    if nproc == 1:
        return predict_archive(run, inputs, output, **kwargs)
    job = open_job(run, inputs, output, runtime, "cpu")
    nproc = min(nproc, len(job.pending))
    if nproc <= 1:  # nothing or one file left: one process (it also merges leftover rank tables)
        return predict_archive(run, inputs, output, **kwargs)
    del job.rt  # the workers open their own
    t0 = time.time()
    shards = [job.pending[len(job.pending) * k // nproc:len(job.pending) * (k + 1) // nproc] for k in range(nproc)]
    scoring = workers_score(runtime, run, device)
    plans = [_plan(k, nproc, device, workers, scoring) for k in range(nproc)]
    written, errors = _drive(run, output, runtime, batch_size, shards, plans, progress, len(job.pending))
    out = job.table.close()  # merges the rank tables into the output
    return job.summary(out, written, errors, time.time() - t0)


def _plan(rank: int, nproc: int, device: str, workers: int | None, scoring: bool) -> dict[str, Any]:
    """Rank ``rank``'s device, model threads and reading workers (:func:`meddx.engine.batch_read.plan_workers`
    over the rank's share of the cores)."""
    from meddx.engine.batch_read import plan_workers
    from meddx.engine.distributed import cores
    from meddx.utils.runtime import pick_device

    share = max(1, cores() // nproc)
    picked = pick_device(device)  # a device this machine lacks is one error line here, before any worker starts
    decoders, threads = plan_workers(workers, scoring, share)
    if device in ("auto", "cuda") and picked.type == "cuda":  # "cuda:1" given explicitly: every rank uses it
        import torch

        device = f"cuda:{rank % torch.cuda.device_count()}"
    return {"device": device, "threads": threads, "decoders": decoders, "scoring": scoring}


def _drive(run, output, runtime, batch_size, shards, plans, progress, total) -> tuple[int, int]:
    """Start one process per shard, feed the progress bar from their messages, fail fast when one dies."""
    import multiprocessing as mp

    from meddx.engine.batch_predict import _bar, _print_notices

    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    procs = [ctx.Process(target=_worker, name=f"meddx-predict-{k}",
                         args=(k, run, output, runtime, batch_size, shard, plan, messages))
             for k, (shard, plan) in enumerate(zip(shards, plans))]
    finished: dict[int, tuple[int, int]] = {}
    said: set[str] = set()

    def handle(msg: tuple) -> None:
        if msg[0] == "rows":
            _print_notices(msg[3], said)
            advance(msg[1])
        elif msg[0] == "done":
            finished[msg[1]] = (msg[2], msg[3])
        else:  # "error": the worker's one-line reason
            raise MeddxError(f"worker {msg[1]}: {msg[2]} (rows written so far are kept: rerun to continue)", output)

    try:
        with _no_sigint():  # not daemonic: a worker may have DataLoader decoding processes of its own
            for p in procs:
                p.start()
        with _bar(total, progress) as advance:
            while len(finished) < len(procs):
                try:
                    handle(messages.get(timeout=POLL_S))
                except queue.Empty:
                    ended = [k for k, p in enumerate(procs) if p.exitcode is not None and k not in finished]
                    if ended:
                        _drain(messages, handle)  # its last messages ("done" or "error") may still be in the pipe
                        _check(procs, finished, output)
        for p in procs:
            p.join(JOIN_S)
    finally:
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(JOIN_S)
        messages.close()
    return sum(w for w, _ in finished.values()), sum(e for _, e in finished.values())


@contextmanager
def _no_sigint() -> Iterator[None]:
    """Start the workers with Ctrl-C ignored (inherited through exec, so even while they import torch): Ctrl-C
    reaches the whole process group, and the parent alone answers it, ending the workers without tracebacks."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _drain(messages: Any, handle: Any) -> None:
    # a process's messages reach the pipe before it exits (its queue's feeder thread is joined at exit), so
    # reading until one poll period passes empty sees all of them
    while True:
        try:
            handle(messages.get(timeout=POLL_S))
        except queue.Empty:
            return


def _check(procs: list, finished: dict[int, tuple[int, int]], output: str | Path) -> None:
    """Fail when a worker ended (killed, crashed) without saying it finished."""
    for k, p in enumerate(procs):
        if p.exitcode is not None and k not in finished:
            code = p.exitcode
            how = f"exit code {code}" if code >= 0 else f"signal {-code}"
            raise MeddxError(f"worker {k} died ({how}); rows written so far are kept: rerun to continue", output)


def _worker(rank: int, run: str, output: str, runtime: str, batch_size: int, paths: list[str],
            plan: dict[str, Any], messages: Any) -> None:
    """One rank: its own runtime and rank table; messages ("rows", n, errors, notices), then ("done", rank,
    written, errors) or ("error", rank, reason)."""
    import multiprocessing as mp
    import sys

    import torch

    from meddx.data.pixels import first_line
    from meddx.engine.batch_output import open_table
    from meddx.engine.batch_predict import Job, score
    from meddx.runtimes import open_runtime
    from meddx.tasks import task_from_meta

    parent = mp.parent_process()

    def on_batch(rows: int, errors: int, notices: list[str]) -> None:
        messages.put(("rows", rows, errors, notices))
        if parent is not None and not parent.is_alive():  # the parent was killed: stop, the rerun continues
            sys.exit(1)

    try:
        torch.set_num_threads(plan["threads"])
        rt = open_runtime(runtime, run, device=plan["device"], threads=plan["threads"])
        classes = list(rt.meta["classes"])
        table = open_table(output, classes, rank=rank)
        job = Job(rt, task_from_meta(rt.meta), classes, table, paths, paths, str(run), plan["scoring"])
        written, errors = score(job, table, paths, batch_size, plan["decoders"], on_batch)
        table.close()
    except MeddxError as exc:
        messages.put(("error", rank, str(exc)))
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - any failure is reported to the parent as one line
        messages.put(("error", rank, f"{type(exc).__name__}: {first_line(exc)}"))
        sys.exit(1)
    messages.put(("done", rank, written, errors))
