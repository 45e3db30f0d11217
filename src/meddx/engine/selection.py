"""Which model a run ships: never one far below the best validation point.

Candidates are the epoch checkpoints (validated every epoch; ``best.safetensors`` holds the peak) and, at the
end, the tail average (:class:`meddx.engine.averaging.TailAverage`, BatchNorm re-estimated). The rule:

* ship the tail average when its validation score is within ``tolerance`` (0.02 AUC) of the peak epoch: an
  average over the annealed end is less noisy than one epoch picked on a small validation set (BreastMNIST's
  78 images: the best-epoch model's test ACC ranged 0.667-0.878 over 8 seeds, the end-of-schedule one
  0.833-0.891);
* otherwise ship the peak epoch (the schedule over-fitted: the old default, the last epoch, was 0.13 AUC below
  the peak on a held-out set).

Either way the shipped model is at most ``tolerance`` below the peak on validation, by construction.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

TOLERANCE = 0.02


@dataclass
class Selection:
    """The decision and the numbers behind it (written to ``selection.json``)."""

    shipped: str  # "tail-average" | "peak-epoch"
    peak_epoch: int | None
    peak_score: float
    average_score: float | None
    average_epochs: int
    last_score: float | None
    tolerance: float = TOLERANCE

    @property
    def shipped_score(self) -> float:
        return self.average_score if self.shipped == "tail-average" else self.peak_score

    @property
    def gap(self) -> float:
        """Peak minus shipped validation score (0 when the peak itself is shipped)."""
        return max(0.0, self.peak_score - self.shipped_score) if math.isfinite(self.peak_score) else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"shipped_score": self.shipped_score, "gap": self.gap}


def peak(history: list[dict[str, Any]], monitor: str) -> tuple[int | None, float]:
    """(epoch, score) of the best validation point in ``history``; NaN scores never count."""
    best_epoch, best = None, -math.inf
    for row in history:
        score = row.get(f"val_{monitor}", math.nan)
        if score is not None and not math.isnan(score) and score > best:
            best_epoch, best = row["epoch"], score
    return best_epoch, best


def choose(history: list[dict[str, Any]], monitor: str, average_score: float | None, average_epochs: int = 0,
           tolerance: float = TOLERANCE) -> Selection:
    """The rule above on a finished run's ``history`` and the tail average's validation score (None: no
    average)."""
    peak_epoch, peak_score = peak(history, monitor)
    last = history[-1].get(f"val_{monitor}") if history else None
    usable = average_score is not None and not math.isnan(average_score)
    ships_average = usable and (not math.isfinite(peak_score) or average_score >= peak_score - tolerance)
    return Selection("tail-average" if ships_average else "peak-epoch", peak_epoch, peak_score,
                     average_score if usable else None, average_epochs, last, tolerance)


def finish(history: list[dict[str, Any]], task: Any, data: Any, training: Any, save_best: Any,
           batch_size: int = 512) -> Selection:
    """End of a schedule: validate the tail average (BatchNorm re-estimated on training images), apply
    :func:`choose`, and hand the average to ``save_best(model, score)`` when it is the one shipped."""
    average = training.average
    model = score = None
    if average is not None:
        model = average.settled_model(data.train.images, training.norm, training.device, training.policy)
    if model is not None:
        score = task.validate(model, data.val, training.norm, device=training.device,
                              batch_size=batch_size)[task.monitor]
    selection = choose(history, task.monitor, score, average.count if average is not None else 0)
    if selection.shipped == "tail-average":
        save_best(model, score)
    return selection
