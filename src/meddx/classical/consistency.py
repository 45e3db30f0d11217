"""Data consistency for sparse-view CT: a restored slice corrected towards the views that were measured.

A post-processing network removes the streaks of a sparse-view FBP by learning what CT slices look like; it
never checks its output against the measurement. The measured views are exact (noiseless in this
degradation), so the output can be corrected where it disagrees with them: with ``M = FBP(project(.))`` from
the same ``views`` (the acquisition that gave the input ``b = M x_true``), each step moves the slice by the
filtered difference between the input and the slice's own sparse-view FBP,

    x <- x + step * (b - M x),

a Landweber iteration preconditioned by FBP (FBP is an approximate inverse of the projector, so a few steps do
what plain back-projection needs hundreds for). The part of the image the 60 views cannot see (the null space
of the projector, where the streaks live) stays the network's; the part they do see is pulled to the data.

The steps are accelerated as Nesterov's (``x`` extrapolated by ``(k - 1) / (k + 2)`` of its last move) and
restarted when the residual ``|b - M x|`` rises (O'Donoghue & Candes' adaptive restart); the slice of least
residual seen is returned. FBP is not the exact inverse, so plain undamped steps (1.0) diverge after two or three;
``step`` damps them, and a slice whose input came from another acquisition than the one assumed here is at worst
left as the network gave it (its residual is never made larger).

Chosen on the validation split of the real-CT data (31 slices, 60 views; the default ``recon_unet`` trained at
128 px, and one trained at 256 px; ``benchmarks/recon_consistency.py RUN``): mean PSNR input 36.09 / network
39.19 dB at 128 px, 37.72 / 40.43 at 256 px. Plain steps of 0.3: 4 / 8 / 12 steps gave 41.40 / 41.89 / 42.08
(128 px) and 42.57 / 42.78 / 42.84 (256 px); step 0.5 reached 42.12 at 128 px but stalled at 256 px after one
step. Accelerated, 8 steps of 0.2 / **0.3** / 0.4: 42.04 / **42.18** / 42.26 (128 px) and 42.83 / **42.76** /
42.36 (256 px): 0.3 has the best mean of the two sizes. Eight steps cost 0.14 s per 128 px slice and 0.44 s
per 256 px slice (2 cores; each step one projection and one FBP), inside the issue's 0.5 s for a 256 px slice;
12 would not be.

Written here: scikit-image has the projector and FBP but no iterative reconstruction around them, and the
learned-reconstruction libraries (deepinv, ODL) would add a dependency for these few lines.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from meddx.errors import MeddxError

STEP, STEPS = 0.3, 8  # damping and number of steps (chosen on validation; see the module docstring)
# A slice whose input is a sparse-view FBP of the assumed scan ends with 6-8 % of the network's residual left
# (validation, 31 real-CT slices); a full-view slice given to a sparse-view run keeps 69-84 % of it, and the
# correction then makes it worse (36.2 -> 33.2 dB). Above this share, and with more than MIN_RESIDUAL_HU of it
# (RMS, HU; 0.9 HU left on the genuine slices, 27 HU on the full-view ones), the input is not the assumed scan.
MAX_RESIDUAL_LEFT, MIN_RESIDUAL_HU = 0.5, 5.0


class Corrected(NamedTuple):
    images: np.ndarray  # (N, S, S) corrected slices, HU
    steps: np.ndarray  # the step at which each slice's residual was least
    residual_left: np.ndarray  # least residual / the network's own (0 where the network already agreed)
    residual_hu: np.ndarray  # least residual, RMS in HU

    def unexplained(self) -> np.ndarray:
        """Slices whose input the assumed scan cannot explain (see MAX_RESIDUAL_LEFT)."""
        return np.flatnonzero((self.residual_left > MAX_RESIDUAL_LEFT) & (self.residual_hu > MIN_RESIDUAL_HU))


def sparse_view_consistency(restored: np.ndarray, measured_fbp: np.ndarray, views: int, *, step: float = STEP,
                            steps: int = STEPS, accelerated: bool = True) -> Corrected:
    """Correct restored slices (N, S, S) in HU towards their sparse-view FBP inputs (N, S, S) in HU, acquired
    from ``views`` views over 180 degrees (``accelerated=False``: plain steps, for comparison)."""
    restored, measured_fbp = np.asarray(restored, np.float32), np.asarray(measured_fbp, np.float32)
    if restored.shape != measured_fbp.shape or restored.ndim != 3:
        raise MeddxError(f"need two (N, S, S) stacks of one shape, got {restored.shape} and {measured_fbp.shape}")
    if not 0.0 < step <= 1.0:
        raise MeddxError(f"the data-consistency step must be in (0, 1], got {step}")
    out, kept = np.empty_like(restored), np.zeros(len(restored), np.int64)
    left, residual = np.zeros(len(restored)), np.zeros(len(restored))
    for i, (x, b) in enumerate(zip(restored, measured_fbp)):
        out[i], kept[i], left[i], residual[i] = _correct_one(x, b, views, step, steps, accelerated)
    return Corrected(out, kept, left, residual)


def _correct_one(x: np.ndarray, b: np.ndarray, views: int, step: float, steps: int, accelerated: bool
                 ) -> tuple[np.ndarray, int, float, float]:
    """Nesterov-accelerated steps with adaptive restart; returns the slice of least residual seen, its step, the
    share of the starting residual left, and that residual."""
    from meddx.data.degrade import sparse_view_ct

    best, best_residual, best_step, first = x, np.inf, 0, None
    point, previous, momentum = x, x, 1
    for k in range(steps + 1):
        difference = b - sparse_view_ct(point, views)
        residual = float(np.sqrt(np.mean(difference ** 2)))
        first = residual if first is None else first
        if residual < best_residual:
            best, best_residual, best_step = point, residual, k
        else:
            momentum = 1  # the extrapolation overshot: restart from plain steps
        if k == steps:
            break
        moved = point + step * difference
        beta = (momentum - 1) / (momentum + 2) if accelerated else 0.0
        momentum += 1
        point, previous = moved + beta * (moved - previous), moved
    return best, best_step, best_residual / first if first > 0.0 else 0.0, best_residual
