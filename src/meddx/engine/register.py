"""``register_files``: one (fixed, moving[, labels, landmarks]) pair registered by a trained run (``learned``) or
a classical baseline (:mod:`meddx.classical.registration`), with the same outputs and scores for each."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.errors import MeddxError

METHODS = ("learned", "sitk-bspline", "sitk-affine", "demons", "identity")


def learned_field(run: str | Path, fixed: np.ndarray, moving: np.ndarray, device: str = "auto",
                  refine_steps: int | None = None) -> np.ndarray:
    """The run's displacement field (D, *S) for unit-range ``fixed``/``moving`` arrays, refined on the pair by
    ``refine_steps`` steps of instance optimisation (None: the task's default; 0: the network alone)."""
    from meddx.runtimes import open_runtime

    rt = open_runtime("torch", Path(run), device=device)
    task = rt.task
    if task.name != "registration":
        raise MeddxError(f"run is a {task.name} run, not a registration run", run)
    task.check_dims(fixed.ndim, run)
    pair = torch.from_numpy(np.stack([fixed, moving]))[None]
    return task.predict_fields(rt.model, pair, rt.norm, device=rt.device, refine_steps=refine_steps)[0].numpy()


def register_files(fixed: str | Path, moving: str | Path, *, run: str | Path | None = None,
                   labels: str | Path | None = None, landmarks: str | Path | None = None,
                   out_dir: str | Path | None = None, method: str = "learned", device: str = "auto",
                   refine_steps: int | None = None) -> dict[str, Any]:
    """Register ``moving`` onto ``fixed``; write warped image, displacement field (NIfTI) and warped labels."""
    from meddx.classical.registration import register_arrays
    from meddx.data.registration_files import read_landmarks, read_pair, scale_unit, write_outputs
    from meddx.metrics.registration import field_regularity, target_registration_error
    from meddx.models.registration_nets import warp, warp_labels

    if method not in METHODS:
        raise MeddxError(f"unknown method {method!r}; available: {', '.join(METHODS)}")
    if method == "learned" and run is None:
        raise MeddxError("--method learned needs a trained registration run")
    f, m, lab = read_pair(fixed, moving, labels)
    points = read_landmarks(landmarks, f.ndim) if landmarks else None
    fa, ma = scale_unit(f.array), scale_unit(m.array)
    tic = time.perf_counter()
    ddf = (learned_field(run, fa, ma, device, refine_steps) if method == "learned"
           else register_arrays(fa, ma, method, f.spacing))
    seconds = time.perf_counter() - tic
    field = torch.from_numpy(np.ascontiguousarray(ddf))[None].float()
    warped = warp(torch.from_numpy(m.array)[None, None].float(), field)[0, 0].numpy()
    warped_labels = warp_labels(torch.from_numpy(lab)[None], field)[0].numpy() if lab is not None else None
    stem = Path(moving).name.split(".")[0]
    files = write_outputs(out_dir or Path(moving).parent, stem, f, warped, ddf, warped_labels)
    out = {"method": method, "fixed": str(fixed), "moving": str(moving), "seconds": round(seconds, 4),
           **field_regularity(ddf), **files}
    if points is not None:
        out["tre_mm_before"] = float(target_registration_error(*points, None, f.spacing).mean())
        out["tre_mm"] = float(target_registration_error(*points, ddf, f.spacing).mean())
    return out
