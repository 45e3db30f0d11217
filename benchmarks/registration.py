"""Registration benchmark: learned (MONAI U-Net + scaling-and-squaring, then instance optimisation on the pair;
also the network alone) vs SimpleITK (affine, affine + B-spline
Mattes MI, affine + Demons) vs identity, per data set (phantom 2D, phantom 3D, MNI152 brain 2D slices, MNI152
brain 3D at 4 mm), all in one run: Dice, HD95, TRE (mm), folding %, SDlogJ, s/pair; plus the real inter-subject
pair Colin27 -> MNI152 scored on the brain mask.

    python benchmarks/registration.py [--minutes 4] [--only phantom2d ...] [--quick]

Training: the registration task's default model with a wall-clock budget per data set (``--minutes``); the
learned model is tested once on held-out pairs (other seeds; brain 2D: other slices). The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table  # noqa: E402

from meddx.data.augment import Normalization  # noqa: E402
from meddx.engine.checkpoint import load_model  # noqa: E402
from meddx.engine.config import TrainConfig  # noqa: E402
from meddx.engine.fit import fit  # noqa: E402
from meddx.engine.run import RunDir  # noqa: E402
from meddx.tasks.registration import RegistrationTask, score_fields  # noqa: E402

CLASSICAL = ("identity", "sitk-affine", "sitk-bspline", "demons")


def datasets(quick: bool) -> dict:
    from meddx.data.registration import load_phantom_pairs
    from meddx.data.registration_brain import load_brain2d, load_brain3d

    if quick:
        return {"phantom2d": lambda: load_phantom_pairs((32, 32), splits={"train": 8, "val": 2, "test": 3}),
                "phantom3d": lambda: load_phantom_pairs((16, 24, 24), splits={"train": 4, "val": 2, "test": 2})}
    return {"phantom2d": lambda: load_phantom_pairs((64, 64), splits={"train": 240, "val": 16, "test": 24}),
            "phantom3d": lambda: load_phantom_pairs((32, 48, 48), splits={"train": 48, "val": 4, "test": 6}),
            "brain2d": load_brain2d, "brain3d": lambda: load_brain3d(n_train=32)}


def train(data, minutes: float, out: str, quick: bool, epochs: int = 300):
    """Train the default model on ``data`` under ``out/<name>``; a finished run there is loaded instead
    (``--models DIR``: train once, score many times). Returns (model, meta, training seconds)."""
    done = Path(out) / data.name / "train_seconds.txt"
    if done.is_file():
        model, meta = load_model(RunDir.open(done.parent).model_checkpoint())
        return model, meta, float(done.read_text())
    cfg = TrainConfig(data=data.name, task="registration", epochs=1 if quick else epochs, max_minutes=minutes,
                      out=out, name=data.name, progress=False, lr=3e-3, warmup_epochs=0 if quick else 1)
    tic = time.time()
    run = fit(cfg, data=data)
    model, meta = load_model(run.model_checkpoint())
    seconds = time.time() - tic
    done.write_text(f"{seconds:.1f}")
    return model, meta, seconds


def learned_scores(model, meta, data, n_boot: int, refine_steps: int | None = None) -> dict:
    """The learned method on the test pairs, one pair at a time: the network + the task's default instance
    optimisation (``refine_steps=None``), or the network alone (0)."""
    task = RegistrationTask.from_meta(meta)
    norm = Normalization(**meta["normalization"])
    split = data.test
    task.predict_fields(model, split.images[:1], norm, refine_steps=refine_steps)  # warm-up
    tic = time.perf_counter()
    ddf = task.predict_fields(model, split.images, norm, batch_size=1, refine_steps=refine_steps)
    per = (time.perf_counter() - tic) / len(split)
    return score_fields(split, [d.numpy() for d in ddf], data.class_names, tuple(data.extra["spacing"]),
                        data.extra["test"]["landmarks"], n_boot, per)


def classical_scores(method: str, data, n_boot: int) -> dict:
    from meddx.classical.registration import register_arrays

    split, spacing = data.test, tuple(data.extra["spacing"])
    tic = time.perf_counter()
    ddfs = [register_arrays(split.images[i, 0].numpy(), split.images[i, 1].numpy(), method, spacing)
            for i in range(len(split))]
    per = (time.perf_counter() - tic) / len(split)
    return score_fields(split, ddfs if method != "identity" else [None] * len(split), data.class_names, spacing,
                        data.extra["test"]["landmarks"], n_boot, per)


def inter_subject(model, meta) -> list[dict]:
    """Colin27 (moving) -> MNI152 (fixed), brain-mask Dice, learned vs B-spline vs identity."""
    from meddx.classical.registration import register_arrays
    from meddx.data.registration_brain import colin_mni_pair
    from meddx.metrics.registration import field_regularity
    from meddx.models.registration_nets import warp_labels

    fixed, moving, fl, ml = colin_mni_pair()
    task, norm = RegistrationTask.from_meta(meta), Normalization(**meta["normalization"])
    rows = []
    pair = torch.from_numpy(np.stack([fixed, moving]))[None]
    for method in ("learned", "network alone", "sitk-bspline", "identity"):
        tic = time.perf_counter()
        if method in ("learned", "network alone"):
            steps = 0 if method == "network alone" else None
            ddf = task.predict_fields(model, pair, norm, refine_steps=steps)[0].numpy()
        else:
            ddf = register_arrays(fixed, moving, method, (4.0, 4.0, 4.0))
        sec = time.perf_counter() - tic
        w = warp_labels(torch.from_numpy(ml.astype(np.int64))[None], torch.from_numpy(ddf)[None])[0].numpy()
        dice = 2 * ((w > 0) & (fl > 0)).sum() / ((w > 0).sum() + (fl > 0).sum())
        rows.append({"method": method, "dice_brain": float(dice), "s/pair": sec, **field_regularity(ddf)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=4.0, help="training budget per data set")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--epochs", type=int, default=300, help="epoch cap (the budget may end training first)")
    ap.add_argument("--models", default=None, help="keep trained models here and reuse them on the next run")
    ap.add_argument("--only", nargs="*", default=None, help="data sets to run (phantom2d phantom3d brain2d brain3d)")
    args = ap.parse_args()
    n_boot = 50 if args.quick else 1000
    summary = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.models or tmp
        for name, load in datasets(args.quick).items():
            if args.only and name not in args.only:
                continue
            data = load()
            model, meta, train_s = train(data, args.minutes, out, args.quick, args.epochs)
            results = {"learned": learned_scores(model, meta, data, n_boot),
                       "network alone": learned_scores(model, meta, data, n_boot, refine_steps=0)}
            for method in CLASSICAL:
                results[method] = classical_scores(method, data, n_boot)
            rows = [{"method": k, "dice": v["dice"], "hd95": v["hd95"], "tre_mm": v.get("tre_mm"),
                     "folding_pct": v["folding_pct"], "sdlogj": v["sdlogj"], "s/pair": v["seconds_per_pair"]}
                    for k, v in results.items()]
            print_table(rows, ["method", "dice", "hd95", "tre_mm", "folding_pct", "sdlogj", "s/pair"],
                        f"{name}: {len(data.test)} test pairs, {len(data.train)} training pairs, "
                        f"trained {train_s / 60:.1f} min")
            le, bs, idn = results["learned"], results["sitk-bspline"], results["identity"]
            entry = {"dataset": name, "dice_learned": le["dice"], "dice_learned_ci": le["dice_ci"],
                     "dice_bspline": bs["dice"], "dice_demons": results["demons"]["dice"],
                     "dice_identity": idn["dice"], "dice_network": results["network alone"]["dice"],
                     "refine_steps": RegistrationTask.from_meta(meta).refine_steps,
                     "speedup": bs["seconds_per_pair"] / le["seconds_per_pair"],
                     "s_per_pair_learned": le["seconds_per_pair"], "s_per_pair_bspline": bs["seconds_per_pair"],
                     "folding_pct_learned": le["folding_pct"], "sdlogj_learned": le["sdlogj"],
                     "tre_mm_learned": le.get("tre_mm"), "tre_mm_bspline": bs.get("tre_mm"),
                     "tre_mm_identity": idn.get("tre_mm"), "tre_mm_network": results["network alone"].get("tre_mm"),
                     "s_per_pair_network": results["network alone"]["seconds_per_pair"],
                     "train_minutes": train_s / 60,
                     "n_test": len(data.test), "n_train": len(data.train)}
            if name == "brain3d":
                pair = inter_subject(model, meta)
                print_table(pair, ["method", "dice_brain", "folding_pct", "sdlogj", "s/pair"],
                            "Colin27 -> MNI152 (real inter-subject pair, brain mask)")
                entry["colin27_mni152_dice"] = {r["method"]: r["dice_brain"] for r in pair}
            summary.append(entry)
            print(json.dumps(entry), flush=True)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
