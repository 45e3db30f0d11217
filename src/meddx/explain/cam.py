"""CAM runners: pytorch-grad-cam classes behind the method table's ``run`` signature, plus a rank-generic
Score-CAM (pytorch-grad-cam's own upsampling is 2D only)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.explain.hooks import optional_import, released
from meddx.explain.inputs import ClassTarget


def cam_runner(cam_class: Callable[[], type]) -> Callable[..., torch.Tensor]:
    """A method-table runner for one pytorch-grad-cam class: hooks on, one call, hooks off (also on error)."""

    def run(model: nn.Module, x: torch.Tensor, targets: list[int | None], layer: nn.Module,
            options: dict[str, Any]) -> torch.Tensor:
        with released(cam_class()(model=model, target_layers=[layer])) as cam:
            cam.batch_size = int(options.get("batch_size", 32))  # Score-CAM's forward batch
            maps = cam(input_tensor=x.requires_grad_(True), targets=[ClassTarget(t) for t in targets])
        return torch.from_numpy(np.asarray(maps, dtype=np.float32))

    return run


def grad_cam_class(name: str) -> Callable[[], type]:
    return lambda: optional_import(f"pytorch_grad_cam:{name}")


@functools.cache
def score_cam_class() -> type:
    """pytorch-grad-cam's Score-CAM with rank-generic channel weights (its own upsampling is 2D only, and it
    prints a tqdm bar per image)."""
    score_cam = optional_import("pytorch_grad_cam:ScoreCAM")

    class RankGenericScoreCAM(score_cam):
        def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):  # noqa: ARG002
            with torch.no_grad():
                act = torch.from_numpy(activations).to(self.device)
                mode = "bilinear" if act.ndim == 4 else "trilinear"
                up = F.interpolate(act, size=tuple(input_tensor.shape[2:]), mode=mode, align_corners=False)
                flat = up.flatten(2)
                lo, hi = flat.min(-1).values, flat.max(-1).values
                shape = up.shape[:2] + (1,) * (up.ndim - 2)
                up = (up - lo.view(shape)) / (hi - lo + 1e-8).view(shape)
                scores = []
                for b, target in enumerate(targets):
                    masked = input_tensor[b:b + 1].detach() * up[b].unsqueeze(1)  # (K, C, *spatial)
                    for i in range(0, masked.shape[0], self.batch_size):
                        out = self.model(masked[i:i + self.batch_size])
                        scores.extend(float(target(o)) for o in out)
                scores_t = torch.tensor(scores).view(activations.shape[0], activations.shape[1])
                return torch.softmax(scores_t, dim=-1).numpy()

    return RankGenericScoreCAM
