"""Semantic segmentation (2D and 3D): Dice + cross-entropy, patch sampling with foreground oversampling,
sliding-window inference (MONAI), Dice/IoU/HD95/surface Dice with bootstrap CIs, masks written as files.

The engine's loop is shared with classification: ``make_batch`` crops one patch per sampled image (a
random foreground voxel as the patch centre with probability ``fg_ratio``, as nnU-Net oversamples
foreground, else a uniform position), then normalises and augments image and mask together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.data.augment import AugmentPolicy, Normalization, random_affine
from meddx.data.dataset import Split
from meddx.errors import MeddxError
from meddx.tasks.base import EvalRequest

PATCH_2D, PATCH_3D = 96, 32  # largest default patch side; smaller images use their own size (multiple of 8)


def default_patch(image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Training patch and sliding-window size for images of ``image_shape`` (multiples of 8, >= 16)."""
    cap = PATCH_2D if len(image_shape) == 2 else PATCH_3D
    return tuple(max(16, min(cap, int(s)) // 8 * 8) for s in image_shape)


def sample_patches(images: torch.Tensor, masks: torch.Tensor, patch: tuple[int, ...], fg_ratio: float,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One patch per sample; centre on a random foreground voxel with probability ``fg_ratio``.

    Hand-written (rather than MONAI's RandCropByPosNegLabel) so that the crop positions come from the
    loop's torch generator and a resumed run draws exactly the same patches.
    """
    spatial = tuple(images.shape[2:])
    pad = [max(0, p - s) for p, s in zip(patch, spatial)]
    if any(pad):
        widths = [w for p in reversed(pad) for w in (p // 2, p - p // 2)]
        fill = float(images.min()) if images.numel() else 0.0
        images = F.pad(images, widths, value=fill)
        masks = F.pad(masks, widths, value=0)
        spatial = tuple(images.shape[2:])
    xs, ys = [], []
    for i in range(images.shape[0]):
        fg = None
        if float(torch.rand(1, generator=generator)) < fg_ratio:
            fg = torch.nonzero(masks[i, 0] > 0)
        if fg is not None and len(fg):
            centre = fg[int(torch.randint(len(fg), (1,), generator=generator))].tolist()
            start = [min(max(c - p // 2, 0), s - p) for c, p, s in zip(centre, patch, spatial)]
        else:
            start = [int(torch.randint(s - p + 1, (1,), generator=generator)) for p, s in zip(patch, spatial)]
        window = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(start, patch))
        xs.append(images[i][window])
        ys.append(masks[i][window])
    return torch.stack(xs), torch.stack(ys)


class SegmentationTask:
    """Per-voxel classes (background = 0) with a MONAI Dice + cross-entropy loss."""

    name = "segmentation"
    monitor = "dice"
    default_model = "unet"
    default_steps = None  # the recipe's schedule (meddx.engine.recipe)
    default_minutes = None
    is_classifier = False

    def __init__(self, num_classes: int, image_shape: tuple[int, ...], patch: tuple[int, ...] | None = None,
                 fg_ratio: float = 0.5, spacing: tuple[float, ...] | None = None, overlap: float = 0.25,
                 sw_batch_size: int = 4) -> None:
        if num_classes < 2:
            raise MeddxError(f"segmentation needs background + at least one class, got {num_classes} classes")
        self.num_classes = num_classes
        self.image_shape = tuple(int(s) for s in image_shape)
        self.patch = tuple(patch) if patch else default_patch(self.image_shape)
        if len(self.patch) != len(self.image_shape):
            raise MeddxError(f"patch {self.patch} does not fit {len(self.image_shape)}D images")
        self.fg_ratio = fg_ratio
        self.spacing = tuple(spacing) if spacing else None
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.tta = True  # mirror averaging in evaluate/predict (not in per-epoch validation)
        self._loss = None

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> SegmentationTask:
        if data.task != "segmentation":
            raise MeddxError(f"--task segmentation needs masks; data {data.name!r} is a {data.task} set "
                             "(use phantom, phantom3d or a folder of image/mask pairs)", data.source)
        patch = (cfg.patch,) * len(data.image_size) if cfg.patch else None
        return cls(data.num_classes, data.image_size, patch=patch, spacing=data.extra.get("spacing"))

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> SegmentationTask:
        shape = tuple(meta["image_shape"])
        patch = (meta["patch"],) * len(shape) if meta.get("patch") else None
        return cls(meta["num_outputs"], shape, patch=patch, spacing=meta.get("spacing"))

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def spatial_dims(self) -> int:
        return len(self.image_shape)

    @property
    def default_batch_size(self) -> int:
        """Patches per step when ``--batch-size`` is not given: full-resolution activations are large."""
        return 16 if self.spatial_dims == 2 else 2

    # ---------------------------------------------------------------- training

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Patches (foreground-oversampled), normalised; image and mask warped by the same random affine."""
        x, y = sample_patches(split.images[idx], split.labels[idx], self.patch, self.fg_ratio, generator)
        x = normalize(x.to(device, non_blocking=True))
        y = y.to(device, non_blocking=True).long()
        if policy is not None:
            c = x.shape[1]
            onehot = F.one_hot(y[:, 0], self.num_classes).movedim(-1, 1).float()
            warped = random_affine(torch.cat([x, onehot], 1), policy, generator)
            x, y = warped[:, :c], warped[:, c:].argmax(1, keepdim=True)
        return x, y

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self._loss is None:
            from monai.losses import DiceCELoss

            # batch Dice (one Dice over the whole batch, as nnU-Net) is stable when patches lack foreground
            self._loss = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False, batch=True)
        return self._loss(output.float(), target)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.loss(model(x), y)

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def predict_probabilities(self, model: nn.Module, images: torch.Tensor, normalize: Normalization, *,
                              device: torch.device | str = "cpu", batch_size: int = 16, amp: bool = False,
                              tta: bool = False) -> torch.Tensor:
        """Softmax probabilities (N, K, *S) by sliding-window inference (Gaussian-weighted windows).

        ``tta``: average over the mirror images along every spatial axis (4 passes in 2D, 8 in 3D), as
        nnU-Net does at inference.
        """
        from monai.inferers import sliding_window_inference

        from meddx.models.inference import autocast_for
        from meddx.tasks.base import axis_flips

        device = torch.device(device)
        model.eval()
        flips = [[]] + (axis_flips(self.spatial_dims) if tta else [])
        per = 1 if self.spatial_dims == 3 else max(1, min(batch_size, 32))  # full-resolution activations: keep small
        out = []
        for i in range(0, len(images), per):
            x = normalize(images[i:i + per].to(device))
            probs = 0.0
            for f in flips:
                with autocast_for(device, amp):
                    logits = sliding_window_inference(x.flip(f) if f else x, self.patch, self.sw_batch_size, model,
                                                      overlap=self.overlap, mode="gaussian")
                p = torch.softmax(logits.float(), 1)
                probs = probs + (p.flip(f) if f else p)
            out.append((probs / len(flips)).cpu())
        return torch.cat(out) if out else torch.zeros((0, self.num_classes, *images.shape[2:]))

    def predict_labels(self, model: nn.Module, images: torch.Tensor, normalize: Normalization,
                       **kw: Any) -> torch.Tensor:
        """Label maps (N, *S) uint8."""
        labels = []
        for i in range(0, len(images), 64):
            labels.append(self.predict_probabilities(model, images[i:i + 64], normalize, **kw).argmax(1).byte())
        return torch.cat(labels) if labels else torch.zeros((0, *images.shape[2:]), dtype=torch.uint8)

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]:
        """Mean foreground Dice over validation images holding each class (monitored), plus the loss."""
        from meddx.metrics.segmentation import mean_dice

        total, preds = 0.0, []
        for i in range(0, len(split), 64):
            probs = self.predict_probabilities(model, split.images[i:i + 64], normalize, device=device,
                                               batch_size=batch_size, amp=amp)
            target = split.labels[i:i + 64].long()
            total += float(self.loss(torch.log(probs.clamp_min(1e-8)), target)) * len(target)
            preds.append(probs.argmax(1))
        pred = torch.cat(preds)
        return {"loss": total / max(len(split), 1),
                "dice": mean_dice(pred, split.labels[:, 0].long(), self.num_classes)}

    def evaluate(self, model: nn.Module, request: EvalRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """Test metrics (Dice, IoU, HD95, surface Dice per class with bootstrap CIs) and predicted masks.

        Writes ``predictions_<split>.npz`` (y_true, y_pred label maps) and, for volumes, one NIfTI mask per
        case under ``masks_<split>/`` to ``out_dir``. Returns (metrics, report context).
        """
        from meddx.metrics.segmentation import evaluate_segmentation

        split, out_dir, n_bootstrap = request.split, request.out_dir, request.n_bootstrap
        pred = self.predict_labels(model, split.images, request.normalize, device=request.device,
                                   batch_size=request.batch_size, tta=self.tta)
        true = split.labels[:, 0]
        tol = float(min(self.spacing)) if self.spacing else 1.0  # surface tolerance: one voxel
        metrics = evaluate_segmentation(pred.numpy(), true.numpy(), request.class_names, spacing=self.spacing,
                                        tolerance=tol, n_bootstrap=n_bootstrap)
        metrics["patch"] = list(self.patch)
        metrics["mirror_tta"] = self.tta
        metrics["headline"] = headline(metrics)
        if out_dir is not None:
            self.write_split_outputs(Path(out_dir), split, pred, request.split_name)
        return metrics, {"y_true": true.numpy(), "y_pred": pred.numpy(), "images": split.images,
                         "ids": split.ids}

    def report_sections(self, context: dict[str, Any]) -> list[Any]:
        """Per-class metric table and example overlays of predicted vs true masks."""
        from meddx.report.segmentation import metrics_section, overlay_section

        return [s for s in (metrics_section(context), overlay_section(context)) if s is not None]

    def write_split_outputs(self, out_dir: Path, split: Split, pred: torch.Tensor, split_name: str) -> None:
        from meddx.utils.io import atomic_path

        with atomic_path(out_dir / f"predictions_{split_name}.npz") as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, y_true=split.labels[:, 0].numpy(), y_pred=pred.numpy())
        if self.spatial_dims == 3:
            from meddx.data.volumes import write_nifti

            spacing = self.spacing or (1.0, 1.0, 1.0)
            for k in range(len(pred)):
                name = _safe_name(split.ids[k] if split.ids else f"case{k}")
                write_nifti(out_dir / f"masks_{split_name}" / f"{name}.nii.gz", pred[k].numpy(), spacing)

    # ---------------------------------------------------------------- prediction on files

    def predict_files(self, predictor: Any, paths: list[str | Path], out_dir: str | Path | None = None
                      ) -> list[dict[str, Any]]:
        """Masks for image files (PNG/JPEG/.npy for 2D models; NIfTI/NRRD/DICOM folders for 3D models).

        Masks go to ``out_dir`` (default: beside each input) as ``<name>_mask.png`` (2D, 0/255 when binary,
        else class ids) or ``<name>_mask.nii.gz`` (3D, the input's spacing); one dict per file is returned.
        """
        if not paths:
            raise MeddxError("no image files given")
        return [self._predict_one(predictor, Path(p), Path(out_dir) if out_dir else None) for p in paths]

    def _predict_one(self, predictor: Any, path: Path, out_dir: Path | None) -> dict[str, Any]:
        names = predictor.classes
        target = (out_dir or path.parent) / f"{_case_name(path)}_mask"
        if self.spatial_dims == 2:
            from meddx.data.images import read_image

            original = tuple(read_image(path).shape[1:])
            img = predictor.load_image(path)
            probs = self.predict_probabilities(predictor.model, img[None], predictor.norm, device=predictor.device,
                                               tta=self.tta)
            probs = F.interpolate(probs, size=original, mode="bilinear", align_corners=False)
            labels = probs.argmax(1)[0].byte().numpy()
            out_path = target.with_suffix(".png")
            _write_png_mask(out_path, labels, self.num_classes)
            spacing = None
        else:
            from meddx.data.volumes import write_nifti

            labels, spacing, affine = self._predict_volume(predictor, path)
            out_path = Path(str(target) + ".nii.gz")
            write_nifti(out_path, labels, spacing, affine)  # on the input's grid and in its scanner space
        counts = {names[c]: int((labels == c).sum()) for c in range(1, self.num_classes)}
        out: dict[str, Any] = {"file": str(path), "mask": str(out_path), "shape": list(labels.shape),
                               "voxels": counts}
        if spacing is not None:
            voxel_ml = float(np.prod(spacing)) / 1000.0
            out["spacing_mm"] = list(spacing)
            out["volume_ml"] = {k: round(v * voxel_ml, 3) for k, v in counts.items()}
        return out

    def _predict_volume(self, predictor: Any, path: Path) -> tuple[np.ndarray, tuple[float, float, float], Any]:
        from meddx.data.volumes import prepare_intensities, read_volume, resample

        vol = read_volume(path)
        work = resample(vol, tuple(self.spacing)) if self.spacing else vol  # type: ignore[arg-type]
        x = torch.from_numpy(prepare_intensities(work.array))[None, None]
        probs = self.predict_probabilities(predictor.model, x, predictor.norm, device=predictor.device, tta=self.tta)
        if work.shape != vol.shape:  # back to the input grid
            probs = F.interpolate(probs, size=vol.shape, mode="trilinear", align_corners=False)
        return probs.argmax(1)[0].byte().numpy(), vol.spacing, vol.affine


def headline(m: dict[str, Any]) -> str:
    """One line for the CLI: Dice, IoU, HD95, surface Dice (foreground mean) with CIs when there are any."""
    def part(key: str, label: str, nd: int = 3) -> str:
        v, ci = m.get(key), m.get(f"{key}_ci")
        text = f"{label} {v:.{nd}f}" if v is not None and np.isfinite(v) else f"{label} -"
        if ci and all(c is not None and np.isfinite(c) for c in ci):
            text += f" (95% CI {ci[0]:.{nd}f}-{ci[1]:.{nd}f})"
        return text

    unit = "mm" if m.get("distance_unit") == "mm" else "vox"
    return "  ".join([part("dice", "Dice"), part("iou", "IoU"), part("hd95", f"HD95[{unit}]", 2),
                      part("surface_dice", "surface Dice"), f"n={m.get('n')}"])


def _case_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".npy"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in _case_name(Path(name)))


def _write_png_mask(path: Path, labels: np.ndarray, num_classes: int) -> None:
    from PIL import Image

    from meddx.utils.io import atomic_path

    arr = (labels > 0).astype(np.uint8) * 255 if num_classes == 2 else labels.astype(np.uint8)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")
