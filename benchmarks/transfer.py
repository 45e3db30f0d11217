"""Transfer learning between meddx runs on small sets (issue #18, item 5): fine-tuned vs from scratch.

    python benchmarks/transfer.py [--seeds 0 1 2] [--pairs phantom breast] [--out DIR]

For each pair, one source run is trained with the default recipe on a larger set; then each small target subset
(the robustness protocol's regimes, same seeds) is trained twice with the default recipe: from scratch and
from the source run's shipped weights (``--pretrained RUN``: every layer but the head). Pairs:

* ``phantom``: source 3,000 phantom slices (another phantom draw: no target image is in it) -> target
  phantom-binary-300 (same domain);
* ``breast``: source PneumoniaMNIST (all 4,708 training X-rays) -> target breast-300 (BreastMNIST training
  subsets, another modality: ultrasound).

Table: validation and test ACC/AUC per target, mean and worst case over seeds, and the training time. Last line:
JSON with per pair ``val_auc_scratch``, ``val_auc_transfer``, ``test_auc_scratch``, ``test_auc_transfer`` (means).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_json, print_table  # noqa: E402
from recipe_robustness import regime_data  # noqa: E402

SOURCE_SEED = 100  # phantom draws 2000-2002: disjoint from the targets' (seed 0-9: 1000-1092)
PAIRS = {"phantom": ("phantom-3000", "phantom-binary-300"), "breast": ("pneumoniamnist", "breast-300")}


def source_data(name: str):
    """The source set: the protocol's 3,000-slice phantom regime at a seed no target uses, or a whole MedMNIST file."""
    from meddx.data.medmnist import load_medmnist

    if name == "phantom-3000":
        return regime_data("phantom-binary-3000", SOURCE_SEED)
    return load_medmnist(SHARED / name / f"{name}.npz")


def train_and_score(data, out: str, name: str, seed: int, pretrained: str | None = None) -> dict:
    """Default recipe; returns the shipped model's validation and test ACC/AUC and the training seconds."""
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit

    cfg = TrainConfig(data=data.name, out=out, name=name, seed=seed, pretrained=pretrained, progress=False)
    t = time.time()
    run = fit(cfg, data=data)
    seconds = time.time() - t
    val = evaluate_run(run.path, data=data, split="val", n_bootstrap=0, report=False)
    test = evaluate_run(run.path, data=data, n_bootstrap=0, report=False)
    return {"run": str(run.path), "seconds": round(seconds, 1), "val_acc": val["acc"], "val_auc": val["auc"],
            "test_acc": test["acc"], "test_auc": test["auc"]}


def summarise(pair: str, start: str, runs: list[dict]) -> dict:
    rs = [r for r in runs if r["pair"] == pair and r["start"] == start]
    col = {k: np.array([r[k] for r in rs], float) for k in ("val_acc", "val_auc", "test_acc", "test_auc", "seconds")}
    return {"pair": pair, "start": start, "seeds": len(rs),
            **{f"{k}_mean": round(float(v.mean()), 4) for k, v in col.items()},
            "test_acc_worst": round(float(col["test_acc"].min()), 4),
            "test_auc_worst": round(float(col["test_auc"].min()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    ap.add_argument("--pairs", nargs="*", default=list(PAIRS), choices=list(PAIRS))
    ap.add_argument("--out", default="/tmp/meddx-transfer")
    args = ap.parse_args()
    runs = []
    for pair in args.pairs:
        source, target = PAIRS[pair]
        src = train_and_score(source_data(source), args.out, f"source-{source}", 0)
        print(f"source {source}: {json.dumps(src)}", flush=True)
        for seed in args.seeds:
            data = regime_data(target, seed)
            for start, weights in (("scratch", None), ("transfer", src["run"])):
                r = train_and_score(data, args.out, f"{target}-{start}-s{seed}", seed, weights)
                runs.append({"pair": pair, "target": target, "start": start, "seed": seed, **r})
                print(json.dumps(runs[-1]), flush=True)
    rows = [summarise(pair, start, runs) for pair in args.pairs for start in ("scratch", "transfer")]
    print_table(rows, ["pair", "start", "seeds", "val_acc_mean", "val_auc_mean", "test_acc_mean", "test_acc_worst",
                       "test_auc_mean", "test_auc_worst", "seconds_mean"],
                "transfer learning between meddx runs: fine-tuned vs from scratch (default recipe)")
    by = {(r["pair"], r["start"]): r for r in rows}
    print_json([{"pair": p, "target": PAIRS[p][1], "source": PAIRS[p][0],
                 **{f"{m}_{s}": by[(p, s)][f"{m}_mean"] for m in ("val_auc", "test_auc", "test_acc")
                    for s in ("scratch", "transfer")}} for p in args.pairs])


if __name__ == "__main__":
    main()
