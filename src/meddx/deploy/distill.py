"""Knowledge distillation for fine-tuning a compressed classifier against its uncompressed source.

A pruned network fine-tuned on the labels alone drifts from the model it replaces (its errors and its
calibration change, so test ACC can move by points while AUC barely does). Distillation (Hinton et al.
2015) adds a term that pulls the student's temperature-softened outputs towards the teacher's, which is
what "the same model, smaller" asks for. Written here because it is a few lines over torch's losses;
torch-pruning's examples recover accuracy the same way. On by default for pruning fine-tunes
(``meddx compress --no-distill`` turns it off), with ``alpha = 1``: the pruned model is fit to the source's
outputs alone, chosen by the validation fidelity (mean |p - p_source|) on the MedMNIST benchmark, where it
also kept test ACC/AUC closest to the source (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.kinds import MULTI_LABEL


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, hard_loss: torch.Tensor, kind: str,
                      alpha: float = 1.0, temperature: float = 2.0) -> torch.Tensor:
    """``(1 - alpha) * hard_loss + alpha * T^2 * soft``; soft = KL of softmax (BCE of sigmoids for multi-label)."""
    t = temperature
    if kind == MULTI_LABEL:
        soft = F.binary_cross_entropy_with_logits(student / t, torch.sigmoid(teacher / t))
    else:
        soft = F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                        reduction="batchmean")
    return (1 - alpha) * hard_loss + alpha * t * t * soft


class DistillationTask:
    """A classification task whose training loss matches a frozen ``teacher``; it is also monitored by its
    fidelity to the teacher (``1 - mean |p - p_teacher|`` on the validation images: what distillation
    optimises, and steadier than a small validation set's AUC peak); everything else delegates."""

    monitor = "fidelity"

    def __init__(self, task: Any, teacher: nn.Module, alpha: float = 1.0, temperature: float = 2.0) -> None:
        self.task, self.teacher = task, teacher.eval()
        self.alpha, self.temperature = alpha, temperature
        self._reference: dict[int, tuple[torch.Tensor, np.ndarray]] = {}  # teacher outputs per split
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def validate(self, model: nn.Module, split: Any, normalize: Any, *, device: torch.device, batch_size: int,
                 amp: bool = False) -> dict[str, float]:
        """The task's validation metrics plus ``fidelity`` to the teacher's probabilities."""
        from meddx.models.inference import predict

        y_score, loss = predict(model, split.images, self.task, normalize, batch_size=batch_size, device=device,
                                amp=amp, labels=split.labels)
        cached = self._reference.get(id(split))
        if cached is None or cached[0] is not split.images:
            ref, _ = predict(self.teacher, split.images, self.task, normalize, batch_size=batch_size, device=device)
            cached = self._reference[id(split)] = (split.images, ref)
        return {"loss": float(loss or 0.0), **self.task.quick_metrics(split.labels.numpy(), y_score),
                "fidelity": 1.0 - float(np.abs(y_score - cached[1]).mean())}

    def __getattr__(self, name: str) -> Any:
        return getattr(self.task, name)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = model(x)
        with torch.no_grad():
            ref = self.teacher(x)
        return distillation_loss(out, ref, self.task.loss(out, y), self.task.kind, self.alpha, self.temperature)
