"""One DDP worker of ``meddx train``: ``torchrun --nproc-per-node N -m meddx.train [meddx train options]``.

``meddx train --nproc N`` starts these workers itself (:mod:`meddx.engine.launch`). A worker whose peer died
(a failed collective, or the process group's timeout) prints one line and exits 3 instead of a traceback.

A worker leaves with ``os._exit`` once its work is done and its output flushed: the interpreter's own shutdown
destroys gloo's C++ objects from Python's finalizers, and a rank that got there while a background thread of
its process group was still joinable was killed by SIGABRT ("terminate called without an active exception"),
turning a finished run into a failed one for torchrun (2 of 6 CI runs of the gather test; PyTorch's own
proposal to destroy process groups at exit, pytorch#179291, was abandoned). Every file is already written
atomically and closed by then.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from meddx.cli import app
    from meddx.engine.distributed import exit_worker, lost_peer, lost_peer_message

    try:
        app(["train", *(sys.argv[1:] if argv is None else argv)], prog_name="meddx")
    except SystemExit as exc:
        exit_worker(exc.code)
    except RuntimeError as exc:  # torch.distributed.DistError is one; DDP's reducer raises plain RuntimeErrors
        if not lost_peer(exc):
            raise
        print(f"error: {lost_peer_message(exc)}", file=sys.stderr)
        exit_worker(3)
    exit_worker(0)


if __name__ == "__main__":
    main()
