"""Segmentation, 3D classification and detection benchmarks on CPU (issue #3), one part per function.

    python benchmarks/segdet.py --parts segmentation classification3d [--minutes 6] [--quick]

Parts (``--parts``, default all):

* ``segmentation`` (:func:`run_segmentation`): phantom nodule segmentation, 2D slices (U-Net and SegResNet)
  and 3D volumes (U-Net), Dice/IoU/HD95/surface Dice with 95% bootstrap CIs on the test split; a real-CT
  sanity check (TotalSegmentator example crop -> the example DICOM series; their labels are TotalSegmentator
  *model output*, not expert ground truth); and the peak memory of sliding-window inference on a
  256x256x128 volume (fresh subprocess per window size, peak RSS).
* ``classification3d`` (:func:`run_classification3d`): AdrenalMNIST3D (28^3, 64^3 with ``--c3d-64``) with the
  default recipe (only the epoch count set from the time budget), test ACC/AUC beside the MedMNIST v2 paper.

* ``detection2d`` (:func:`run_detection2d`): BCCD blood cells, CenterNet (``centernet_slim``) trained from scratch
  at 320x240 on 2 threads within ``--det-minutes``; mAP@0.5 and COCO mAP on the VOC test split (pycocotools).
* ``nodules3d`` (:func:`run_nodules3d`): phantom CT volumes 48x64x64, 3D CenterNet; FROC sensitivities at
  1/8..8 false positives per scan and CPM (LUNA16 rules) with a 95% bootstrap CI over scans.

Each part prints a table; the script ends with one JSON line holding every row of every part.
Training time is wall time on this machine (2 shared CPU cores).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_json, print_table  # noqa: E402

# MedMNIST v2 paper (Yang et al., Sci Data 2023), AdrenalMNIST3D as quoted in issue #3: (AUC, ACC).
ADRENAL_PAPER = {"resnet18_3d": (0.827, 0.721), "best": (0.839, 0.802)}
# Real-CT sanity check: TotalSegmentator "total" label ids -> our classes (structures in both example scans).
REAL_CT_CLASSES = {"liver": [5], "spleen": [1], "stomach": [6], "aorta": [52], "vertebrae": [30, 31, 32, 33],
                   "back muscles": [86, 87]}
SEG_COLUMNS = ["dataset", "model", "dims", "n_test", "epochs", "dice", "dice_ci", "iou", "hd95", "hd95_ci",
               "surface_dice", "dice_global", "fp_cases", "missed", "unit", "train_s"]


def epochs_for_budget(cfg, data, minutes: float, max_epochs: int, overhead: float = 1.3) -> int:
    """Epochs that fit ``minutes``: time three training steps (after one warm-up) and scale to an epoch, plus
    ``overhead`` for validation, so the cosine schedule runs to its end instead of being cut by the budget."""
    import torch

    from meddx.data.augment import Normalization, policy_for
    from meddx.engine.fit import build_optimizer
    from meddx.models import create_model
    from meddx.tasks import task_for_training

    task = task_for_training(cfg, data)
    model = create_model(cfg.model, data.in_channels, task.num_outputs, data.image_size[0], data.spatial_dims)
    opt, _ = build_optimizer(cfg, model, 10, 10)
    norm, gen = Normalization.fit(data.train.images[:256]), torch.Generator().manual_seed(0)
    bs = min(cfg.batch_size, len(data.train))
    times = []
    for i in range(4):
        t = time.time()
        x, y = task.make_batch(data.train, torch.arange(bs), norm, torch.device("cpu"), policy_for(data.modality), gen)
        loss = task.training_loss(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:
            times.append(time.time() - t)
    epoch_s = sum(times) / len(times) * max(1, len(data.train) // bs) * overhead
    return int(max(1, min(max_epochs, minutes * 60 / epoch_s)))


def _train_eval(data, model: str, max_epochs: int, minutes: float, batch_size: int, out: str, name: str,
                lr: float | None = None) -> tuple[dict[str, Any], float, int]:
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    task = "segmentation" if data.task == "segmentation" else "classification"
    cfg = TrainConfig(data=data.name, task=task, model=model, epochs=max_epochs, batch_size=batch_size, out=out,
                      name=name, max_minutes=minutes * 1.25, progress=False, eval_batch_size=32, lr=lr)
    cfg.epochs = epochs_for_budget(cfg, data, minutes, max_epochs)
    print(f"{name}: {cfg.epochs} epochs in a {minutes:g}-minute budget", flush=True)
    t = time.time()
    run = fit(cfg, data=data)
    seconds = time.time() - t
    m = evaluate_run(run.path, data=data, n_bootstrap=1000, report=True)
    return m, seconds, len(run.read_history())


def _seg_row(dataset: str, model: str, dims: int, m: dict[str, Any], seconds: float, epochs: int) -> dict[str, Any]:
    r3 = lambda v: None if v is None else round(float(v), 3)  # noqa: E731
    ci = lambda c: None if not c else [r3(c[0]), r3(c[1])]  # noqa: E731
    return {"part": "segmentation", "dataset": dataset, "model": model, "dims": dims, "n_test": m["n"],
            "epochs": epochs, "dice": r3(m["dice"]), "dice_ci": ci(m.get("dice_ci")), "iou": r3(m["iou"]),
            "hd95": r3(m["hd95"]), "hd95_ci": ci(m.get("hd95_ci")), "surface_dice": r3(m["surface_dice"]),
            "dice_global": r3(m["dice_global"]), "fp_cases": m["false_positive_cases"], "missed": m["missed_cases"],
            "unit": m["distance_unit"], "train_s": round(seconds, 1)}


def _real_ct_bundle():
    """Train on the TotalSegmentator example CT crop (3 mm), test on the example DICOM series resampled to 3 mm."""
    import numpy as np

    from meddx.data.dataset import Split
    from meddx.data.segdata import volumes_to_bundle
    from meddx.data.volumes import Volume, read_pair

    root = SHARED / "totalsegmentator_examples"
    lut = np.zeros(256, np.int64)
    for k, ids in enumerate(REAL_CT_CLASSES.values(), start=1):
        lut[ids] = k
    tr_img, tr_lab = read_pair(root / "example_ct_sm.nii.gz", root / "example_seg.nii.gz")
    te_img, te_lab = read_pair(root / "example_ct_dicom", root / "example_seg_dicom.nii.gz", spacing=tr_img.spacing)
    pairs = [(tr_img, Volume(lut[tr_lab.array], tr_lab.spacing)), (te_img, Volume(lut[te_lab.array], te_lab.spacing))]
    names = ["background", *REAL_CT_CLASSES]
    data = volumes_to_bundle(pairs, "totalseg-ct", str(root), ([0], [0], [1]), class_names=names)
    # one training scan: repeat it so an epoch draws 16 patches (foreground-oversampled) from it
    rep = Split(data.train.images.repeat(16, 1, 1, 1, 1), data.train.labels.repeat(16, 1, 1, 1, 1),
                [data.train.ids[0]] * 16)
    data.train = rep
    return data


_MEMORY_PROBE = r"""
import json, resource, sys, time, torch
from monai.inferers import sliding_window_inference
from meddx.models import create_model
torch.set_num_threads(2)
roi = int(sys.argv[1]); model = create_model(sys.argv[2], 1, 2, roi, 3).eval()
x = torch.randn(1, 1, 128, 256, 256)  # (z, y, x): a 256x256x128 volume
base = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS")][0]  # current RSS, KiB
t = time.time()
with torch.no_grad():
    out = sliding_window_inference(x, (roi,) * 3, 4, model, overlap=0.25, mode="gaussian")
labels = out.argmax(1)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"roi": roi, "peak_rss_mb": round(peak / 1024, 1), "before_mb": round(base / 1024, 1),
                  "seconds": round(time.time() - t, 1), "out_shape": list(labels.shape)}))
"""


def sliding_window_memory(rois: tuple[int, ...] = (32, 64, 96), model: str = "unet") -> list[dict[str, Any]]:
    """Peak resident memory (whole process, fresh interpreter) of sliding-window inference per window size."""
    rows = []
    for roi in rois:
        res = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(roi), model], capture_output=True, text=True,
                             check=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append({"part": "segmentation", "dataset": "sliding window 256x256x128", "model": f"{model} 3D",
                     "roi": roi, "peak_rss_mb": r["peak_rss_mb"], "rss_before_mb": r["before_mb"],
                     "seconds": r["seconds"], "within_4gb": r["peak_rss_mb"] < 4096})
    return rows


def run_segmentation(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Phantom 2D/3D nodule segmentation, the real-CT sanity check, sliding-window memory."""
    from meddx.data.segdata import load_phantom3d, load_phantom_segmentation

    q = args.quick
    rows = []
    side = 64 if q else args.seg_size
    data2d = load_phantom_segmentation(side, seed=args.seed, splits={"train": 60 if q else args.seg_train,
                                                                    "val": 20 if q else 200, "test": 40 if q else 400})
    for model in args.seg_models:
        m, s, ep = _train_eval(data2d, model, 2 if q else args.epochs_2d, args.minutes, 16, args.out,
                               f"seg2d-{model}-{side}")
        rows.append(_seg_row(f"phantom 2D {side}px", model, 2, m, s, ep))
    if "3d" in args.seg_skip:
        print_table(rows, SEG_COLUMNS, "Segmentation (test split; 95% bootstrap CIs)")
        return rows
    data3d = load_phantom3d(64, seed=args.seed, splits={"train": 8 if q else 96, "val": 2 if q else 8,
                                                        "test": 4 if q else 32})
    m, s, ep = _train_eval(data3d, "unet", 1 if q else args.epochs_3d, args.minutes * 1.5, 4, args.out, "seg3d-unet")
    rows.append(_seg_row("phantom3d 48x64x64", "unet", 3, m, s, ep))
    if (SHARED / "totalsegmentator_examples").is_dir():
        real = _real_ct_bundle()
        m, s, ep = _train_eval(real, "unet", 2 if q else args.epochs_real, args.minutes, 4, args.out, "seg-realct")
        rows.append(_seg_row("TotalSeg CT (model labels)", "unet", 3, m, s, ep))
        for r in m["per_class"]:
            rows.append({"part": "segmentation", "dataset": f"  real CT: {r['name']}", "model": "unet", "dims": 3,
                         "dice": round(r["dice"], 3), "hd95": None if r["hd95"] != r["hd95"] else round(r["hd95"], 1),
                         "unit": "mm"})
    else:
        print(f"real CT skipped: {SHARED / 'totalsegmentator_examples'} not found")
    print_table([r for r in rows if "roi" not in r], SEG_COLUMNS, "Segmentation (test split; 95% bootstrap CIs)")
    mem = sliding_window_memory((32,) if q else (32, 64, 96))
    print_table(mem, ["dataset", "model", "roi", "peak_rss_mb", "rss_before_mb", "seconds", "within_4gb"],
                "Sliding-window inference memory (peak RSS of the whole process)")
    return rows + mem


def run_classification3d(args: argparse.Namespace) -> list[dict[str, Any]]:
    """AdrenalMNIST3D with the default recipe (resnet18_slim 3D, AdamW, cosine, auto augmentation)."""
    from meddx.data.medmnist import load_medmnist

    files = [("adrenalmnist3d.npz", 28)] + ([("adrenalmnist3d_64.npz", 64)] if args.c3d_64 else [])
    rows = []
    for fname, size in files:
        path = SHARED / "adrenalmnist3d" / fname
        if not path.is_file():
            print(f"skipped: {path} not found")
            continue
        data = load_medmnist(path)
        if args.quick:
            data.train, data.test = data.train.subset(range(64)), data.test.subset(range(64))
        epochs = 1 if args.quick else args.c3d_epochs
        m, s, ep = _train_eval(data, "resnet18_slim", epochs, args.c3d_minutes, 128, args.out, f"adrenal{size}")
        auc_ci, acc_ci = m.get("auc_ci") or [None, None], m.get("acc_ci") or [None, None]
        rows.append({"part": "classification3d", "dataset": f"adrenalmnist3d {size}^3", "model": "resnet18_slim 3D",
                     "epochs": ep, "acc": round(m["acc"], 4), "auc": round(m["auc"], 4),
                     "acc_ci": [round(v, 3) for v in acc_ci if v is not None],
                     "auc_ci": [round(v, 3) for v in auc_ci if v is not None],
                     "paper_r18_3d_auc": ADRENAL_PAPER["resnet18_3d"][0],
                     "paper_r18_3d_acc": ADRENAL_PAPER["resnet18_3d"][1],
                     "paper_best_auc": ADRENAL_PAPER["best"][0], "paper_best_acc": ADRENAL_PAPER["best"][1],
                     "auc_ratio_best": round(m["auc"] / ADRENAL_PAPER["best"][0], 3),
                     "acc_ratio_best": round(m["acc"] / ADRENAL_PAPER["best"][1], 3),
                     "meets_best": m["acc"] >= ADRENAL_PAPER["best"][1] and m["auc"] >= ADRENAL_PAPER["best"][0],
                     "train_s": round(s, 1)})
    print_table(rows, ["dataset", "model", "epochs", "acc", "acc_ci", "auc", "auc_ci", "paper_r18_3d_acc",
                       "paper_r18_3d_auc", "paper_best_acc", "paper_best_auc", "acc_ratio_best", "auc_ratio_best",
                       "meets_best", "train_s"], "AdrenalMNIST3D test split vs MedMNIST v2 paper")
    return rows


DET_COLUMNS = ["dataset", "model", "input", "epochs", "metric", "ours", "ci", "target", "ratio", "reference", "details",
               "train_s"]


def _detection_fit(data, spec: str, args: argparse.Namespace, name: str, epochs: int, minutes: float,
                   batch_size: int, size: int | None = None) -> tuple[dict[str, Any], float, int]:
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    cfg = TrainConfig(data=spec, task="detection", model="centernet_slim", size=size or 28, epochs=epochs,
                      batch_size=batch_size, max_minutes=minutes, out=args.out, name=name, progress=False,
                      eval_batch_size=16, seed=args.seed)
    t = time.time()
    run = fit(cfg, data=data)
    seconds = time.time() - t
    return evaluate_run(run.path, data=data, n_bootstrap=0 if args.quick else 1000), seconds, len(run.read_history())


def run_detection2d(args: argparse.Namespace) -> list[dict[str, Any]]:
    """BCCD blood cells: CenterNet (centernet_slim) from scratch at 320x240, mAP@0.5 on the VOC test split."""
    from meddx.data.detection import load_detection_data

    root = SHARED / "bccd" / "BCCD"
    if not root.is_dir():
        print(f"detection2d skipped: {root} not found")
        return []
    data = load_detection_data(str(root), size=args.det_size, seed=args.seed)
    if args.quick:
        data.train, data.val, data.test = data.train.subset(range(16)), data.val.subset(range(8)), \
            data.test.subset(range(8))
    epochs = 1 if args.quick else args.det_epochs
    m, s, ep = _detection_fit(data, str(root), args, "bccd-centernet", epochs, args.det_minutes, args.det_batch,
                              args.det_size)
    h, w = data.image_size
    row = {"part": "detection2d", "dataset": f"BCCD test ({m['n']} images)", "model": "centernet_slim (scratch)",
           "input": f"{w}x{h}", "epochs": ep, "metric": "mAP@0.5", "ours": round(m["map50"], 4), "target": 0.80,
           "ratio": round(m["map50"] / 0.80, 3), "reference": "issue target 0.80",
           "details": "AP50 " + ", ".join(f"{k} {v:.3f}" for k, v in m["ap50_per_class"].items()),
           "map_coco": round(m["map"], 4), "map75": round(m["map75"], 4),
           "ap50_per_class": {k: round(v, 4) for k, v in m["ap50_per_class"].items()},
           "meets_target": m["map50"] >= 0.80, "train_s": round(s, 1), "threads": 2}
    coco = dict(row, metric="COCO mAP@[.5:.95]", ours=round(m["map"], 4), target=None, ratio=None, reference="-",
                details=f"mAP@0.75 {m['map75']:.3f}")
    print_table([row, coco], DET_COLUMNS, "Detection 2D: BCCD test split (pycocotools COCOeval, 101-point AP)")
    return [row]


def run_nodules3d(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Phantom CT volumes (48x64x64): 3D CenterNet nodule detection, FROC sensitivities and CPM (LUNA16 style)."""
    from meddx.data.detection import load_phantom_nodules

    q = args.quick
    splits = {"train": 8, "val": 4, "test": 8} if q else {"train": args.nod_train, "val": 40, "test": 100}
    data = load_phantom_nodules((48, 64, 64), seed=args.seed, splits=splits)
    m, s, ep = _detection_fit(data, "phantom3d", args, "phantom3d-centernet", 1 if q else args.nod_epochs,
                              args.nod_minutes, 4)
    sens = {f"sens@{fp:g}": round(v, 4) for fp, v in m["sensitivity"].items()}
    ci = m.get("cpm_ci")
    row = {"part": "nodules3d", "dataset": f"phantom3d test ({m['n_scans']} scans, {m['n_nodules']} nodules)",
           "model": "centernet_slim 3D", "input": "48x64x64", "epochs": ep, "metric": "CPM", "ours": round(m["cpm"], 4),
           "ci": [round(c, 3) for c in ci] if ci else None, "target": 0.90, "ratio": round(m["cpm"] / 0.90, 3),
           "reference": "LUNA16 leaders ~0.93 (real CT)", "details": " ".join(f"{k}={v:.3f}" for k, v in sens.items()),
           **sens, "max_sensitivity": round(m["max_sensitivity"], 4), "meets_target": m["cpm"] >= 0.90,
           "train_s": round(s, 1), "threads": 2}
    print_table([row], DET_COLUMNS, "Nodule detection 3D: phantom volumes, FROC (sensitivity at 1/8..8 FP/scan)")
    return [row]


PARTS = {"segmentation": run_segmentation, "classification3d": run_classification3d, "detection2d": run_detection2d,
         "nodules3d": run_nodules3d}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=list(PARTS))
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget per segmentation model")
    ap.add_argument("--epochs-2d", type=int, default=60, help="at most; fewer when the budget is smaller")
    ap.add_argument("--seg-size", type=int, default=128,
                    help="phantom slice side for 2D segmentation (nodule diameters scale with it: 4-20 px at 128)")
    ap.add_argument("--seg-train", type=int, default=1200, help="phantom training slices for 2D segmentation")
    ap.add_argument("--seg-models", nargs="+", default=["unet", "segresnet"])
    ap.add_argument("--seg-skip", nargs="*", default=[], choices=["3d"],
                    help="3d: only the 2D phantom rows (no 3D phantom, real CT or memory probe)")
    ap.add_argument("--epochs-3d", type=int, default=40)
    ap.add_argument("--epochs-real", type=int, default=60)
    ap.add_argument("--c3d-epochs", type=int, default=100, help="at most (the default recipe's auto epochs)")
    ap.add_argument("--c3d-minutes", type=float, default=12.0)
    ap.add_argument("--c3d-64", action="store_true", help="also AdrenalMNIST3D at 64^3")
    ap.add_argument("--det-size", type=int, default=320, help="BCCD longer image side (640x480 -> 320x240)")
    ap.add_argument("--det-epochs", type=int, default=100, help="planned; --det-minutes shortens the schedule")
    ap.add_argument("--det-batch", type=int, default=8)
    ap.add_argument("--det-minutes", type=float, default=28.0, help="BCCD training budget (issue: <= 30 min)")
    ap.add_argument("--nod-train", type=int, default=400, help="phantom training volumes")
    ap.add_argument("--nod-epochs", type=int, default=40)
    ap.add_argument("--nod-minutes", type=float, default=12.0)
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="/tmp/meddx-segdet-runs")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(2)
    rows: list[dict[str, Any]] = []
    for part in args.parts:
        rows.extend(PARTS[part](args))
    print_json(rows)


if __name__ == "__main__":
    main()
