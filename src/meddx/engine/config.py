"""The training configuration: one dataclass, saved resolved as ``config.json`` in every run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddx.errors import MeddxError

if TYPE_CHECKING:
    from meddx.data.augment import AugmentPolicy



@dataclass
class TrainConfig:
    # data
    data: str = "phantom"  # "phantom", a MedMNIST name or .npz path, an image folder, or a CSV manifest
    data_dir: str | None = None
    size: int | None = None  # MedMNIST file size (28/64/128/224), resize target for folders/CSV, phantom side;
    # None: the source's default (28 px)
    task: str = "classification"
    degrade: str | None = None  # reconstruction: the simulated degradation (meddx.data.degrade.DEGRADATIONS)
    positive_class: str | None = None  # binary: the finding (class name or id); None: the one the data set
    # declares (MedMNIST: from its label names), else the last class
    # model
    model: str = "resnet18_slim"
    pretrained: str | None = None
    # optimisation (the default recipe; see docs in README "Default recipe")
    epochs: int | None = None  # None: from the training-set size and a time budget (meddx.engine.recipe)
    batch_size: int | None = None  # None: classification 128, halved to >= 32 for small 2D sets (recipe); the
    # task's default otherwise (small for volumes)
    patch: int | None = None  # segmentation: training patch / sliding-window side; None: min(side, 96 2D / 32 3D)
    optimizer: str = "adamw"  # adamw | sgd
    lr: float | None = None  # None: 2e-3 for AdamW, 0.05 for SGD
    weight_decay: float = 0.05
    schedule: str = "cosine"  # cosine | multistep
    warmup_epochs: int = 1
    label_smoothing: float | None = None  # None: the recipe's (0.1 multi-class/ordinal, 0 binary/multi-label)
    mixup: float = 0.0  # classification: mixup of training batches, Beta(alpha, alpha); 0: off (opt-in: README
    # "Default recipe" gives the protocol numbers that kept it out of the default)
    ordinal_loss: str = "ce"  # ordinal-regression kinds: ce | emd (cross-entropy + squared EMD over grades)
    class_weights: bool = False
    augment: str = "auto"  # auto (by modality) | none | a policy name from meddx.data.augment.POLICIES
    ema_decay: float = 0.0  # >0: validate/test an exponential moving average of the weights
    patience: int | None = None  # early stopping after this many epochs without val gain; None: off
    select: str = "best"  # model used by evaluate/predict: "best" (the selection rule's pick: peak validation
    # epoch, or the tail average within 0.02 of it; meddx.engine.selection) or "last" (end of the schedule)
    average: str = "tail"  # tail: average the last quarter's epoch-end weights (BN re-estimated) | none
    calibrate: str = "auto"  # auto: classifiers' probabilities calibrated on validation after training (Platt
    # scaling for binary and per multi-label label, vector scaling for multi-class; meddx.engine.calibration) | none
    max_minutes: float | None = None  # wall-clock budget the schedule is fitted to; None: 15 min for volumes when
    # epochs is automatic, otherwise no limit
    # run
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    out: str = "runs"
    name: str | None = None
    tensorboard: bool = False
    progress: bool = True
    eval_batch_size: int = 512

    def resolved_lr(self) -> float:
        """The peak learning rate used: ``lr``, or the optimiser's default (2e-3 AdamW, 0.05 SGD)."""
        return self.lr or (2e-3 if self.optimizer == "adamw" else 0.05)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise MeddxError(f"unknown config keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError) as exc:
            raise MeddxError(f"cannot read config ({exc})", path) from None

    def validate(self) -> None:
        checks = [
            (self.batch_size is None or self.batch_size >= 1, f"batch size must be >= 1, got {self.batch_size}"),
            (self.patch is None or (self.patch >= 16 and self.patch % 8 == 0),
             f"patch must be a multiple of 8 and >= 16, got {self.patch}"),
            (self.epochs is None or self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}"),
            (self.optimizer in ("adamw", "sgd"), f"optimizer must be adamw or sgd, got {self.optimizer!r}"),
            (self.schedule in ("cosine", "multistep"), f"schedule must be cosine or multistep, got {self.schedule!r}"),
            (self.lr is None or self.lr > 0, f"learning rate must be > 0, got {self.lr}"),
            (0 <= self.ema_decay < 1, f"ema decay must be in [0, 1), got {self.ema_decay}"),
            (self.select in ("last", "best"), f"select must be last or best, got {self.select!r}"),
            (self.average in ("tail", "none"), f"average must be tail or none, got {self.average!r}"),
            (self.calibrate in ("auto", "none"), f"calibrate must be auto or none, got {self.calibrate!r}"),
            (self.ordinal_loss in ("ce", "emd"), f"ordinal loss must be ce or emd, got {self.ordinal_loss!r}"),
            (self.label_smoothing is None or 0 <= self.label_smoothing < 1,
             f"label smoothing must be in [0, 1), got {self.label_smoothing}"),
            (0 <= self.mixup <= 10, f"mixup alpha must be in [0, 10], got {self.mixup}"),
            (self.patience is None or self.patience >= 1, f"patience must be >= 1, got {self.patience}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise MeddxError(msg)


def auto_epochs(n_train: int, budget_samples: int = 300_000, lo: int = 15, hi: int = 100) -> int:
    """The pre-#18 epoch rule (300k sample visits, 15-100 epochs), kept for comparisons: the automatic schedule is
    :func:`meddx.engine.recipe.auto_epochs`."""
    return int(min(hi, max(lo, round(budget_samples / max(n_train, 1)))))


def batch_size_for(cfg: TrainConfig, task: Any) -> int:
    """The configured batch size, or the task's default (``task.default_batch_size``: small for volumes)."""
    return cfg.batch_size or task.default_batch_size


def augment_policy(cfg: TrainConfig, modality: str) -> AugmentPolicy | None:
    """The training augmentation of ``cfg.augment``: none, the modality's policy (auto) or a named policy."""
    from meddx.data.augment import POLICIES, policy_for

    if cfg.augment == "none":
        return None
    return policy_for(modality) if cfg.augment == "auto" else POLICIES.get(cfg.augment)
