"""``meddx train --nproc N``: start N DDP workers through torchrun's own API (``torch.distributed.run``).

The workers run ``python -m meddx.train`` with the same training options (minus the launcher's), which is
exactly what ``torchrun --nproc-per-node N -m meddx.train ...`` runs. One machine uses torchrun's
``--standalone`` rendezvous on loopback; several machines use the c10d rendezvous at ``--rdzv-endpoint`` (run
the same command with the same ``--name`` on every machine; the run folder should be on shared storage).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from meddx.engine.distributed import cores
from meddx.errors import MeddxError

LAUNCH_OPTIONS = ("nproc", "nnodes", "rdzv_endpoint", "max_restarts", "evaluate")


def worker_args(ctx: Any, name: str) -> list[str]:
    """The ``meddx train`` options of the click context ``ctx`` as a command line for the workers: every option
    that differs from its default (launcher options dropped; ``--name`` fixed so that all ranks and restarts
    use one run folder; the launcher evaluates afterwards, so the workers do not)."""
    args: list[str] = ["--name", name, "--no-evaluate"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in LAUNCH_OPTIONS + ("name",) or value is None or value == param.default:
            continue
        if getattr(param, "is_flag", False):
            opts = param.opts if value else param.secondary_opts
            if not opts:
                continue
            args.append(opts[0])
        else:
            args += [param.opts[0], str(value)]
    return args


def default_name(data: str) -> str:
    """A run folder name every rank (and every restart) agrees on."""
    return f"{Path(data).stem or 'run'}-ddp-{time.strftime('%Y%m%d-%H%M%S')}"


def torchrun_args(nproc: int, nnodes: str, rdzv_endpoint: str | None, max_restarts: int, run_id: str,
                  args: list[str]) -> list[str]:
    """torchrun's command line for ``python -m meddx.train ARGS``."""
    if rdzv_endpoint:
        rendezvous = ["--rdzv-backend", "c10d", "--rdzv-endpoint", rdzv_endpoint, "--rdzv-id", run_id]
    elif nnodes not in ("1", "1:1"):
        raise MeddxError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT (the machine that hosts the rendezvous)")
    else:
        rendezvous = ["--standalone"]
    return [f"--nproc-per-node={nproc}", f"--nnodes={nnodes}", *rendezvous, f"--max-restarts={max_restarts}",
            "--monitor-interval=0.5", "-m", "meddx.train", *args]


def launch_training(ctx: Any, nproc: int, nnodes: str, rdzv_endpoint: str | None, max_restarts: int) -> Path:
    """Run the DDP workers to completion; the run folder (``--out``/``--name``). A failed worker (killed,
    crashed) stops the others (torchrun) and raises a one-line error naming it and how to resume."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if nproc < 1:
        raise MeddxError(f"--nproc must be >= 1, got {nproc}")
    resume = ctx.params.get("resume")
    name = ctx.params.get("name") or (Path(resume).name if resume else default_name(ctx.params["data"]))
    folder = Path(resume) if resume else Path(ctx.params.get("out") or "runs") / name
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))  # N x threads <= cores (and no warning)
    launch = torchrun_args(nproc, nnodes, rdzv_endpoint, max_restarts, name, worker_args(ctx, name))
    try:
        run(get_args_parser().parse_args(launch))
    except ChildFailedError as exc:
        raise MeddxError(failure_message(exc, folder)) from None
    return folder


def failure_message(exc: Any, folder: Path) -> str:
    """Which rank failed and how (exit code or signal), and the command that continues the run."""
    rank, failure = min(exc.failures.items())
    how = f"was killed by {failure.signal_name()}" if failure.exitcode < 0 else f"exited with {failure.exitcode}"
    resume = (f"continue with --resume {folder}" if (folder / "last.safetensors").is_file()
              else "no checkpoint was saved yet; start it again")
    return f"training rank {rank} {how}; the other ranks were stopped; {resume}"
