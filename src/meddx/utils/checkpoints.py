"""Checkpoints as safetensors: weights, optimiser state and metadata in one atomically written file.

Metadata (model name, classes, input size, normalisation, task, epoch, ...) travels as JSON in the
safetensors header, like torchvision keeps preprocessing beside its weights. Optimiser/scheduler
state is flattened into tensors + JSON so that resuming never needs pickle.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meddx.errors import MeddxError
from meddx.utils.io import atomic_path

if TYPE_CHECKING:  # torch is imported inside the functions that need it: read_meta stays torch-free
    import torch
    import torch.nn as nn

META_KEY = "meddx"
# Metadata format: 1 (until Dec 2026) named the label structure "task_kind"; 2 calls it "kind", like
# meddx.kinds, data.json and metrics.json, and records the intensity mapping of the training images.
FORMAT = 2


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    optimizer: torch.optim.Optimizer | None = None, extra_state: dict[str, Any] | None = None,
                    extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``model`` weights (+ optimiser state, extra tensors) and ``meta`` to ``path`` atomically."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra_tensors or {}).items()})
    state_json: dict[str, Any] = {"extra": extra_state or {}}
    if optimizer is not None:
        opt = optimizer.state_dict()
        scalars: dict[str, dict[str, Any]] = {}
        for pid, pstate in opt["state"].items():
            for k, v in pstate.items():
                if torch.is_tensor(v):
                    tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[k] = v
        state_json["optim"] = {"param_groups": opt["param_groups"], "scalars": scalars}
    metadata = {META_KEY: json.dumps(meta), "state": json.dumps(state_json)}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return Path(path)


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, Any]]:
    """Return (all tensors, meta, state JSON); a clear error for a missing, corrupt or foreign file."""
    header, tensors = _read(path, with_tensors=True)
    return tensors, upgrade_meta(json.loads(header[META_KEY])), json.loads(header.get("state", "{}"))


def read_meta(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a checkpoint (the safetensors header; no tensors read, no torch imported)."""
    header, _ = _read(path, with_tensors=False)
    return upgrade_meta(json.loads(header[META_KEY]))


def _read(path: str | Path, with_tensors: bool) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """The safetensors header (checked to be a meddx checkpoint's) and, if asked, the tensors (torch)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise MeddxError("checkpoint not found", path)
    try:
        with safe_open(str(path), framework="pt" if with_tensors else "numpy") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise MeddxError(f"not a readable safetensors checkpoint ({exc})", path) from None
    if META_KEY not in header:
        raise MeddxError("safetensors file has no meddx metadata (not a meddx checkpoint)", path)
    return header, tensors


def upgrade_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """Checkpoint metadata of any older format in today's words (format 1: ``task_kind`` -> ``kind``)."""
    meta = dict(meta)
    if meta.get("format") == 1 or "task_kind" in meta:
        if "task_kind" in meta:
            meta["kind"] = meta.pop("task_kind")
        meta.setdefault("intensity_mapping", None)
        meta["format"] = FORMAT
    return meta


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      state: dict[str, Any]) -> None:
    """Rebuild an optimiser state dict from the flattened form written by :func:`save_checkpoint`."""
    opt = state.get("optim")
    if not opt:
        return
    per_param: dict[int, dict[str, Any]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            per_param.setdefault(int(pid), {})[name] = v
    for pid, scal in opt["scalars"].items():
        per_param.setdefault(int(pid), {}).update(scal)
    optimizer.load_state_dict({"state": per_param, "param_groups": opt["param_groups"]})
