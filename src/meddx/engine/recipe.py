"""The automatic recipe: what ``meddx train`` chooses when the schedule is left to it.

Everything here is a function of the training-set size, the number of spatial dimensions and a time budget,
never of a data set's name, so that a set nobody tuned on gets the same treatment as the ones we have
(README "Default recipe" gives the numbers behind each choice):

* batch size: small sets get small batches (more, noisier steps: 546 images at batch 128 gave 4 steps an epoch);
* epochs: a budget of sample visits (fewer epochs for large sets), capped lower than before for small sets, whose
  validation AUC peaked long before the old 100-epoch cap;
* label smoothing 0.1 for multi-class and ordinal labels (none for binary and multi-label), augmentation
  strength growing as the set shrinks;
* a time budget (default 15 min for volumes; 2D only with ``--max-minutes``) measured from the first training
  steps, so that the cosine schedule is planned to fit before it has gone far and always decays to zero
  (:class:`BudgetPlanner`);
* the last quarter of the schedule is averaged (:class:`meddx.engine.averaging.TailAverage`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from meddx.kinds import BINARY, MULTI_LABEL

# The default time budget by spatial dimensions (2 CPU cores): volumes only. A 2D default budget (10 min) was
# tried and dropped: on this shared machine (load ~15) it cut BreastMNIST to 10 epochs, test ACC/AUC
# 0.846/0.863, below the MedMNIST v2 ResNet-18 (0.863/0.901); a 2D schedule of <= 10k images fits 10 quiet minutes
# (300k visits: PneumoniaMNIST's 4,708 images, 64 epochs, in 526 s).
DEFAULT_MINUTES = {3: 15.0}
# sample visits the epoch count is planned for (a time budget may cut it). 2D: 300k since the fourteenth session
# (was 150k): on 3,000 phantom images validation AUC +0.008 (3 seeds), on all of PneumoniaMNIST -0.002 (1 seed);
# it changes only sets above 1,875 images (80 epochs at most), benchmarks/RESULTS.md.
VISITS = {2: 300_000, 3: 60_000}
EPOCH_RANGE = {2: (20, 80), 3: (8, 60)}
EPOCH_FLOOR = {2: 10, 3: 3}  # a time budget never plans fewer (a loaded machine runs over rather than under-trains)
LABEL_SMOOTHING = 0.1
# Binary labels train without smoothing: chosen by 5-fold cross-validation on BreastMNIST (624 images) beside four
# other binary regimes (mean validation AUC +0.004 over six; benchmarks/RESULTS.md, fourteenth session). Smoothing
# caps the logit gap the loss rewards, and AUC ranks those logits.
UNSMOOTHED_KINDS = (BINARY, MULTI_LABEL)
TAIL_FRACTION = 0.25  # the share of the schedule (its annealed end) whose epoch-end weights are averaged
TIMED_STEPS = 5  # optimiser steps timed (after the first, which pays one-off costs) to plan the budget


def auto_batch_size(n_train: int, spatial_dims: int, task_default: int) -> int:
    """The task's default batch, halved (down to 32) until an epoch has at least ~16 steps; volumes keep theirs."""
    if spatial_dims != 2:
        return task_default
    batch = task_default
    while batch > 32 and n_train // batch < 16:
        batch //= 2
    return batch


def auto_epochs(n_train: int, spatial_dims: int = 2, visits: int | None = None) -> int:
    """Epochs for a budget of sample visits (default ``VISITS``), clamped to the range for 2D images or volumes."""
    lo, hi = EPOCH_RANGE.get(spatial_dims, EPOCH_RANGE[3])
    visits = visits or VISITS.get(spatial_dims, VISITS[3])
    return int(min(hi, max(lo, round(visits / max(n_train, 1)))))


def planned_epochs(n_train: int, spatial_dims: int, batch_size: int, task_steps: int | None) -> int:
    """The automatic epoch count: enough epochs for the task's ``default_steps`` optimiser steps when it
    declares them (reconstruction trains on random patches: its epochs are short), else :func:`auto_epochs`."""
    if task_steps:
        return max(1, math.ceil(task_steps / max(1, n_train // batch_size)))
    return auto_epochs(n_train, spatial_dims)


def auto_label_smoothing(kind: str) -> float:
    """0.1 for multi-class and ordinal labels; none for binary or multi-label ones (``UNSMOOTHED_KINDS``)."""
    return 0.0 if kind in UNSMOOTHED_KINDS else LABEL_SMOOTHING


def augment_strength(n_train: int) -> float:
    """A factor on the modality policy's rotation/shift/scale ranges: 1.5 for <= 500 images, 1.0 from 5,000 on,
    log-linear between (small sets need more regularisation)."""
    t = (math.log10(max(n_train, 1)) - math.log10(500)) / (math.log10(5000) - math.log10(500))
    return round(1.5 - 0.5 * min(1.0, max(0.0, t)), 3)


def tail_start(epochs: int) -> int:
    """The first epoch whose end-of-epoch weights enter the tail average (at least the last epoch)."""
    return max(0, epochs - max(1, math.ceil(TAIL_FRACTION * epochs)))


def budget_seconds(max_minutes: float | None, spatial_dims: int, task_minutes: float | None = None) -> float | None:
    """``--max-minutes`` in seconds, or the default budget: the task's ``default_minutes``, else by spatial
    dimensions (volumes: 15 min; 2D: none)."""
    minutes = max_minutes or task_minutes or DEFAULT_MINUTES.get(spatial_dims)
    return 60.0 * minutes if minutes else None


def epochs_within(budget_s: float, seconds_per_epoch: float, planned: int, floor: int) -> int:
    """How many epochs in total fit ``budget_s`` at ``seconds_per_epoch``: never more than planned, never fewer
    than ``floor`` (the epochs already run plus one, so the last epoch still decays the learning rate to zero)."""
    fits = int(budget_s / max(seconds_per_epoch, 1e-9))
    return max(min(floor, planned), min(planned, fits))


@dataclass
class BudgetPlanner:
    """Fits the schedule to a time budget from the first timed steps, then again after every epoch.

    ``shorten(epochs)`` is the engine's callback that lowers the planned epoch count (and the cosine schedule's
    length with it, so the learning rate still reaches zero at the new end). Validation's share of an epoch is
    estimated from the split sizes (a forward pass costs about a third of a training step per image).
    """

    budget_s: float
    steps: int  # optimiser steps per epoch
    planned: int
    shorten: Any
    val_share: float = 0.0  # validation images / training images
    floor: int = 1  # fewest epochs the first plan may choose (EPOCH_FLOOR)
    first: int = 0  # the epoch this session starts at (a resumed run has already run the ones before)
    agree: Any = None  # DDP: maps this rank's plan to rank 0's (called at the same points on every rank)
    t0: float = 0.0
    _tic: float | None = None
    _planned_early: bool = False

    def start(self) -> None:
        self.t0 = time.time()

    def on_step(self, step: int, loss: float = 0.0) -> None:
        """Once per session: after ``TIMED_STEPS`` steps of the first epoch (step 0 excluded: one-off costs), plan
        the whole run from the measured step time."""
        if self._planned_early:
            return
        if step == 0:
            self._tic = time.time()
        elif self._tic is not None and (step == TIMED_STEPS or step == self.steps - 1):
            per_step = (time.time() - self._tic) / step
            self._planned_early = True
            per_epoch = per_step * self.steps * (1 + self.val_share / 3)
            # planned at an epoch's last step, that epoch can no longer anneal: keep at least one more
            least = 2 if step == self.steps - 1 else 1
            self._apply(self.first + epochs_within(self.budget_s, per_epoch, self.planned - self.first,
                                                   max(least, self.floor - self.first)))

    def after_epoch(self, done: int, start: int = 0) -> None:
        """Refine from the measured mean epoch time (training + validation) once ``done`` epochs have run."""
        per_epoch = (time.time() - self.t0) / max(done, 1)
        self._apply(start + epochs_within(self.budget_s, per_epoch, self.planned - start,
                                          max(done + 1, self.floor - start)))

    def _apply(self, epochs: int) -> None:
        if self.agree is not None:
            epochs = self.agree(epochs)
        if epochs < self.planned:
            self.planned = epochs
            self.shorten(epochs)


def resolve_losses(cfg: Any, data: Any) -> None:
    """Fill the loss settings left to the recipe (``label_smoothing`` None) from the data's label kind."""
    if cfg.label_smoothing is None:
        cfg.label_smoothing = auto_label_smoothing(data.task)


def resolve_batch_size(cfg: Any, data: Any, task: Any) -> int:
    """The configured batch size, or the task's default (classifiers: :func:`auto_batch_size`)."""
    if cfg.batch_size:
        return cfg.batch_size
    if not task.is_classifier:
        return task.default_batch_size
    return auto_batch_size(len(data.train), data.spatial_dims, task.default_batch_size)
