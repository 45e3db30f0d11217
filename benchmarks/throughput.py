"""Training throughput: meddx's loop vs a plain hand-written PyTorch loop, same model/data/batch, same run.

    python benchmarks/throughput.py [--model resnet18_slim] [--epochs 3]

The plain loop is the seed's style: TensorDataset + DataLoader(shuffle=True), float conversion and
normalisation per batch, forward, loss, backward, step, with `torch.optim.AdamW(model.parameters())`
as written by hand. meddx runs `train_one_epoch` with augmentation off (the plain loop has none), its
own optimiser set-up (parameter groups, foreach kernels), LR scheduler and progress callback on.
Runs alternate (A B A B ...)
so that machine noise hits both; the ratio of medians is reported.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_json, print_table  # noqa: E402


def plain_epoch(model, images, labels, opt, mean, std, batch_size, gen) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    model.train()
    for x, y in DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=True, generator=gen,
                           drop_last=True):
        x = (x.float() / 255.0 - mean) / std
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="*", default=["seednet", "resnet18_slim"])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    args = ap.parse_args()

    from meddx.data import load_data
    from meddx.data.augment import Normalization
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import build_optimizer
    from meddx.engine.loop import EpochSettings, train_one_epoch
    from meddx.models import create_model
    from meddx.tasks import get_task

    path = SHARED / "pneumoniamnist" / "pneumoniamnist.npz"
    data = load_data(str(path) if path.exists() else "phantom", size=None if path.exists() else 28)
    split, norm = data.train, Normalization.fit(data.train.images)
    task = get_task("classification", kind=data.task, num_classes=data.num_classes)
    n = len(split) - len(split) % args.batch_size
    rows = []
    for name in args.models:
        times = {"plain": [], "meddx": []}
        cfg = TrainConfig(model=name, batch_size=args.batch_size)
        for rep in range(args.epochs + 1):  # the first round is warm-up
            for kind in ("plain", "meddx"):
                torch.manual_seed(rep)
                model = create_model(name, data.in_channels, data.num_classes, data.image_size[0])
                if kind == "plain":  # what a person writes by hand: default AdamW, no schedule
                    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
                else:
                    opt, sched = build_optimizer(cfg, model, n // args.batch_size, 1)
                gen = torch.Generator().manual_seed(rep)
                t = time.perf_counter()
                if kind == "plain":
                    mean, std = torch.tensor(norm.mean).view(1, -1, 1, 1), torch.tensor(norm.std).view(1, -1, 1, 1)
                    plain_epoch(model, split.images, split.labels, opt, mean, std, args.batch_size, gen)
                else:
                    settings = EpochSettings(norm, args.batch_size, args.batch_size, torch.device("cpu"),
                                             on_step=lambda i, loss: None)
                    train_one_epoch(model, split, task, opt, sched, settings, gen)
                if rep > 0:
                    times[kind].append(n / (time.perf_counter() - t))
        plain, ours = statistics.median(times["plain"]), statistics.median(times["meddx"])
        rows.append({"dataset": data.name, "model": name, "batch_size": args.batch_size,
                     "plain_img_s": round(plain, 1), "meddx_img_s": round(ours, 1), "ratio": round(ours / plain, 3),
                     "threads": torch.get_num_threads()})
    print_table(rows, ["dataset", "model", "batch_size", "plain_img_s", "meddx_img_s", "ratio", "threads"],
                "training throughput (images/s, median of epochs)")
    print_json(rows)


if __name__ == "__main__":
    main()
