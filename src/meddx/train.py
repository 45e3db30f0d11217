"""One DDP worker of ``meddx train``: ``torchrun --nproc-per-node N -m meddx.train [meddx train options]``.

``meddx train --nproc N`` starts these workers itself (:mod:`meddx.engine.launch`). A worker whose peer died
(a failed collective, or the process group's timeout) prints one line and exits 3 instead of a traceback.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> None:
    from meddx.cli import app
    from meddx.engine.distributed import lost_peer, lost_peer_message

    try:
        app(["train", *(sys.argv[1:] if argv is None else argv)], prog_name="meddx")
    except RuntimeError as exc:  # torch.distributed.DistError is one; DDP's reducer raises plain RuntimeErrors
        if not lost_peer(exc):
            raise
        print(f"error: {lost_peer_message(exc)}", file=sys.stderr)
        sys.exit(3)


if __name__ == "__main__":
    main()
