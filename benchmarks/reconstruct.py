"""Reconstruction and denoising benchmark (issue #17): learned vs classical, per degradation and data set.

    python benchmarks/reconstruct.py [--minutes M] [--size 128] [--cases lowdose:phantom ...] [--quick] [--out DIR]

For each case (degradation : data set) one default model is trained with ``meddx.engine.fit`` on the task's
automatic schedule (6,000 optimiser steps for CT, 4,000 for MRI, within 15 minutes; ``--minutes`` sets another
budget), then every method is scored on the held-out test slices of that data set (split by volume, see README):

* CT: FBP (ramp; the network's input), FBP (Hann), NLM / TV (Chambolle) / wavelet with strengths tuned on the
  validation split only, BM3D (optional ``bm3d`` package, non-commercial licence, benchmark only), the network.
* MRI: zero-filled IFFT (the input), TV compressed sensing (weight tuned on validation), the network.

PSNR/SSIM per slice on the fixed range of ``meddx.metrics.image_quality`` (CT: [-1000, 1000] HU), means with 95 %
bootstrap CIs; seconds per slice of each method. Task-based measure (``lowdose:phantom``): AUC of the default
nodule classifier (``resnet18_slim`` trained on clean 64 px phantom slices inside this script) on the test
slices at full dose, at low dose and after each denoiser (slices area-averaged 128 -> 64 px, lung window), at
the reference dose and at 1/4 of it (``lowdose1024``: the same network, classical strengths tuned again).
The last line is a JSON list, one object per case.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_json, print_table  # noqa: E402

DEFAULT_CASES = ["lowdose:phantom", "lowdose:ct", "sparseview:ct", "mri4x:mri", "sparseview:phantom"]
QUICK_SPLITS = {"train": 16, "val": 4, "test": 6}


def load_case_data(dataset: str, size: int, quick: bool):
    from meddx.data.recon_data import load_phantom_ct, load_reconstruction

    if dataset == "phantom" and quick:
        return load_phantom_ct(size, 0, QUICK_SPLITS)
    return load_reconstruction(dataset, size=size)


def train_model(case: str, data: Any, args: argparse.Namespace) -> tuple[Any, float]:
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    degrade, dataset = case.split(":")
    cfg = TrainConfig(data=dataset, task="reconstruction", degrade=degrade, size=args.size,
                      epochs=1 if args.quick else None, max_minutes=None if args.quick else args.minutes,
                      batch_size=4 if args.quick else None, out=args.out,
                      name=f"{degrade}-{dataset}", progress=False)
    tic = time.time()
    run = fit(cfg, data=data)
    return run, (time.time() - tic) / 60


def timed(fn, n: int) -> tuple[np.ndarray, float]:
    tic = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - tic) / max(n, 1)


def ct_methods(task: Any, data: Any, clean_test: np.ndarray, fbp_test: np.ndarray, quick: bool
               ) -> dict[str, tuple[np.ndarray, float, str]]:
    """Classical CT methods on the test slices, strengths tuned on the validation slices only."""
    from meddx.classical.denoise import DENOISERS, denoise, tune

    x_val, y_val = task.pairs(data.val)
    clean_val, fbp_val = task.to_display(y_val), task.to_display(x_val)
    rng = task.intensity_range
    out: dict[str, tuple[np.ndarray, float, str]] = {}
    hann, sec = timed(lambda: hann_fbp(task, data.test), len(fbp_test))
    out["FBP (Hann)"] = (hann, sec, "")
    for name in DENOISERS:
        strength, _ = tune(name, clean_val, fbp_val, rng, max_images=4 if quick else 12)
        img, sec = timed(lambda n=name, s=strength: denoise(fbp_test, n, s, rng.lo, rng.hi), len(fbp_test))
        out[name.upper() if name != "wavelet" else "wavelet"] = (img, sec, f"strength {strength:g}")
    bm = bm3d_method(clean_val, fbp_val, fbp_test, rng, quick) if task.degradation.kind == "lowdose" else None
    if bm is not None:
        out["BM3D (benchmark only)"] = bm
    return out


def hann_fbp(task: Any, split: Any) -> np.ndarray:
    """The same noisy sinograms (same seeds) reconstructed with the Hann-windowed ramp filter."""
    from meddx.data.degrade import image_seed, low_dose_ct, sparse_view_ct

    clean = task.clean(split.images)
    d = task.degradation
    out = []
    for img, iid, px in zip(clean, split.ids, split.pixel_mm):
        if d.kind == "lowdose":
            out.append(low_dose_ct(img, d.photons, image_seed(iid), d.views, float(px), filter_name="hann"))
        else:
            out.append(sparse_view_ct(img, d.views, float(px), filter_name="hann"))
    return np.stack(out)


def bm3d_method(clean_val, fbp_val, fbp_test, rng, quick) -> tuple[np.ndarray, float, str] | None:
    try:
        import bm3d
    except ImportError:
        return None
    from skimage.restoration import estimate_sigma

    from meddx.metrics.image_quality import image_scores

    def run(images: np.ndarray, factor: float) -> np.ndarray:
        res = []
        for x in images:
            z = (x - rng.lo) / rng.width
            res.append(bm3d.bm3d(z, sigma_psd=factor * float(estimate_sigma(z))) * rng.width + rng.lo)
        return np.stack(res).astype(np.float32)

    pick = np.linspace(0, len(clean_val) - 1, min(3 if quick else 6, len(clean_val))).round().astype(int)
    grid = (0.8, 1.2, 1.6)
    scores = {f: image_scores(clean_val[pick], run(fbp_val[pick], f), rng)["psnr"].mean() for f in grid}
    best = max(scores, key=scores.get)
    img, sec = timed(lambda: run(fbp_test, best), len(fbp_test))
    return img, sec, f"sigma x{best:g}"


def mri_methods(task: Any, data: Any, x_test: Any, quick: bool) -> dict[str, tuple[np.ndarray, float, str]]:
    from meddx.classical.mri import tune_tv_cs, tv_cs_batch

    x_val, y_val = task.pairs(data.val)
    zf_val = (x_val[:, 0] + 1j * x_val[:, 1]).numpy()
    weight, _ = tune_tv_cs(task.to_display(y_val), zf_val, x_val[:, 2, 0].numpy() > 0.5, task.intensity_range,
                           max_images=4 if quick else 10)
    zf = (x_test[:, 0] + 1j * x_test[:, 1]).numpy()
    masks = x_test[:, 2, 0].numpy() > 0.5
    img, sec = timed(lambda: tv_cs_batch(zf, masks, weight, iterations=5 if quick else 20), len(zf))
    return {"TV-CS": (img, sec, f"weight {weight:g}")}


def score_methods(clean: np.ndarray, methods: dict[str, tuple[np.ndarray, float, str]], rng: Any, n_boot: int
                  ) -> list[dict[str, Any]]:
    from meddx.metrics.image_quality import image_scores, summarize_scores

    rows = []
    for name, (img, sec, setting) in methods.items():
        s = summarize_scores(image_scores(clean, img, rng), n_boot)
        rows.append({"method": name, "psnr": s["psnr"]["mean"], "psnr_ci": s["psnr"]["ci"], "ssim": s["ssim"]["mean"],
                     "ssim_ci": s["ssim"]["ci"], "s_per_slice": sec, "setting": setting})
    return rows


def inference_time_256(model: Any, task: Any) -> float:
    """Seconds per 256 x 256 slice of the learned method (batch of 1, mean of 3 after a warm-up): the network,
    and for sparse-view CT its data-consistency steps on a phantom slice's 256 px sparse-view FBP."""
    import torch

    c = 3 if task.is_mri else 1
    x = torch.zeros(1, c, 256, 256)
    if task.is_mri:
        x[:, 2, :, ::4] = 1.0
    elif task.degradation.kind == "sparseview":
        from meddx.data.degrade import sparse_view_ct
        from meddx.data.phantom import make_slices

        x[0, 0] = torch.from_numpy(sparse_view_ct(make_slices(1, size=256, seed=0).images[0],
                                                  task.degradation.views)) / 1000.0

    def run() -> None:
        task.consistent(task.to_display(task.predict(model, x)), x)

    run()
    tic = time.perf_counter()
    for _ in range(3):
        run()
    return (time.perf_counter() - tic) / 3


def all_methods(task: Any, model: Any, data: Any, label: str, args: argparse.Namespace
                ) -> tuple[np.ndarray, dict[str, tuple[np.ndarray, float, str]]]:
    """(clean test slices, {method: (output, s/slice, setting)}) of ``task``'s degradation of the test split."""
    x_test, y_test = task.pairs(data.test)
    clean, degraded = task.to_display(y_test), task.to_display(x_test)
    alone, sec = timed(lambda: task.to_display(task.predict(model, x_test)), len(clean))
    learned, dc_sec = timed(lambda: task.consistent(alone, x_test), len(clean))
    methods = {"FBP (ramp)" if not task.is_mri else "zero-filled": (degraded, 0.0, "input")}
    methods |= mri_methods(task, data, x_test, args.quick) if task.is_mri else ct_methods(
        task, data, clean, degraded, args.quick)
    if learned is not alone:  # sparse view: the network, then data consistency with the measured views
        methods["network alone"] = (alone, sec, label)
        label = f"{label} + data consistency"
    methods["network"] = (learned, sec + dc_sec, label)
    return clean, methods


def run_case(case: str, args: argparse.Namespace, classifier: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Train the case's default model, score every method; for low-dose phantom also at 1/4 of the dose (the
    same network: it was trained over a range of doses) with the task-based AUC at both doses."""
    from meddx.engine.checkpoint import load_model
    from meddx.tasks import task_from_meta
    from meddx.tasks.reconstruction import ReconstructionTask

    degrade, dataset = case.split(":")
    data = load_case_data(dataset, args.size, args.quick)
    run, minutes = train_model(case, data, args)
    model, meta = load_model(run.model_checkpoint())
    task = task_from_meta(meta)
    label = f"{meta['model']}, {minutes:.1f} min training"
    tasks = [(case, task)]
    auc = classifier is not None and dataset == "phantom" and degrade.startswith("lowdose")
    if auc and degrade == "lowdose":
        tasks.append((f"lowdose1024:{dataset} (same network)", ReconstructionTask("lowdose1024", task.image_shape)))
    summaries, all_rows = [], []
    for name, t in tasks:
        clean, methods = all_methods(t, model, data, label, args)
        rows = score_methods(clean, methods, t.intensity_range, 200 if args.quick else 1000)
        for r in rows:
            r.update(case=name)
        summary = summarize_case(t.degradation.name, dataset, rows, len(clean), minutes,
                                 inference_time_256(model, t))
        if auc:
            aucs = task_aucs(classifier, data, methods, args)
            for r in rows:
                r["auc"] = aucs.get(r["method"])
            summary |= {"auc_full_dose": aucs["full dose"], "auc_input": aucs[rows[0]["method"]],
                        "auc_learned": aucs["network"], "auc_best_classical": aucs.get(summary["best_classical"])}
            rows.insert(0, {"case": name, "method": "full dose (reference)", "auc": aucs["full dose"]})
        summaries.append(summary)
        all_rows += rows
    return summaries, all_rows


def summarize_case(degrade: str, dataset: str, rows: list[dict[str, Any]], n: int, minutes: float,
                   sec_256: float) -> dict[str, Any]:
    by = {r["method"]: r for r in rows}
    classical = [r for r in rows[1:] if r["method"] not in ("network", "network alone", "BM3D (benchmark only)")]
    best = max(classical, key=lambda r: r["psnr"])
    return {"degradation": degrade, "dataset": dataset, "n_test": n,
            "psnr_learned": by["network"]["psnr"], "psnr_best_classical": best["psnr"],
            "best_classical": best["method"],
            "psnr_input": rows[0]["psnr"], "ssim_learned": by["network"]["ssim"], "ssim_best_classical": best["ssim"],
            "ssim_input": rows[0]["ssim"], "psnr_bm3d": by.get("BM3D (benchmark only)", {}).get("psnr"),
            "train_minutes": round(minutes, 2), "s_per_slice_learned": by["network"]["s_per_slice"],
            "s_per_256_slice_learned": sec_256,
            "psnr_network_alone": by.get("network alone", by["network"])["psnr"]}


# ------------------------------------------------------------------------------------- task-based AUC


def train_classifier(args: argparse.Namespace) -> Any:
    """The default nodule classifier (resnet18_slim, default recipe) on clean 64 px phantom slices."""
    from meddx.engine.checkpoint import load_model
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    cfg = TrainConfig(data="phantom", size=32 if args.quick else 64, epochs=1 if args.quick else 30,
                      max_minutes=None if args.quick else args.classifier_minutes, out=args.out,
                      name="nodule-classifier", progress=False)
    run = fit(cfg)
    return load_model(run.model_checkpoint())


def task_aucs(classifier: Any, data: Any, methods: dict[str, tuple[np.ndarray, float, str]],
              args: argparse.Namespace) -> dict[str, float]:
    """AUC (nodule vs none) of the classifier on the phantom test slices: full dose and each method's output."""
    import torch

    from meddx.data.augment import Normalization
    from meddx.data.phantom import make_slices, to_uint8
    from meddx.metrics import compute_auc
    from meddx.models.inference import predict
    from meddx.tasks import task_from_meta

    model, meta = classifier
    side = meta["input_size"]
    n = len(data.test)
    labels = make_slices(n, size=args.size, seed=1000 + 2).labels  # the test split's seed in recon_data
    norm, task = Normalization(**meta["normalization"]), task_from_meta(meta)

    def auc(hu: np.ndarray) -> float:
        f = hu.shape[-1] // side  # area average to the classifier's size (exact block mean)
        small = hu.reshape(n, side, f, side, f).mean((2, 4))
        images = torch.from_numpy(to_uint8(small)[:, None])
        scores, _ = predict(model, images, task, norm, batch_size=128)
        return float(compute_auc(labels, scores, "binary-class"))

    clean = data.test.images[:, 0].numpy()
    out = {"full dose": auc(clean)}
    out |= {name: auc(img) for name, (img, _, _) in methods.items()}
    return out


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="*", default=DEFAULT_CASES, help="degradation:dataset pairs")
    ap.add_argument("--minutes", type=float, default=None,
                    help="training budget per model (wall clock); default: the task's automatic schedule")
    ap.add_argument("--classifier-minutes", type=float, default=5.0)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--quick", action="store_true", help="tiny data, 1 epoch, size 32 (smoke test)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.quick:
        args.size = 32
        args.cases = [c for c in args.cases if c.endswith(":phantom")] or ["lowdose:phantom"]
    args.out = args.out or tempfile.mkdtemp(prefix="meddx-recon-bench-")
    needs_auc = any(c.startswith("lowdose") and c.endswith(":phantom") for c in args.cases)
    classifier = train_classifier(args) if needs_auc else None
    summaries, all_rows = [], []
    for case in args.cases:
        summary, rows = run_case(case, args, classifier)
        summaries += summary
        all_rows += rows
        print_table(rows, ["case", "method", "psnr", "ssim", "auc", "s_per_slice", "setting"], f"{case}")
        print("case summary:", json.dumps(summary, default=float), flush=True)
    print_table(summaries, ["degradation", "dataset", "psnr_input", "psnr_best_classical", "best_classical",
                            "psnr_learned", "ssim_best_classical", "ssim_learned", "psnr_bm3d", "train_minutes",
                            "s_per_256_slice_learned"], "summary (test slices)")
    print_json(summaries)


if __name__ == "__main__":
    main()
