"""Sparse-view data consistency on the VALIDATION split: the step size and step count of
``meddx.classical.consistency`` against the network alone, for a trained sparse-view run (how the defaults were
chosen; the test split is never read here).

    python benchmarks/recon_consistency.py RUN [--steps 0.2x8 0.3x8 0.4x8] [--plain]

RUN: a run folder of ``meddx train --task reconstruction --degrade sparseview`` (any ``--size``). Prints the mean
validation PSNR of the input, the network, and the network + each setting, with the seconds per slice and how
many steps the safeguard kept; the last line is JSON.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_json, print_table  # noqa: E402

DEFAULT_SETTINGS = ["0.2x8", "0.3x4", "0.3x8", "0.3x12", "0.4x8", "0.5x8"]


def main() -> None:
    from meddx.classical.consistency import sparse_view_consistency
    from meddx.data.recon_data import load_reconstruction
    from meddx.engine.checkpoint import load_model
    from meddx.engine.config import TrainConfig
    from meddx.engine.run import RunDir
    from meddx.metrics.image_quality import image_scores
    from meddx.tasks import task_from_meta

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--steps", nargs="*", default=DEFAULT_SETTINGS, help="STEPxCOUNT settings")
    ap.add_argument("--plain", action="store_true", help="plain steps (no Nesterov acceleration)")
    args = ap.parse_args()
    run = RunDir.open(args.run)
    cfg = TrainConfig.load(run.config)
    model, meta = load_model(run.model_checkpoint())
    task = task_from_meta(meta)
    data = load_reconstruction(cfg.data, size=cfg.size)
    x, y = task.pairs(data.val)
    clean, degraded = task.to_display(y), task.to_display(x)
    network = task.to_display(task.predict(model, x))

    def psnr(images: np.ndarray) -> float:
        return float(np.mean(image_scores(clean, images, task.intensity_range)["psnr"]))

    rows = [{"method": "input (FBP)", "psnr": psnr(degraded)}, {"method": "network alone", "psnr": psnr(network)}]
    for setting in args.steps:
        step, count = setting.split("x")
        tic = time.perf_counter()
        out, kept, left, _ = sparse_view_consistency(network, degraded, task.degradation.views, step=float(step),
                                                     steps=int(count), accelerated=not args.plain)
        kind = "plain" if args.plain else "accelerated"
        rows.append({"method": f"network + consistency {setting} {kind}", "psnr": psnr(out),
                     "s_per_slice": (time.perf_counter() - tic) / len(out), "steps_kept_mean": float(kept.mean()),
                     "residual_left_max": float(left.max())})
    print_table(rows, ["method", "psnr", "s_per_slice", "steps_kept_mean", "residual_left_max"],
                f"validation ({len(clean)} slices, {task.side} px, {task.degradation.views} views): {args.run}")
    print_json(rows)


if __name__ == "__main__":
    main()
