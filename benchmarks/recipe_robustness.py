"""The default recipe against the pre-#18 one on a grid of regimes nobody tuned on (issue #18).

    python benchmarks/recipe_robustness.py [--quick] [--seeds 0 1 2] [--minutes M] [--regimes NAME ...]

Regimes are built from the CT phantom (binary nodule present; 3-class nodule count; 5-grade ordinal nodule size;
3-label multi-label findings; a 3-channel tinted variant) and from the shared MedMNIST files (BreastMNIST,
PneumoniaMNIST, AdrenalMNIST3D training subsets), at 300 / 1,000 / 3,000 training images. For each regime x
seed x recipe: test ACC/AUC of the shipped model, the peak validation AUC over epochs and the shipped model's
validation AUC (their difference is the selection gap). Per regime: mean and worst case over seeds.

Recipes (``--recipes``, default the first two): ``today`` = the pre-#18 defaults (300k-visit epochs, batch 128,
no label smoothing, unscaled modality augmentation, end-of-schedule model); ``candidate`` = today's ``meddx train``
defaults; ``visits300k`` = the defaults with the 2D epoch count planned for 300k sample visits (the fourteenth
session's candidate against 150k; since adopted, so now the same as ``candidate``: kept so that RESULTS' commands
still run). All get the same ``--minutes`` cap per run (the
schedule is fitted to it and still anneals), so the comparison fits a shared CPU.
Chosen on validation (the selection gap, validation AUC), reported on test.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_json, print_table  # noqa: E402

# name: (source, label variant, training images)
REGIMES = {
    "phantom-binary-300": ("phantom", "binary", 300),
    "phantom-binary-1000": ("phantom", "binary", 1000),
    "phantom-binary-3000": ("phantom", "binary", 3000),
    "phantom-rgb-1000": ("phantom", "rgb", 1000),
    "phantom-count3-1000": ("phantom", "count3", 1000),
    "phantom-grade5-1000": ("phantom", "grade5", 1000),
    "phantom-multilabel-1000": ("phantom", "multilabel", 1000),
    "breast-300": ("breastmnist", None, 300),
    "pneumonia-1000": ("pneumoniamnist", None, 1000),
    "adrenal3d-300": ("adrenalmnist3d", None, 300),
    "pneumonia-all": ("pneumoniamnist", None, None),  # all 4,708: a set large enough for the visit budget to bind
}
RECIPES = ("today", "candidate", "visits300k")
QUICK = ["phantom-binary-300", "phantom-grade5-1000", "breast-300"]
SPLIT_SIZES = {"val": 300, "test": 600}


def phantom_bundle(variant: str, n_train: int, seed: int):
    """A 28 px phantom data set whose labels are one of the variants (binary, count3, grade5, multilabel, rgb)."""
    import torch

    from meddx.data.dataset import DataBundle
    from meddx.data.phantom import make_slices, to_uint8
    from meddx.data.split import Split
    from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL

    splits, kinds = {}, {"binary": BINARY, "rgb": BINARY, "count3": MULTI_CLASS, "grade5": ORDINAL,
                         "multilabel": MULTI_LABEL}
    for i, (name, n) in enumerate({"train": n_train, **SPLIT_SIZES}.items()):
        ph = make_slices(n, size=28, seed=1000 + seed * 10 + i, nodule_fraction=0.6, max_nodules=3)
        x = to_uint8(ph.images)[:, None]
        if variant == "rgb":  # a per-image colour cast (stain / illumination variation) on a 3-channel image
            rng = np.random.default_rng([seed, i])
            x = np.clip(x * rng.uniform(0.6, 1.0, (n, 3, 1, 1)), 0, 255).astype(np.uint8)
        splits[name] = Split(torch.from_numpy(np.ascontiguousarray(x)), _labels(variant, ph))
    classes = {"count3": ["none", "one", "several"], "grade5": ["none", "<1.6 px", "1.6-2.3 px", "2.3-3 px", ">3 px"],
               "multilabel": ["nodule", "several nodules", "large nodule"]}.get(variant, ["no nodule", "nodule"])
    return DataBundle(name=f"phantom-{variant}", task=kinds[variant], class_names=classes, modality="generic"
                      if variant == "rgb" else "ct", **splits)


def _labels(variant: str, ph):
    import torch

    count = np.array([len(d) for d in ph.diameters])
    largest = np.array([d.max() if len(d) else 0.0 for d in ph.diameters])
    if variant == "count3":
        y = np.minimum(count, 2)
    elif variant == "grade5":
        y = np.digitize(largest, [0.01, 1.6, 2.3, 3.0])  # quartiles of the largest diameter at 28 px
    elif variant == "multilabel":
        return torch.from_numpy(np.stack([count > 0, count > 1, largest > 2.3], 1).astype(np.int64))
    else:
        y = (count > 0).astype(np.int64)
    return torch.from_numpy(y.astype(np.int64))


def medmnist_bundle(name: str, n_train: int, seed: int):
    """A stratified-by-chance training subset of a shared MedMNIST file (validation and test unchanged)."""
    import torch

    from meddx.data.medmnist import load_medmnist

    data = load_medmnist(SHARED / name / f"{name}.npz")
    if n_train is None:
        return data
    idx = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed))[:n_train]
    data.train = data.train.subset(idx)
    return data


def regime_data(regime: str, seed: int):
    """The data set of a regime (``REGIMES``) at ``seed``: the training subset's draw; MedMNIST splits unchanged."""
    source, variant, n = REGIMES[regime]
    return phantom_bundle(variant, n, seed) if source == "phantom" else medmnist_bundle(source, n, seed)


def recipe_config(recipe: str, data, out: str, name: str, seed: int, minutes: float):
    from meddx.data.augment import policy_for
    from meddx.engine.config import TrainConfig, auto_epochs
    from meddx.engine.recipe import auto_epochs as recipe_epochs

    common = dict(data=data.name, out=out, name=name, seed=seed, max_minutes=minutes, progress=False)
    if recipe == "today":
        epochs = auto_epochs(len(data.train))
        policy = data.modality if data.modality in ("ct", "xray", "ultrasound") else "generic"
        assert policy_for(policy) is not None
        return TrainConfig(**common, epochs=epochs, batch_size=128 if data.spatial_dims == 2 else None,
                           label_smoothing=0.0, average="none", select="last", augment=policy, calibrate="none")
    if recipe == "visits300k" and data.spatial_dims == 2:
        return TrainConfig(**common, epochs=recipe_epochs(len(data.train), 2, visits=300_000))
    return TrainConfig(**common)


def one_run(regime: str, recipe: str, seed: int, args) -> dict:
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit
    from meddx.engine.selection import peak

    data = regime_data(regime, seed)
    cfg = recipe_config(recipe, data, args.out, f"{regime}-{recipe}-s{seed}", seed, args.minutes)
    run = fit(cfg, data=data)
    m = evaluate_run(run.path, data=data, n_bootstrap=0, report=False)
    hist = run.read_history()
    _, peak_val = peak(hist, "auc")
    sel = json.loads((run.path / "selection.json").read_text())
    shipped_val = hist[-1]["val_auc"] if cfg.select == "last" else sel["shipped_score"]
    return {"regime": regime, "recipe": recipe, "seed": seed, "epochs": len(hist), "acc": m["acc"],
            "auc": m["auc"], "peak_val_auc": peak_val, "shipped_val_auc": shipped_val,
            "gap": max(0.0, peak_val - shipped_val)}


def summarise(runs: list[dict]) -> list[dict]:
    rows = []
    for regime in dict.fromkeys(r["regime"] for r in runs):
        for recipe in RECIPES:
            rs = [r for r in runs if r["regime"] == regime and r["recipe"] == recipe]
            if rs:
                acc, auc, gap, val = (np.array([r[k] for r in rs], float)
                                      for k in ("acc", "auc", "gap", "shipped_val_auc"))
                rows.append({"regime": regime, "recipe": recipe, "seeds": len(rs),
                             "val_auc_mean": round(np.nanmean(val), 4),
                             "acc_mean": round(acc.mean(), 4), "acc_worst": round(acc.min(), 4),
                             "auc_mean": round(np.nanmean(auc), 4), "auc_worst": round(np.nanmin(auc), 4),
                             "gap_max": round(gap.max(), 4)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help=f"regimes {', '.join(QUICK)}, 2 seeds, 1.5 min a run")
    ap.add_argument("--regimes", nargs="*", default=None, choices=list(REGIMES))
    ap.add_argument("--seeds", nargs="*", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=None, help="cap per run (default 5; --quick 1.5)")
    ap.add_argument("--recipes", nargs="*", default=["today", "candidate"], choices=list(RECIPES))
    ap.add_argument("--out", default="/tmp/meddx-recipe-robustness")
    args = ap.parse_args()
    regimes = args.regimes or (QUICK if args.quick else list(REGIMES))
    seeds = args.seeds if args.seeds is not None else ([0, 1] if args.quick else [0, 1, 2])
    args.minutes = args.minutes or (1.5 if args.quick else 5.0)
    runs = []
    for regime in regimes:
        for seed in seeds:
            for recipe in args.recipes:
                runs.append(one_run(regime, recipe, seed, args))
                print(json.dumps(runs[-1]), flush=True)  # one line a run: a cut-off sweep keeps what it measured
    rows = summarise(runs)
    columns = ["regime", "recipe", "seeds", "val_auc_mean", "acc_mean", "acc_worst", "auc_mean", "auc_worst",
               "gap_max"]
    print_table(rows, columns, "recipe robustness (the shipped model's validation AUC, test ACC/AUC; gap = peak "
                f"minus shipped validation AUC; {args.minutes} min/run)")
    print_json(headline(rows, seeds, args.minutes) | {"runs": runs})


def headline(rows: list[dict], seeds: list[int], minutes: float) -> dict:
    """The JSON figures: each recipe's largest selection gap, and where both ran, the worst-case rule (the
    candidate's worst seed against the pre-#18 recipe's mean, per regime)."""
    by = {recipe: {r["regime"]: r for r in rows if r["recipe"] == recipe} for recipe in RECIPES}
    out = {"regimes": len({r["regime"] for r in rows}), "seeds": len(seeds), "minutes_per_run": minutes}
    out |= {f"{recipe}_max_gap": max(r["gap_max"] for r in got.values()) for recipe, got in by.items() if got}
    cand, today = by["candidate"], by["today"]
    both = [k for k in cand if k in today]
    if both:
        out["worst_not_below_today_mean_acc"] = all(cand[k]["acc_worst"] >= today[k]["acc_mean"] for k in both)
        out["worst_not_below_today_mean_auc"] = all(cand[k]["auc_worst"] >= today[k]["auc_mean"] for k in both)
    return out


if __name__ == "__main__":
    main()
