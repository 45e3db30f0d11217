"""Pairwise deformable registration (2D and 3D): a network maps a (fixed, moving) pair to a displacement field.

Loss (MONAI): image similarity of the warped moving image to the fixed one (``lncc``: local normalised
cross-correlation; ``mi``: global mutual information, for pairs of different modalities; ``mse``) + diffusion
regularisation of the field + Dice of the warped moving labels against the fixed labels (weak supervision,
when the data has labels). Warping is MONAI's ``Warp`` (``warped(x) = moving(x + ddf(x))``, voxels).
Metrics: Dice/HD95 per structure, TRE (mm), folding %, SD log det J, s/pair (:mod:`meddx.metrics.registration`).

Inference finishes with instance optimisation (:mod:`meddx.models.registration_refine`): the network's field
refined on the pair itself by a few Adam steps on the training similarity (LNCC) + diffusion, with the settings
in :data:`REFINE` (chosen on validation pairs; ``refine_steps=0`` gives the network's field alone).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.errors import MeddxError
from meddx.models.registration_nets import diffusion_loss, warp, warp_labels
from meddx.tasks.base import EvalRequest

SIMILARITIES = ("lncc", "mi", "mse")
REG_WEIGHT, DICE_WEIGHT = 1.0, 1.0  # diffusion regulariser and label Dice weights beside the similarity
# instance optimisation per spatial dimensionality: Adam steps, learning rate (voxels), diffusion weight, and the
# correction: linear on a grid ``grid`` times coarser than the image, or ``meshes`` (coarse, fine): a cubic B-spline
# on 6 intervals a side (SimpleITK's B-spline baseline's mesh) for the first 30 % of the steps, then on 16 (4-voxel
# control spacing at 64 px, the linear grid's) (meddx.models.registration_refine). Chosen on validation pairs
# (benchmarks/RESULTS.md): 2D lr 0.4 (was 1.0); then in 2D the B-spline stages instead of the linear grid of 4 at the
# same 50 steps: mean Dice of brain 2D (30 pairs) and phantom 2D (48) 0.952 vs 0.946, brain TRE 0.49 vs 0.71 mm.
# ``variance_floor``: LNCC's floor on a window's variance (MONAI's ``smooth_dr``, 1e-5 in training). Raised to 1e-3
# in the 2D refinement: near-flat windows (background, faint noise) then steer the field about 100x less; mean
# validation Dice of the two 2D sets 0.955 vs 0.952, and runs from starts 1e-5 voxel apart differ less.
# Only for LNCC: with mutual information the refinement was not validated (it diverged on the phantom), so it is
# off. ``affine``: the pre-alignment before the network (``meddx.models.registration_refine.affine_field``): None
# (off), or the number of Adam steps on the affine map after the centre-of-mass translation (0: translation only;
# 10-30 steps gave no better Dice on the phantom's validation pairs and cost time).
LNCC_WINDOW = {2: 7, 3: 5}  # MONAI's LNCC window in voxels, for training and the refinement alike
REFINE = {2: {"steps": 50, "lr": 0.4, "reg_weight": 0.3, "meshes": (6, 16), "coarse_share": 0.3, "affine": 0,
              "variance_floor": 1e-3},
          3: {"steps": 20, "lr": 1.0, "reg_weight": 0.3, "grid": 4, "affine": 0, "variance_floor": 1e-5}}


class RegistrationTask:
    """A registration network trained on (fixed, moving[, labels]) pairs."""

    name = "registration"
    monitor = "dice"
    default_model = "regunet_svf"
    default_steps = None  # the recipe's schedule (meddx.engine.recipe)
    default_minutes = None
    is_classifier = False

    def __init__(self, num_structures: int, image_shape: tuple[int, ...], spacing: tuple[float, ...] | None = None,
                 similarity: str = "lncc", refine_steps: int | None = None) -> None:
        if similarity not in SIMILARITIES:
            raise MeddxError(f"similarity must be one of {', '.join(SIMILARITIES)}, got {similarity!r}")
        self.num_structures = num_structures
        self.image_shape = tuple(int(s) for s in image_shape)
        self.spacing = tuple(float(s) for s in spacing) if spacing else None
        self.similarity = similarity
        default = REFINE[len(self.image_shape)]["steps"] if similarity == "lncc" else 0
        self.refine_steps = default if refine_steps is None else checked_steps(refine_steps)
        self._losses: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> RegistrationTask:
        if data.task != "registration":
            raise MeddxError(f"--task registration needs image pairs; data {data.name!r} is a {data.task} set (use "
                             "phantom, phantom3d, brain2d, brain3d, itk2d or a folder of NIfTI pairs)", data.source)
        return cls(data.num_classes, data.image_size, spacing=data.extra.get("spacing"),
                   similarity=data.extra.get("similarity", "lncc"))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> RegistrationTask:
        return cls(meta["num_outputs"], tuple(meta["image_shape"]), spacing=meta.get("spacing"))

    @property
    def num_outputs(self) -> int:
        return self.num_structures  # the builders size the field by spatial_dims; this is the label count

    @property
    def spatial_dims(self) -> int:
        return len(self.image_shape)

    @property
    def default_batch_size(self) -> int:
        return 8 if self.spatial_dims == 2 else 2

    # ---------------------------------------------------------------- training

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised (fixed, moving) pairs and their (fixed, moving) label maps; with an augmentation ``policy``
        (``--augment auto``, the default), the pairs under fresh random deformations
        (:mod:`meddx.tasks.registration_augment`: a few hundred stored pairs are over-fitted otherwise)."""
        images, labels = split.images[idx].to(device, non_blocking=True), split.labels[idx].to(device).long()
        if policy is not None:
            from meddx.tasks.registration_augment import augment_pairs

            images, labels = augment_pairs(images, labels, generator)
        return normalize(images), labels

    def _loss(self, key: str) -> Any:
        if key not in self._losses:
            from monai.losses import DiceLoss, GlobalMutualInformationLoss, LocalNormalizedCrossCorrelationLoss

            make = {"lncc": lambda: LocalNormalizedCrossCorrelationLoss(
                        spatial_dims=self.spatial_dims, kernel_size=LNCC_WINDOW[self.spatial_dims]),
                    "mi": lambda: GlobalMutualInformationLoss(num_bins=32),
                    "mse": nn.MSELoss, "diffusion": lambda: diffusion_loss,
                    "dice": lambda: DiceLoss(include_background=False)}
            self._losses[key] = make[key]()
        return self._losses[key]

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ddf = model(x)
        fixed, moving = x[:, :1], x[:, 1:2]
        loss = self._loss(self.similarity)(warp(moving, ddf), fixed) + REG_WEIGHT * self._loss("diffusion")(ddf)
        if self.num_structures > 1 and bool((y > 0).any()):
            onehot = F.one_hot(y, self.num_structures).movedim(-1, 2).float()  # (N, 2, K, *S)
            loss = loss + DICE_WEIGHT * self._loss("dice")(warp(onehot[:, 1], ddf), onehot[:, 0])
        return loss

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def predict_fields(self, model: nn.Module, images: torch.Tensor, normalize: Normalization, *,
                       device: torch.device | str = "cpu", batch_size: int = 8,
                       refine_steps: int | None = None) -> torch.Tensor:
        """Displacement fields (N, D, *S) for raw (fixed, moving) pairs (N, 2, *S), on the CPU: the network's,
        refined on each pair by ``refine_steps`` (default: the task's) steps of instance optimisation."""
        model.eval()
        per = max(1, batch_size if self.spatial_dims == 2 else 1)
        steps = self.refine_steps if refine_steps is None else checked_steps(refine_steps)
        out = [self._field(model, normalize(images[i:i + per].to(device)), steps).float().cpu()
               for i in range(0, len(images), per)]
        return torch.cat(out) if out else torch.zeros((0, self.spatial_dims, *images.shape[2:]))

    def _field(self, model: nn.Module, x: torch.Tensor, steps: int) -> torch.Tensor:
        from meddx.models.registration_refine import (
            FixedImageLNCC,
            GridWarp,
            affine_field,
            compose_after_affine,
            refine_field,
        )

        if steps <= 0:
            return model(x)
        settings = REFINE[self.spatial_dims] | {"steps": steps}
        fixed, moving, sim = x[:, :1], x[:, 1:2], self._loss(self.similarity)
        affine_steps, floor = settings.pop("affine"), settings.pop("variance_floor")
        if affine_steps is not None:
            affine = affine_field(fixed, moving, sim, steps=affine_steps)
            aligned = GridWarp(tuple(x.shape[2:]), x.dtype, x.device)(moving, affine)
            ddf = compose_after_affine(model(torch.cat([fixed, aligned], 1)).float(), affine)
        else:
            ddf = model(x).float()
        if self.similarity == "lncc":
            # the same loss (its variance floor aside) with the fixed image's window sums computed once and the
            # gradient in closed form: 2.2-3.1x faster than autograd through MONAI's (benchmarks/registration_refine.py)
            sim = FixedImageLNCC(fixed, LNCC_WINDOW[self.spatial_dims], smooth_dr=floor)
        return refine_field(fixed, moving, ddf, sim, **settings)

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]:
        """Mean structure Dice of the warped moving labels (monitored) and the similarity loss."""
        from meddx.metrics.segmentation import mean_dice

        ddf = self.predict_fields(model, split.images, normalize, device=device, batch_size=batch_size,
                                  refine_steps=0)  # the network alone: what training changes
        x = normalize(split.images)
        sim = float(self._loss(self.similarity)(warp(x[:, 1:2], ddf), x[:, :1]))
        warped = warp_labels(split.labels[:, 1].long(), ddf)
        dice = mean_dice(warped, split.labels[:, 0].long(), self.num_structures)
        return {"loss": sim, "dice": dice}

    def evaluate(self, model: nn.Module, request: EvalRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """Dice/HD95 per structure, TRE, folding, SDlogJ and s/pair with bootstrap CIs, beside the identity.

        Writes ``registration_<split>.npz`` (displacement fields and warped moving labels) to ``out_dir``.
        """
        split = request.split
        tic = time.perf_counter()
        ddf = self.predict_fields(model, split.images, request.normalize, device=request.device,
                                  batch_size=request.batch_size)
        per_pair = (time.perf_counter() - tic) / max(len(split), 1)
        landmarks = request.split_extra.get("landmarks")
        metrics = score_fields(split, [d.numpy() for d in ddf], request.class_names, self.spacing, landmarks,
                               request.n_bootstrap, per_pair)
        identity = score_fields(split, [None] * len(split), request.class_names, self.spacing, landmarks,
                                request.n_bootstrap, None)
        keep = ("dice", "dice_ci", "hd95", "hd95_ci", "tre_mm", "tre_mm_ci", "folding_pct", "folding_pct_ci", "sdlogj",
                "sdlogj_ci", "seconds_per_pair")
        metrics["identity"] = {k: identity.get(k) for k in ("dice", "dice_ci", "hd95", "tre_mm", "tre_mm_ci")}
        if self.refine_steps:  # the network's field alone, to show what the instance optimisation adds
            tic = time.perf_counter()
            net = self.predict_fields(model, split.images, request.normalize, device=request.device,
                                      batch_size=request.batch_size, refine_steps=0)
            net_only = score_fields(split, [d.numpy() for d in net], request.class_names, self.spacing, landmarks,
                                    request.n_bootstrap, (time.perf_counter() - tic) / max(len(split), 1))
            metrics["network_only"] = {k: net_only.get(k) for k in keep}
        metrics["refine_steps"] = self.refine_steps
        metrics["similarity"] = self.similarity
        metrics["headline"] = headline(metrics)
        if request.out_dir is not None:
            self._write_outputs(Path(request.out_dir), split, ddf, request.split_name)
        context = {"images": split.images, "labels": split.labels, "ddf": ddf, "ids": split.ids,
                   "registration": metrics}
        return metrics, context

    def _write_outputs(self, out_dir: Path, split: Split, ddf: torch.Tensor, split_name: str) -> None:
        from meddx.utils.io import atomic_path

        warped = warp_labels(split.labels[:, 1].long(), ddf).byte().numpy()
        with atomic_path(out_dir / f"registration_{split_name}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, ddf=ddf.numpy(), warped_labels=warped, fixed_labels=split.labels[:, 0].numpy())

    def report_sections(self, context: dict[str, Any]) -> list[Any]:
        from meddx.report.registration import registration_sections

        return registration_sections(context)

    def predict_files(self, predictor: Any, paths: list[str | Path], out_dir: str | Path | None = None
                      ) -> list[dict[str, Any]]:
        """Register ``paths`` = [fixed, moving] (as ``meddx register``): warped image and displacement field."""
        from meddx.data.registration_files import read_pair, scale_unit, write_outputs

        if len(paths) != 2:
            raise MeddxError(f"registration takes two files (fixed, moving), got {len(paths)}")
        fixed, moving, _ = read_pair(paths[0], paths[1])
        self.check_dims(fixed.ndim, paths[0])
        pair = torch.from_numpy(np.stack([scale_unit(fixed.array), scale_unit(moving.array)]))[None]
        ddf = self.predict_fields(predictor.model, pair, predictor.norm, device=predictor.device)
        warped = warp(torch.from_numpy(moving.array)[None, None].float(), ddf)[0, 0].numpy()
        stem = Path(paths[1]).name.split(".")[0]
        files = write_outputs(out_dir or Path(paths[1]).parent, stem, fixed, warped, ddf[0].numpy())
        return [{"fixed": str(paths[0]), "moving": str(paths[1]), **files}]

    def check_dims(self, ndim: int, where: Any) -> None:
        if ndim != self.spatial_dims:
            raise MeddxError(f"this model registers {self.spatial_dims}D images; got {ndim}D", where)


def checked_steps(value: int) -> int:
    """A refinement step count, or a one-line error for a negative one."""
    if int(value) < 0:
        raise MeddxError(f"refine steps must be >= 0, got {value}")
    return int(value)


def score_fields(split: Split, ddfs: list[np.ndarray | None], class_names: list[str],
                 spacing: tuple[float, ...] | None, landmarks: list[tuple[np.ndarray, np.ndarray]] | None,
                 n_bootstrap: int, seconds_per_pair: float | None) -> dict[str, Any]:
    """Score fields (None: identity) on a split's labels and landmarks."""
    from meddx.metrics.registration import pair_scores, summarize_registration

    moving = split.labels[:, 1].long()
    warped = torch.stack([warp_labels(moving[i:i + 1], torch.from_numpy(d)[None])[0] if d is not None else moving[i]
                          for i, d in enumerate(ddfs)]) if len(ddfs) else moving
    scores = pair_scores(warped.numpy(), split.labels[:, 0].numpy(), ddfs, len(class_names), landmarks,
                         spacing=spacing)
    return summarize_registration(scores, class_names, n_bootstrap, seconds_per_pair)


def headline(m: dict[str, Any]) -> str:
    """One line: Dice, HD95, TRE (vs identity), folding, SDlogJ, s/pair."""
    ident = m.get("identity") or {}
    parts = [f"Dice {m['dice']:.3f} (identity {ident.get('dice', float('nan')):.3f})", f"HD95 {m['hd95']:.2f}"]
    if m.get("tre_mm") is not None:
        parts.append(f"TRE {m['tre_mm']:.2f} mm (identity {ident.get('tre_mm', float('nan')):.2f})")
    parts += [f"folding {m['folding_pct']:.3f}%", f"SDlogJ {m['sdlogj']:.3f}",
              f"{m.get('seconds_per_pair', float('nan')):.3f} s/pair", f"n={m['n']}"]
    return "  ".join(parts)
