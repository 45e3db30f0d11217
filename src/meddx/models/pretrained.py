"""Transfer learning: load weights from a local file into a freshly built model, replacing its head."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from meddx.errors import MeddxError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A meddx checkpoint or run folder, a plain safetensors file, or a ``.pt``/``.pth`` state dict.

    ``.pt`` files are read with ``torch.load(weights_only=True)``: no pickled code is ever run.
    """
    from meddx.utils.checkpoints import META_KEY, model_state, read_checkpoint

    path = Path(path)
    if path.is_dir():
        path = path / "best.safetensors"
    if not path.is_file():
        raise MeddxError("weights file not found", path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                is_meddx = META_KEY in (f.metadata() or {})
        except (SafetensorError, OSError) as exc:
            raise MeddxError(f"not a readable safetensors file ({exc})", path) from None
        if is_meddx:
            return model_state(read_checkpoint(path)[0])
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad/unsafe pickles
        raise MeddxError(f"not a loadable state dict ({exc.__class__.__name__}: {str(exc).splitlines()[0]})",
                         path) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(torch.is_tensor(v) for v in obj.values()):
        raise MeddxError("file does not hold a state dict (name -> tensor)", path)
    return obj


def load_pretrained(model: nn.Module, path: str | Path, head: str) -> dict[str, list[str]]:
    """Copy matching weights from ``path`` into ``model``; the head (``head`` prefix) is re-initialised.

    A first convolution trained on another channel count is adapted with timm's ``adapt_input_conv``
    (RGB -> grey sums the filters). Any other missing or mis-shaped weight is an error.
    """
    from timm.models import adapt_input_conv

    src = {k.removeprefix("module."): v for k, v in read_state_dict(path).items()}
    own = model.state_dict()
    loaded, skipped_head = [], []
    new_state = dict(own)
    for key, target in own.items():
        is_head = key.startswith(head + ".")
        if key not in src:
            if is_head:
                skipped_head.append(key)
                continue
            raise MeddxError(f"weights have no {key!r} (is it the same architecture?)", path)
        value = src[key]
        if value.shape != target.shape:
            if is_head:
                skipped_head.append(key)
                continue
            if value.ndim >= 3 and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
                value = adapt_input_conv(target.shape[1], value)
            else:
                raise MeddxError(f"weight {key!r} has shape {tuple(value.shape)} but the model expects "
                                 f"{tuple(target.shape)}", path)
        new_state[key] = value.to(target.dtype)
        loaded.append(key)
    model.load_state_dict(new_state)
    return {"loaded": loaded, "reinitialised_head": skipped_head}
