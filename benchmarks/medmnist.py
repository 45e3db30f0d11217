"""Default recipe on every 2D MedMNIST file in ../shared/datasets: test ACC/AUC beside the MedMNIST v2 paper.

    python benchmarks/medmnist.py [--max-minutes N] [--only breastmnist] [--volumes] [--models resnet18_slim ...]

The recipe is `meddx train`'s default (no per-data-set settings); the paper's ResNet-18 (28) and
best-of-table figures are printed for the sets where the issue quotes them. With several --models every
model gets the same recipe (only the network changes); models run in the order given, first model first on
every set, and each row is printed as a JSON line when it is done. The comparison table puts each model
beside the first one (issue #19: ACC gap in points, AUC gap, training-time ratio).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_json, print_table  # noqa: E402

# MedMNIST v2 paper (Yang et al., Sci Data 2023), Table 3 as quoted in issue #2: (AUC, ACC).
PAPER = {
    "pneumoniamnist": {"resnet18_28": (0.944, 0.854), "best": (0.991, 0.946)},
    "breastmnist": {"resnet18_28": (0.901, 0.863), "best": (0.919, 0.863)},
    # 3D rows: ResNet-18+3D (28) and best of table (issue #3)
    "adrenalmnist3d": {"resnet18_28": (0.827, 0.721), "best": (0.839, 0.802)},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--max-minutes", type=float, default=None,
                    help="default: the recipe's (none in 2D, 15 min for volumes)")
    ap.add_argument("--volumes", action="store_true", help="also the 3D MedMNIST files (28^3)")
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", default="/tmp/meddx-bench-runs")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--phantom", action="store_true", help="also train the default recipe on the CT phantom")
    ap.add_argument("--models", nargs="+", default=None, help="registered models (default: the default model)")
    args = ap.parse_args()

    from meddx.data import load_data
    from meddx.data.medmnist import guess_name, load_medmnist, medmnist_info
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    files = sorted(p for p in SHARED.glob("*/*.npz") if (n := guess_name(p)) and
                   medmnist_info()[n]["spatial_dims"] in ((2, 3) if args.volumes else (2,)) and p.stem == n)
    if args.only:
        files = [p for p in files if p.stem in args.only]
    if not files and not args.phantom:
        sys.exit(f"no 2D MedMNIST .npz files under {SHARED}")
    from meddx.models import DEFAULT_MODEL

    models = args.models or [DEFAULT_MODEL]
    rows = []
    for model, path in [(m, p) for m in models for p in files + (["phantom"] if args.phantom else [])]:
        data = load_data("phantom") if path == "phantom" else load_medmnist(path)
        suffix = "" if model == DEFAULT_MODEL else f"-{model}"
        cfg = TrainConfig(data=str(path), model=model, out=args.out, name=f"{data.name}{suffix}-seed{args.seed}",
                          seed=args.seed, max_minutes=args.max_minutes, progress=False)
        t = time.time()
        run = fit(cfg, data=data)
        train_s = time.time() - t
        m = evaluate_run(run.path, data=data, n_bootstrap=1000, report=True)
        sel = json.loads((run.path / "selection.json").read_text())
        paper = PAPER.get(data.name, {})
        r18, best = paper.get("resnet18_28", (None, None)), paper.get("best", (None, None))
        rows.append({
            "dataset": data.name, "n_train": len(data.train), "model": cfg.model,
            "epochs": len(run.read_history()), "acc": round(m["acc"], 4), "auc": round(m["auc"], 4),
            "acc_ci": [round(v, 3) for v in m["acc_ci"]], "auc_ci": [round(v, 3) for v in m["auc_ci"]],
            "paper_r18_acc": r18[1], "paper_r18_auc": r18[0], "paper_best_acc": best[1], "paper_best_auc": best[0],
            "beats_r18": (m["acc"] >= r18[1] and m["auc"] >= r18[0]) if r18[0] else None,
            "seconds": round(train_s, 1), "shipped": sel["shipped"], "peak_val_auc": round(sel["peak_score"], 4),
            "shipped_val_auc": round(sel["shipped_score"], 4), "gap": round(sel["gap"], 4),
        })
        print_json(rows[-1])
    print_table(rows, ["dataset", "n_train", "model", "epochs", "acc", "auc", "acc_ci", "auc_ci", "paper_r18_acc",
                       "paper_r18_auc", "paper_best_acc", "paper_best_auc", "beats_r18", "seconds", "shipped", "gap"],
                "meddx default recipe vs MedMNIST v2 paper (test split)")
    if len(models) > 1:
        gaps = versus_first(rows, models[0])
        print_table(gaps, list(gaps[0]) if gaps else [], f"each model beside {models[0]} (same recipe, same run)")
        print_json({"rows": rows, "versus_first": gaps})
    else:
        print_json(rows)


def versus_first(rows: list[dict], reference: str) -> list[dict]:
    """Per data set and model: ACC gap (points), AUC gap and training-time ratio to ``reference``;
    ``within_target`` is issue #19's bar (ACC >= ref - 1 pt, AUC >= ref - 0.01, time <= 2x)."""
    ref = {r["dataset"]: r for r in rows if r["model"] == reference}
    out = []
    for r in rows:
        base = ref.get(r["dataset"])
        if r["model"] == reference or base is None:
            continue
        acc_gap, auc_gap = 100 * (r["acc"] - base["acc"]), r["auc"] - base["auc"]
        ratio = r["seconds"] / base["seconds"]
        out.append({"dataset": r["dataset"], "model": r["model"], "epochs": r["epochs"],
                    "ref_epochs": base["epochs"], "acc_gap_pt": round(acc_gap, 2), "auc_gap": round(auc_gap, 4),
                    "time_ratio": round(ratio, 2),
                    "within_target": bool(acc_gap >= -1.0 and auc_gap >= -0.01 and ratio <= 2.0)})
    return out


if __name__ == "__main__":
    main()
