"""Cost of the registration refinement (instance optimisation) per pair: the autograd loop through MONAI's LNCC
beside meddx's (``FixedImageLNCC``: the fixed image's window sums computed once, the gradient of every term in
closed form, no autograd; column ``fixed_image_lncc_s``), at the task's default settings (2D 64 x 64: 50 steps,
window 7; 3D: 20 steps, window 5), random images, one pair at a time (and a batch of 8 2D pairs refined together,
per pair).

    python benchmarks/registration_refine.py [--threads 2] [--repeats 7]

Prints s/pair (best of --repeats) for each loss and their ratio; the last line is JSON. Run it alone on the
machine: it times milliseconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_json, print_table  # noqa: E402

from meddx.models.registration_refine import FixedImageLNCC, refine_field  # noqa: E402
from meddx.tasks.registration import LNCC_WINDOW, REFINE  # noqa: E402

SHAPES = {"2d 64x64": (64, 64), "3d 32x48x48": (32, 48, 48), "3d 48x64x56": (48, 64, 56)}
BATCHED = {"2d 64x64, 8 pairs at once": ((64, 64), 8)}  # s/pair of a batch refined together


def seconds_per_pair(similarity, fixed, moving, settings, repeats: int) -> float:
    ddf = torch.zeros(len(fixed), fixed.ndim - 2, *fixed.shape[2:])
    times = []
    for _ in range(repeats):
        tic = time.perf_counter()
        refine_field(fixed, moving, ddf, similarity, **settings)
        times.append(time.perf_counter() - tic)
    return min(times) / len(fixed)


def main() -> None:
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = {name: (shape, 1) for name, shape in SHAPES.items()} | BATCHED
    for name, (shape, pairs) in cases.items():
        nd = len(shape)
        fixed, moving = (torch.rand(pairs, 1, *shape, generator=gen), torch.rand(pairs, 1, *shape, generator=gen))
        settings = {k: v for k, v in REFINE[nd].items() if k not in ("affine", "variance_floor")}
        monai = LocalNormalizedCrossCorrelationLoss(spatial_dims=nd, kernel_size=LNCC_WINDOW[nd])
        ref = seconds_per_pair(monai, fixed, moving, settings, args.repeats)
        ours = seconds_per_pair(FixedImageLNCC(fixed, LNCC_WINDOW[nd]), fixed, moving, settings, args.repeats)
        rows.append({"shape": name, "steps": settings["steps"], "monai_s": ref, "fixed_image_lncc_s": ours,
                     "speedup": ref / ours})
    print_table(rows, ["shape", "steps", "monai_s", "fixed_image_lncc_s", "speedup"],
                f"refinement s/pair, {args.threads} threads (best of {args.repeats})")
    print_json(rows)


if __name__ == "__main__":
    main()
