"""Reconstruction and denoising: a network maps a physically degraded image (low-dose FBP, sparse-view FBP,
zero-filled undersampled MRI) back to the clean one.

The data bundle holds clean slices (:mod:`meddx.data.recon_data`); this task degrades them once per split
(:mod:`meddx.data.degrade`, each image by a seed derived from its id, so training, validation and
``meddx evaluate`` see the same inputs) and caches the result. Model units: CT in HU / 1000 (air -1, water
0), MRI magnitudes in [0, 1] (a CT slice under an MRI degradation is first windowed [-1000, 1000] HU -> [0, 1]).
MRI inputs have 3 channels: real and imaginary zero-filled image and the k-space column mask.

Training (the engine's one loop): CT on random ``patch``-sized crops (default 64 px) of input/target pairs,
MRI on whole slices (the data-consistency step needs the full k-space); L1 loss; each training slice degraded
several times, after exact flips/quarter turns and, for low dose, over a range of patient sizes and doses
(:mod:`meddx.tasks.reconstruction_augment`; no resampling, which would change the noise texture); the automatic
schedule counts optimiser steps (``STEPS``). Validation and testing: PSNR/SSIM on the fixed intensity range of
:mod:`meddx.metrics.image_quality`, the monitored metric is PSNR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from meddx.data.augment import AugmentPolicy, Normalization
from meddx.data.dataset import Split
from meddx.errors import MeddxError
from meddx.tasks.base import EvalRequest
from meddx.tasks.reconstruction_checks import check_range, check_slice

CT_PATCH = 64
STEPS = {"ct": 6000, "mri": 4000}  # optimiser steps of the automatic schedule (a 15 min budget may cut them)
HU_SCALE = 1000.0


class ReconstructionTask:
    """Image-to-image restoration of one named degradation (``meddx train --degrade NAME``)."""

    name = "reconstruction"
    monitor = "psnr"
    is_classifier = False
    num_outputs = 1

    def __init__(self, degradation: str, image_shape: tuple[int, ...], modality: str = "ct",
                 patch: int | None = None) -> None:
        from meddx.data.degrade import get_degradation

        self.degradation = get_degradation(degradation)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.modality = modality
        if self.is_mri and patch and patch != self.side:
            raise MeddxError(f"MRI reconstruction trains on whole slices ({self.side} px); drop --patch {patch}")
        if not self.is_mri and modality != "ct":
            raise MeddxError(f"--degrade {degradation} simulates CT and needs CT slices in HU, not {modality} data")
        self.patch = self.side if self.is_mri else (patch or min(CT_PATCH, self.side // 8 * 8))
        if self.patch > self.side:
            raise MeddxError(f"the {self.side} px slices are smaller than the training patch {self.patch} px")
        self._cache: dict[int, tuple[Split, torch.Tensor, torch.Tensor]] = {}
        self._variants: tuple[Split, torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_config(cls, cfg: Any, data: Any) -> ReconstructionTask:
        if data.task != "reconstruction":
            raise MeddxError(f"--task reconstruction needs clean slices (--data phantom, ct or mri); data "
                             f"{data.name!r} is a {data.task} set", data.source)
        cfg.degrade = cfg.degrade or default_degradation(data.modality)  # stored resolved in config.json and meta
        task = cls(cfg.degrade, data.image_size, data.modality, cfg.patch)
        for split in (data.train, data.val):  # degrade now, so that the time budget measures training only
            task.pairs(split)
        if cfg.augment != "none":
            task.training_pairs(data.train)
        return task

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> ReconstructionTask:
        modality = meta.get("modality", "ct")
        return cls(meta.get("degrade") or default_degradation(modality), tuple(meta["image_shape"]), modality,
                   meta.get("patch"))

    side = property(lambda self: self.image_shape[-1])
    is_mri = property(lambda self: self.degradation.kind == "mri")
    unit_scale = property(lambda self: 1.0 if self.is_mri else HU_SCALE)  # display units per model unit
    default_model = property(lambda self: {"mri": "recon_unet_dc", "lowdose": "recon_unet_nl"}.get(
        self.degradation.kind, "recon_unet"))
    default_batch_size = property(lambda self: 8 if self.is_mri else 16)
    # The automatic schedule in optimiser steps, not sample visits: an epoch is one patch per slice (6 steps for
    # the 98 head-CT slices), so the classifiers' 20-80 epochs were ~500 steps, where validation PSNR still
    # rose (README "Reconstruction and denoising" has the curves). The budget keeps it within the 20 min.
    default_steps = property(lambda self: STEPS["mri" if self.is_mri else "ct"])
    default_minutes = 15.0

    @property
    def intensity_range(self):
        from meddx.metrics.image_quality import CT_RANGE, MRI_RANGE

        return MRI_RANGE if self.is_mri else CT_RANGE

    # ---------------------------------------------------------------- data

    def clean(self, raw: torch.Tensor) -> np.ndarray:
        """Clean slices (N, 1, S, S) as stored -> (N, S, S) in display units (HU, or [0, 1] for MRI)."""
        x = raw[:, 0].float().numpy()
        check_range(x, self.modality)
        if self.is_mri and self.modality == "ct":
            x = np.clip((x + 1000.0) / 2000.0, 0.0, 1.0)
        if not self.is_mri:
            from meddx.data.degrade import ct_reference

            x = np.stack([ct_reference(s) for s in x]) if len(x) else x
        return x.astype(np.float32)

    def degrade(self, clean: np.ndarray, ids: list[str], pixel_mm: np.ndarray, photons: np.ndarray | None = None,
                seeds: list[int] | None = None) -> np.ndarray:
        """Display-unit clean slices -> model inputs (N, C, S, S): CT FBP in HU / 1000; MRI (re, im, mask).
        Low-dose CT may take per-slice ``photons`` (default: the degradation's) and noise ``seeds`` (default:
        from each slice's id)."""
        from meddx.data.degrade import degrade_ct_batch, degrade_mri_batch, image_seed

        seeds = seeds or [image_seed(i) for i in ids]
        if not self.is_mri:
            return degrade_ct_batch(clean, self.degradation, seeds, pixel_mm, photons)[:, None] / HU_SCALE
        zf, masks = degrade_mri_batch(clean, self.degradation, seeds)
        mask = np.broadcast_to(masks[:, None, :], zf.shape).astype(np.float32)
        return np.stack([zf.real, zf.imag, mask], 1).astype(np.float32)

    def pairs(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) of a split in model units, degraded once and cached."""
        key = id(split)
        if key not in self._cache or self._cache[key][0] is not split:
            clean = self.clean(split.images)
            ids, pixel = ids_and_pixels(split)
            inputs = torch.from_numpy(np.ascontiguousarray(self.degrade(clean, ids, pixel)))
            scale = self.unit_scale
            self._cache[key] = (split, inputs, torch.from_numpy(clean[:, None] / scale))
        return self._cache[key][1], self._cache[key][2]

    def training_pairs(self, split: Split) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs (K, N, C, S, S), targets (K, N, 1, S, S)): the stored pairs and K - 1 more degradations of
        each turned slice (:mod:`meddx.tasks.reconstruction_augment`), built once."""
        from meddx.tasks.reconstruction_augment import training_variants, variant_count

        if self._variants is None or self._variants[0] is not split:
            inputs, targets = self.pairs(split)
            scale = self.unit_scale
            ids, pixel = ids_and_pixels(split)
            x, y = training_variants(self, targets[:, 0].numpy() * scale, ids, pixel, inputs.numpy(),
                                     variant_count(len(split)))
            self._variants = (split, torch.from_numpy(x), torch.from_numpy(y[:, :, None] / scale))
        return self._variants[1], self._variants[2]

    def to_display(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """Model units (N, 1, S, S) -> display units (N, S, S): HU, or MRI magnitude."""
        x = x.numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        if self.is_mri:
            return np.sqrt(x[:, 0] ** 2 + x[:, 1] ** 2) if x.shape[1] == 3 else x[:, 0]
        return x[:, 0] * HU_SCALE

    # ---------------------------------------------------------------- training

    def make_batch(self, split: Split, idx: torch.Tensor, normalize: Normalization, device: torch.device,
                   policy: AugmentPolicy | None, generator: torch.Generator | None) -> tuple[torch.Tensor, Any]:
        """Input/target crops at one random position per sample (whole slices for MRI), each from one of the
        slice's training degradations (:meth:`training_pairs`) unless ``policy`` is None (``--augment none``:
        the stored pairs only); ``normalize`` is not used (fixed model units; see the module docstring)."""
        if policy is None:
            inputs, targets = self.pairs(split)
            x, y = inputs[idx], targets[idx]
        else:
            inputs, targets = self.training_pairs(split)
            k = torch.randint(0, len(inputs), (len(idx),), generator=generator)
            x, y = inputs[k, idx], targets[k, idx]
        if self.patch < self.side:
            x, y = random_crops(x, y, self.patch, generator)
        return x.to(device), y.to(device)

    def training_loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.l1_loss(model(x).float(), y)

    # ---------------------------------------------------------------- inference

    @torch.no_grad()
    def predict(self, model: nn.Module, inputs: torch.Tensor, device: torch.device | str = "cpu",
                batch_size: int = 8) -> torch.Tensor:
        """Whole-slice outputs (N, 1, S, S) in model units; slices padded to a multiple of 8 (reflection)."""
        model.eval()
        outs = []
        for i in range(0, len(inputs), batch_size):
            x = inputs[i:i + batch_size].to(device)
            pad_h, pad_w = (-x.shape[-2]) % 8, (-x.shape[-1]) % 8
            if (pad_h or pad_w) and not self.is_mri:  # the U-Net halves the size three times
                x = F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
            out = model(x).float()
            outs.append(out[..., :inputs.shape[-2], :inputs.shape[-1]].cpu())
        return torch.cat(outs) if outs else torch.zeros((0, 1, *inputs.shape[2:]))

    def consistent(self, restored: np.ndarray, inputs: torch.Tensor, where: str | Path | None = None) -> np.ndarray:
        """Display-unit network outputs, for sparse-view CT corrected towards the measured views
        (:mod:`meddx.classical.consistency`; validation during training scores the network alone)."""
        if self.degradation.kind != "sparseview":
            return restored
        if restored.shape[-1] != restored.shape[-2]:
            raise MeddxError(f"a sparse-view run assumes its own scan: a square slice whose field of view is the "
                             f"inscribed circle, {self.degradation.views} parallel views; got {restored.shape[-2:]}",
                             where)
        from meddx.classical.consistency import sparse_view_consistency

        views = self.degradation.views
        corrected = sparse_view_consistency(restored, self.to_display(inputs), views)
        unexplained = corrected.unexplained()
        if len(unexplained):
            i = int(unexplained[0])
            raise MeddxError(f"slice {i} is not a {views}-view FBP like this run's scans: its {views} views explain "
                             f"only {1 - corrected.residual_left[i]:.0%} of the network's disagreement with it (such "
                             "a scan: over 90 %); a full-view or other-geometry slice would be made worse", where)
        return corrected.images

    def validate(self, model: nn.Module, split: Split, normalize: Normalization, *, device: torch.device,
                 batch_size: int, amp: bool = False) -> dict[str, float]:
        from meddx.metrics.image_quality import image_scores

        inputs, targets = self.pairs(split)
        out = self.predict(model, inputs, device)
        scores = image_scores(self.to_display(targets), self.to_display(out), self.intensity_range)
        return {"loss": float(F.l1_loss(out, targets)), "psnr": float(np.mean(scores["psnr"])),
                "ssim": float(np.mean(scores["ssim"]))}

    def evaluate(self, model: nn.Module, request: EvalRequest) -> tuple[dict[str, Any], dict[str, Any]]:
        """PSNR/SSIM (95 % bootstrap CIs) of the network, the degraded input and the classical baselines tuned on
        ``request.reference`` (:meth:`classical`), per image, on the split; writes
        ``reconstructions_<split>.npz`` (clean, degraded, network, display units)."""
        import time

        from meddx.metrics.image_quality import image_scores, summarize_scores

        inputs, targets = self.pairs(request.split)
        tic = time.perf_counter()
        alone = self.to_display(self.predict(model, inputs, request.device))
        learned = self.consistent(alone, inputs)
        seconds = (time.perf_counter() - tic) / max(len(inputs), 1)
        clean, degraded = self.to_display(targets), self.to_display(inputs)
        rng = self.intensity_range
        methods = {"degraded input": degraded, **self.classical(inputs, request.reference)}
        if learned is not alone:
            methods["network alone (no data consistency)"] = alone
        methods["network"] = learned
        per_method = {k: summarize_scores(image_scores(clean, v, rng), request.n_bootstrap)
                      for k, v in methods.items()}
        net = per_method["network"]
        metrics = {"task": self.name, "degradation": self.degradation.name,
                   "degradation_summary": self.degradation.summary, "n": len(clean),
                   "intensity_range": rng.to_dict(), "n_bootstrap": request.n_bootstrap,
                   "psnr": net["psnr"]["mean"], "psnr_ci": net["psnr"]["ci"], "ssim": net["ssim"]["mean"],
                   "ssim_ci": net["ssim"]["ci"], "psnr_input": per_method["degraded input"]["psnr"]["mean"],
                   "ssim_input": per_method["degraded input"]["ssim"]["mean"], "methods": per_method,
                   "seconds_per_slice": seconds}
        metrics["headline"] = headline(metrics)
        if request.out_dir is not None:
            write_reconstructions(Path(request.out_dir) / f"reconstructions_{request.split_name}.npz",
                                  clean, degraded, learned)
        return metrics, {"clean": clean, "methods": methods, "ids": request.split.ids, "range": rng}

    def classical(self, inputs: torch.Tensor, reference: Split | None, max_tuning: int = 6
                  ) -> dict[str, np.ndarray]:
        """Classical baselines on the same inputs, strengths tuned on ``reference`` (the validation split; none
        when it is absent): NLM, TV and wavelet denoising of the FBP for CT, TV compressed sensing for MRI."""
        if reference is None or len(reference) == 0:
            return {}
        rng = self.intensity_range
        ref_x, ref_y = self.pairs(reference)
        clean_ref = self.to_display(ref_y)
        if self.is_mri:
            from meddx.classical.mri import tune_tv_cs, tv_cs_batch

            def parts(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
                return (x[:, 0] + 1j * x[:, 1]).numpy(), x[:, 2, 0].numpy() > 0.5

            weight, _ = tune_tv_cs(clean_ref, *parts(ref_x), rng, max_images=max_tuning)
            return {f"TV compressed sensing (weight {weight:g})": tv_cs_batch(*parts(inputs), weight)}
        from meddx.classical.denoise import DENOISERS, denoise, tune

        out = {}
        degraded, degraded_ref = self.to_display(inputs), self.to_display(ref_x)
        for name in DENOISERS:
            strength, _ = tune(name, clean_ref, degraded_ref, rng, max_images=max_tuning)
            out[f"{name} (strength {strength:g})"] = denoise(degraded, name, strength, rng.lo, rng.hi)
        return out

    def report_sections(self, context: dict[str, Any]) -> list[Any]:
        from meddx.report.reconstruction import comparison_section, metrics_section

        return [s for s in (metrics_section(context), comparison_section(context)) if s is not None]

    # ---------------------------------------------------------------- files

    def reconstruct_array(self, model: nn.Module, image: np.ndarray, device: torch.device | str = "cpu",
                          where: str | Path | None = None) -> np.ndarray:
        """One degraded 2D slice in display units (HU; MRI: complex zero-filled, or a magnitude taken as real)
        -> the network's slice in display units. The networks are fully convolutional, so any slice of at least
        16 px runs (MRI: sides a multiple of 8, its k-space mask regenerated from the run's degradation)."""
        image = check_slice(image, self.is_mri, where)
        if self.is_mri:
            from meddx.data.degrade import mri_mask

            width = image.shape[1]
            mask = np.broadcast_to(mri_mask(width, self.degradation.acceleration, self.degradation.mask, 0),
                                   image.shape).astype(np.float32)
            x = np.stack([image.real, image.imag, mask])[None].astype(np.float32)
        else:
            x = (image.astype(np.float32) / HU_SCALE)[None, None]
        x = torch.from_numpy(np.ascontiguousarray(x))
        return self.consistent(self.to_display(self.predict(model, x, device)), x, where)[0]

    def predict_files(self, predictor: Any, paths: list[str | Path], out_dir: str | Path | None = None
                      ) -> list[dict[str, Any]]:
        """``.npy`` slices -> ``<name>_recon.npy`` (other formats, with their geometry: ``meddx reconstruct``)."""
        if not paths:
            raise MeddxError("no image files given")
        from meddx.data.arrays import load_npy

        results = []
        for p in map(Path, paths):
            if p.suffix.lower() != ".npy":
                raise MeddxError("reconstruction runs predict .npy slices here; use `meddx reconstruct` for "
                                 "DICOM, NIfTI and PNG", p)
            out = self.reconstruct_array(predictor.model, np.asarray(load_npy(p)), predictor.device, p)
            target = Path(out_dir or p.parent) / f"{p.stem}_recon.npy"
            _save_npy(target, out)
            results.append({"file": str(p), "output": str(target), "shape": list(out.shape)})
        return results


def default_degradation(modality: str) -> str:
    return "mri4x" if modality == "mri" else "lowdose"


def ids_and_pixels(split: Split) -> tuple[list[str], np.ndarray]:
    """Each slice's id (its degradation seed) and pixel size in mm (1 where the split has none)."""
    ids = split.ids or [f"image{i}" for i in range(len(split))]
    pixel = getattr(split, "pixel_mm", None)
    return ids, pixel if pixel is not None and len(pixel) == len(split) else np.ones(len(split), np.float32)


def random_crops(x: torch.Tensor, y: torch.Tensor, patch: int, generator: torch.Generator | None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same random ``patch`` x ``patch`` window of input and target, one position per sample."""
    side = x.shape[-1]
    starts = torch.randint(0, side - patch + 1, (len(x), 2), generator=generator).tolist()
    xs = [x[i, :, a:a + patch, b:b + patch] for i, (a, b) in enumerate(starts)]
    ys = [y[i, :, a:a + patch, b:b + patch] for i, (a, b) in enumerate(starts)]
    return torch.stack(xs), torch.stack(ys)


def headline(m: dict[str, Any]) -> str:
    ci = m.get("psnr_ci") or [float("nan")] * 2
    return (f"{m['degradation']}: PSNR {m['psnr']:.2f} dB (95% CI {ci[0]:.2f}-{ci[1]:.2f}), SSIM {m['ssim']:.3f}; "
            f"input PSNR {m['psnr_input']:.2f} dB, SSIM {m['ssim_input']:.3f}; n={m['n']}")


def write_reconstructions(path: Path, clean: np.ndarray, degraded: np.ndarray, learned: np.ndarray) -> None:
    from meddx.utils.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, clean=clean, degraded=degraded, network=learned)


def _save_npy(path: Path, array: np.ndarray) -> None:
    from meddx.utils.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
