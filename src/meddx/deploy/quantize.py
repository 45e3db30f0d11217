"""int8 quantization: ONNX Runtime static post-training quantization, and quantization-aware fine-tuning.

Why ONNX Runtime: ``torch.ao.quantization`` (eager/FX) is deprecated; its successor, PyTorch 2 export
quantization in torchao (``prepare_pt2e``/``prepare_qat_pt2e`` + ``X86InductorQuantizer``), fails to annotate
torchvision's ResNet-18 with torch 2.14 + torchao 0.18 ("Input partition has more than one output node"), and
its converted graphs only run fast after inductor compilation. ORT's ``quantize_static`` (QDQ format, int8
per-channel weights, uint8 per-tensor activations calibrated on training images) gives a model that ORT
fuses into QLinearConv/QGemm with MLAS int8 (VNNI) kernels on x86 CPUs.

The two ends of the network stay in float by default (``float_ends``): the folded preprocessing with the first
convolution, and the classifier. The normalised input ``(raw - mean) / std`` lies on a grid of one grey level,
but uint8 quantization's zero point is an integer, so every pixel moves by the fractional part of the mean (up
to half a grey level); in a PyTorch simulation of ORT's scheme this input rounding was the largest single error
source on all three BreastMNIST benchmark models. The classifier's output would quantize the logits themselves,
right at the decision. Both layers are a small share of the compute (a 1- or 3-channel stem, a 512 x classes
matrix). Measured on the six benchmark ResNet-18s (benchmarks/RESULTS.md): test mean |p - p_fp32| lower on all
six, validation on five.

QAT here mirrors that scheme: BatchNorm is folded into the convolutions first (as the ONNX exporter does),
weights are fake-quantized per output channel (symmetric int8, max-abs, as ORT) and the inputs of every
Conv/Linear per tensor (asymmetric uint8, ranges fixed by calibration on the same images ORT calibrates on),
with the straight-through estimator of ``torch.fake_quantize_*``; after a short fine-tune (by default
distilling the fp32 model with SGD, :func:`meddx.deploy.compress.compress_run`) the fake quantizers are removed
and the fp32 weights go through the same ORT static quantization as PTQ.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize

from meddx.errors import MeddxError
from meddx.utils.io import atomic_path

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")  # ORT CalibrationMethod MinMax, Percentile, Entropy
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def calibration_batches(images: torch.Tensor, n: int = 512, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """``n`` random training images (raw dtype) in batches: the calibration set."""
    if n < 1:
        raise MeddxError(f"calibration needs at least 1 image, got {n}")
    if len(images) == 0:
        raise MeddxError("no training images to calibrate the int8 ranges on")
    idx = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]
    x = images[idx].numpy()
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def float_end_nodes(nodes: list[Any]) -> list[str]:
    """Names of the nodes kept in float by ``float_ends``: everything up to and including the first convolution
    (the folded preprocessing and the stem), and the last Gemm/MatMul (the classifier) with what follows it."""
    kinds = [n.op_type for n in nodes]
    first = next((i for i, k in enumerate(kinds) if k in ("Conv", "ConvTranspose")), -1)
    last = max((i for i, k in enumerate(kinds) if k in ("Gemm", "MatMul")), default=len(nodes))
    return [n.name for i, n in enumerate(nodes) if i <= first or i >= last]


def quantize_onnx(fp32_path: str | Path, int8_path: str | Path, calibration: list[np.ndarray],
                  method: str = "minmax", per_channel: bool = True, float_ends: bool = True) -> Path:
    """ORT static quantization (QDQ, int8 weights per channel, uint8 activations) of an exported meddx model;
    ``float_ends`` keeps the stem and the classifier in float (module docstring)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from meddx.deploy.onnx_export import read_meta, set_meta

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise MeddxError(f"calibration method must be one of {', '.join(methods)}, got {method!r}")
    if not calibration:
        raise MeddxError("no calibration images: int8 static quantization needs training images")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it: Iterator[np.ndarray] = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.it, None)
            return None if batch is None else {"image": batch}

        def rewind(self) -> None:
            self.it = iter(calibration)

    meta = read_meta(fp32_path)
    int8_path = Path(int8_path)
    with tempfile.TemporaryDirectory(dir=int8_path.parent) as work, atomic_path(int8_path) as tmp:
        pre = Path(work) / "preprocessed.onnx"  # shape inference + ORT graph optimisation, as ORT recommends
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        proto = onnx.load(str(pre))
        # Keep the output activation (softmax/sigmoid) in float: quantizing probabilities costs accuracy for nothing.
        keep_float = [n.name for n in proto.graph.node if n.op_type in ("Softmax", "Sigmoid")
                      and proto.graph.output[0].name in n.output]
        if float_ends:
            keep_float += float_end_nodes(list(proto.graph.node))
        quantize_static(str(pre), str(tmp), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method], nodes_to_exclude=keep_float,
                        extra_options={"CalibMovingAverage": False})
        out = onnx.load(str(tmp))
        set_meta(out, meta | {"quantization": {"format": "QDQ", "weights": "int8 per-channel" if per_channel
                                               else "int8 per-tensor", "activations": "uint8 per-tensor",
                                               "calibration": method,
                                               "float": ["preprocessing and first convolution", "classifier"]
                                               if float_ends else [],
                                               "calibration_images": int(sum(len(b) for b in calibration))}})
        onnx.save(out, str(tmp))
    return int8_path


# ---------------------------------------------------------------- quantization-aware training


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, leaving an identity BatchNorm.

    The network keeps its registered structure (so the checkpoint loads like any other): the convolution
    gets ``w * g / sqrt(v + eps)``, the BatchNorm becomes ``x + bias`` (weight 1, mean 0, var 1 - eps), which
    is what the ONNX export folds anyway. Conv->BN pairs come from an FX trace. Returns the pairs folded.
    """
    import torch.fx

    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception as exc:  # FX raises many kinds of tracing errors
        raise MeddxError(f"quantization-aware training needs an FX-traceable model ({type(exc).__name__})") from None
    mods = dict(model.named_modules())
    folded = 0
    with torch.no_grad():
        for node in graph.nodes:
            if node.op != "call_module" or not isinstance(mods.get(node.target), NORMS):
                continue
            src = node.args[0]
            if not (isinstance(src, torch.fx.Node) and src.op == "call_module"
                    and isinstance(mods.get(src.target), CONVS) and len(src.users) == 1):
                continue
            conv, bn = mods[src.target], mods[node.target]
            g = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv.weight.mul_(g.view(-1, *([1] * (conv.weight.ndim - 1))))
            shift = bn.bias - bn.running_mean * g
            if conv.bias is not None:
                shift = shift + conv.bias * g
                conv.bias.zero_()
            bn.weight.fill_(1.0)
            bn.bias.copy_(shift)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            folded += 1
    return folded


class WeightFakeQuant(nn.Module):
    """Symmetric int8 per-output-channel fake quantization (ORT's QInt8 per-channel weight scheme)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        amax = w.detach().abs().flatten(1).amax(1).clamp_min(1e-8)
        scale = (amax / 127.0).float()
        zero = torch.zeros_like(scale, dtype=torch.int32)
        return torch.fake_quantize_per_channel_affine(w, scale, zero, 0, -127, 127)


class ActFakeQuant:
    """Forward pre-hook: asymmetric uint8 per-tensor fake quantization of a layer's input.

    Observes the global min/max until enabled (calibration), then keeps that range fixed, as the int8 model
    will (a moving range following augmented training batches is a range ORT never uses)."""

    def __init__(self) -> None:
        self.lo: float | None = None
        self.hi: float | None = None
        self.enabled = False  # observe only (calibration) until enabled

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = args[0]
        if not self.enabled:
            lo, hi = float(x.detach().min()), float(x.detach().max())
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
            return args
        if self.lo is None or self.hi is None:
            raise MeddxError("int8 fake quantization enabled before calibration")
        lo_, hi_ = min(self.lo, 0.0), max(self.hi, 0.0)  # the range must contain zero (ORT does the same)
        scale = max(hi_ - lo_, 1e-8) / 255.0
        zero = int(round(-lo_ / scale))
        return (torch.fake_quantize_per_tensor_affine(x, scale, zero, 0, 255), *args[1:])


def prepare_qat(model: nn.Module, float_ends: bool = True) -> list[Any]:
    """Fold BN, freeze the (identity) BNs and attach weight/input fake quantizers to every Conv/Linear (with
    ``float_ends``, as :func:`quantize_onnx`: not the first convolution nor the last Linear, in module order,
    which is the stem and the classifier for the registered classifiers).

    Returns the handles that :func:`finish_qat` removes; call :func:`enable_act_quant` after calibrating.
    """
    fold_batchnorm(model)
    layers = [m for m in model.modules() if isinstance(m, (*CONVS, nn.Linear))]
    skip = set()
    if float_ends and layers:
        skip |= {id(m) for m in layers[:1] if isinstance(m, CONVS)}
        skip |= {id(m) for m in layers[-1:] if isinstance(m, nn.Linear)}
    handles: list[Any] = []
    for m in model.modules():
        if isinstance(m, NORMS):
            m.eval()
            m.weight.requires_grad_(False)  # BN is an identity + bias now; only the bias keeps learning
            m.train = lambda mode=True, _m=m: _m  # stays frozen when the model switches to training
        elif isinstance(m, (*CONVS, nn.Linear)) and id(m) not in skip:
            parametrize.register_parametrization(m, "weight", WeightFakeQuant())
            hook = ActFakeQuant()
            handles.append((m, hook, m.register_forward_pre_hook(hook)))
    return handles


def enable_act_quant(handles: list[Any]) -> None:
    for _, hook, _ in handles:
        hook.enabled = True


def finish_qat(model: nn.Module, handles: list[Any]) -> None:
    """Remove the fake quantizers (the fp32 weights stay; ORT quantizes them on the same grid)."""
    for m, _, handle in handles:
        handle.remove()
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
    for m in model.modules():
        if isinstance(m, NORMS) and "train" in m.__dict__:
            del m.train
            m.weight.requires_grad_(True)
