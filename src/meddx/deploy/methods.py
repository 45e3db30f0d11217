"""The compression methods as a table, like :mod:`meddx.explain.methods`: one :class:`CompressionMethod` row each.

A method transforms the loaded model of a :class:`Job` in place (pruning, fake quantization + fine-tune) and
returns its fine-tune history; int8 methods are also exported to ONNX and quantized by
:func:`meddx.deploy.compress.compress_run`. To add a method: one function and one row in :data:`METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from meddx.deploy.finetune import finetune, steps_per_epoch

# Structured pruning removes whole channels and needs a real fine-tune: on the MedMNIST benchmark the lengths
# chosen on validation fidelity were 120 (BreastMNIST, 30 epochs of 4 steps) and 216 optimiser steps
# (PneumoniaMNIST, 6 epochs of 36). Counting steps rather than epochs carries to data sets of other sizes.
STRUCTURED_STEPS, MAX_DEFAULT_EPOCHS = 200, 50


@dataclass
class Job:
    """One compression in progress: the model being changed and everything its method needs."""

    model: torch.nn.Module
    meta: dict[str, Any]
    data: Any
    task: Any  # the fine-tune's task (a DistillationTask around the run's task when distilling)
    norm: Any
    cfg: Any  # the source run's TrainConfig
    opts: Any  # CompressOptions, with epochs and lr resolved
    classifier: bool = True  # the run's task outputs class probabilities (BatchNorm re-estimation, distillation)
    info: dict[str, Any] = field(default_factory=dict)  # written to compress.json

    def finetune(self, method: CompressionMethod, **kw: Any) -> list[dict[str, Any]]:
        o = self.opts
        return finetune(self.model, self.data, self.task, self.norm, self.cfg, epochs=o.epochs, lr=o.lr,
                        max_train=o.max_train, seed=o.seed, optimizer=method.optimizer, **kw)


@dataclass(frozen=True)
class CompressionMethod:
    name: str
    summary: str
    apply: Callable[[Job, CompressionMethod], list[dict[str, Any]]]
    # Fine-tune learning rates: AdamW for pruning (a heavily pruned net needs more recovery); SGD with momentum
    # for QAT, which only nudges weights towards the fp32 model's outputs. Adam moves every weight by about lr
    # per step whatever its gradient (its first step is lr * sign(g)); on the int8 grid that drift outweighed
    # the fit: AdamW at 1e-7 already changed the BreastMNIST int8 outputs, at 2e-5 it took the validation mean
    # |p - p_fp32| from 0.002 to 0.044. Distillation with SGD at 1e-3 lowered it below PTQ's on all six
    # benchmark models (3e-3 drifted away on two; benchmarks/RESULTS.md).
    default_lr: float
    optimizer: str
    int8: bool = False  # exported to ONNX and quantized to int8 (classification only)
    prunes: bool = False  # ``amount`` applies
    structured_epochs: bool = False  # default fine-tune length by optimiser steps (structured pruning)

    @property
    def finetunes(self) -> bool:
        return self.name != "ptq"

    def default_epochs(self, n_train: int, batch_size: int) -> int:
        """Fine-tune epochs when none are given: about :data:`STRUCTURED_STEPS` optimiser steps (at most
        :data:`MAX_DEFAULT_EPOCHS`) for structured pruning, one epoch otherwise, none without a fine-tune."""
        if not self.finetunes:
            return 0
        if not self.structured_epochs:
            return 1
        return max(1, min(MAX_DEFAULT_EPOCHS, -(-STRUCTURED_STEPS // steps_per_epoch(n_train, batch_size))))


def _prune(job: Job, method: CompressionMethod) -> list[dict[str, Any]]:
    from meddx.deploy import prune

    prune.prune_unstructured(job.model, job.opts.amount)
    history = job.finetune(method, bn_recalibration=job.classifier)
    prune.make_permanent(job.model)
    job.info["options"] = {"amount": job.opts.amount, "scope": "global L1 over Conv/Linear weights"}
    return history


def _prune_structured(job: Job, method: CompressionMethod) -> list[dict[str, Any]]:
    from meddx.deploy import prune
    from meddx.models import get_model_spec

    example = job.norm(job.data.train.images[:2])
    name = job.meta["model"]
    job.info["structure"] = prune.prune_structured(job.model, name, job.opts.amount, example,
                                                   get_model_spec(name).head)
    history = job.finetune(method, bn_recalibration=job.classifier)
    job.info["options"] = {"ratio": job.opts.amount, "importance": "group L2 magnitude (torch-pruning)"}
    return history


def _qat(job: Job, method: CompressionMethod) -> list[dict[str, Any]]:
    from meddx.deploy import quantize

    o = job.opts
    handles = quantize.prepare_qat(job.model, float_ends=o.float_ends)
    job.model.eval()
    with torch.no_grad():  # calibrate the input ranges before the fake quantizers switch on
        for batch in quantize.calibration_batches(job.data.train.images, o.calibration_samples, seed=o.seed):
            job.model(job.norm(torch.from_numpy(batch)))
    quantize.enable_act_quant(handles)
    history = job.finetune(method, bn_recalibration=False, keep_start=True)
    quantize.finish_qat(job.model, handles)
    job.info["options"] = {"fake_quant": "int8 symmetric per-channel weights, uint8 per-tensor Conv/Linear inputs"
                                         + (" (not the stem and the classifier)" if o.float_ends else ""),
                           "batchnorm": "folded before QAT"}
    return history


def _ptq(job: Job, method: CompressionMethod) -> list[dict[str, Any]]:
    return []  # the weights stay as they are; calibration and int8 quantization happen on the ONNX export


METHODS = {m.name: m for m in (
    CompressionMethod("prune", "global unstructured L1 magnitude pruning", _prune, 2e-4, "adamw", prunes=True),
    CompressionMethod("prune-structured", "whole channels removed (torch-pruning, group L2)", _prune_structured,
                      1e-3, "adamw", prunes=True, structured_epochs=True),
    CompressionMethod("ptq", "post-training static int8 quantization (ONNX Runtime)", _ptq, 0.0, "adamw",
                      int8=True),
    CompressionMethod("qat", "quantization-aware fine-tune, then int8 (ONNX Runtime)", _qat, 1e-3, "sgd",
                      int8=True),
)}
