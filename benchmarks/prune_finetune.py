"""How to fine-tune after structured pruning (issue #5): variants ranked by fidelity to the unpruned model.

Prunes the fp32 run's network once per variant (torch-pruning, same channels every time) and fine-tunes it
with `meddx.deploy.compress.finetune` (precise BN after each epoch) on the labels or by distilling the fp32
model. The ranking rule is fixed in advance and uses no test labels: the lowest mean |p - p_fp32| on the
validation split. Test ACC/AUC and agreement with the fp32 predictions are printed beside it.

    python benchmarks/compress.py                       # builds the fp32 runs under /tmp/meddx-bench-compress
    python benchmarks/prune_finetune.py --run /tmp/meddx-bench-compress/full/pneumoniamnist-resnet18 \
        --epochs 3 --variants labels:1e-3 kd1:1e-3 labels:2e-4 kd1:2e-4 kd0.7:1e-3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_json, print_table  # noqa: E402

COLUMNS = ["variant", "val_dp", "val_agree", "val_acc", "val_auc", "test_acc", "test_auc", "test_agree", "seconds"]


def main(argv: list[str] | None = None) -> None:
    import numpy as np
    import torch

    from meddx.data import load_data
    from meddx.data.augment import Normalization
    from meddx.deploy import prune
    from meddx.deploy.compress import finetune
    from meddx.deploy.distill import DistillationTask
    from meddx.engine.checkpoint import load_model
    from meddx.engine.config import TrainConfig
    from meddx.engine.loop import predict
    from meddx.engine.run import RunDir
    from meddx.models import get_model_spec
    from meddx.tasks import task_from_meta

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="a trained classification run folder (the fp32 source)")
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels removed")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=["labels:1e-3", "kd1:1e-3"],
                   help="LOSS:LR[:EPOCHS[:STEPS]]. LOSS: labels, or kdALPHA (kd1: pure distillation, kd0.7: 70%% "
                        "distillation). EPOCHS: default --epochs. STEPS > 1 prunes iteratively: the same final "
                        "width in STEPS equal multiplicative steps, the epochs split between them")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    src = RunDir.open(args.run)
    cfg = TrainConfig.load(src.config)
    data = load_data(cfg.data, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed)
    ckpt = src.model_checkpoint()
    base, meta = load_model(ckpt)
    task, norm = task_from_meta(meta), Normalization(**meta["normalization"])

    def scores(model: torch.nn.Module, split: str) -> np.ndarray:
        return predict(model, getattr(data, split).images, task, norm, batch_size=512)[0]

    ref = {split: scores(base, split) for split in ("val", "test")}

    def row(model: torch.nn.Module, label: str, seconds: float) -> dict[str, Any]:
        out: dict[str, Any] = {"dataset": data.name, "variant": label, "seconds": round(seconds, 1)}
        for split in ("val", "test"):
            y = scores(model, split)
            q = task.quick_metrics(getattr(data, split).labels.numpy(), y)
            out |= {f"{split}_acc": q["acc"], f"{split}_auc": q["auc"],
                    f"{split}_dp": float(np.abs(y - ref[split]).mean()),
                    f"{split}_agree": float((y.argmax(1) == ref[split].argmax(1)).mean())}
        return out

    rows = [row(base, "fp32 source", 0.0)]
    for variant in args.variants:
        loss, lr, *rest = variant.split(":")
        epochs = int(rest[0]) if rest else args.epochs
        steps = int(rest[1]) if len(rest) > 1 else 1
        torch.manual_seed(0)
        model, _ = load_model(ckpt)
        ft_task = task if loss == "labels" else DistillationTask(task, load_model(ckpt)[0], alpha=float(loss[2:]))
        tic = time.time()
        step_ratio = 1 - (1 - args.ratio) ** (1 / steps)  # (1 - r)^steps of the channels are kept
        for k in range(steps):
            info = prune.prune_structured(model, meta["model"], step_ratio, norm(data.train.images[:2]),
                                          get_model_spec(meta["model"]).head)
            finetune(model, data, ft_task, norm, cfg, epochs=epochs // steps + (k < epochs % steps), lr=float(lr),
                     seed=k)
        print(f"  channels now {info['channels_after']}", flush=True)
        rows.append(row(model, f"{loss}:{lr} x{epochs}" + (f" in {steps} steps" if steps > 1 else ""),
                        time.time() - tic))
        print(f"  {rows[-1]['variant']}: val |dp| {rows[-1]['val_dp']:.4f}", flush=True)
    best = min(rows[1:], key=lambda r: r["val_dp"])
    print_table(rows, COLUMNS, f"{data.name}: structured pruning {args.ratio:.0%} fine-tune variants "
                               f"(chosen by the lowest val |dp|: {best['variant']})")
    print_json(rows)


if __name__ == "__main__":
    main()
