"""Faithfulness of every explanation method on the synthetic CT phantom, where every nodule's mask is known.

    python benchmarks/explain.py [--run RUN] [--epochs 20] [--train-images 6000] [--images 150] [--layers layer4 layer3]
                                 [--model resnet18_slim ag_resnet18_slim ...] [--quick]

1. Model: the default recipe (resnet18_slim, `meddx train --data phantom`) at 48 px on --train-images slices
   with a fixed epoch count, trained once here on the CPU (or reused: --run, or the run folder a previous call
   left in --out).
2. Images: test images labelled "nodule" that the model also calls "nodule" (true positives), the first
   --images of them; every method explains the class "nodule" on the same images.
3. Per method: pointing game (the map's peak inside a nodule mask; strict, and with the original protocol's
   tolerance scaled to 48 px: 15 px at 224 px = 3 px), energy in mask (share of the map's mass inside the
   nodules; a uniform map scores the nodules' area share), deletion AUC (mean probability of "nodule" while
   the most salient 10% of the pixels are removed in 10 steps, removed pixels imputed from their kept
   neighbours as in ROAD; lower is better; --insertion adds the insertion AUC), and ms per image (batches of
   32). Two reference rows: a random map (chance) and the nodule mask itself (the ideal map).
4. CAM methods are also run on other layers of resnet18_slim (--layers) than the declared one, to measure
   whether a finer layer is more faithful.
5. Attention models (--model, issue #19): each is trained with the same recipe and gets its own table, where
   the model's own attention (method "attention"; and the coarsest gate alone / the ViT's last-layer CLS
   attention) stands beside Grad-CAM and Occlusion of that same trained model. Layers a model lacks are
   skipped; "attention" is skipped for models without attention.
6. Cost: Grad-CAM on one 28 px image with the default model (2 threads), median of --timing-calls calls;
   memory over --memory-calls calls in a loop (RSS and tracemalloc, after a warm-up).
"""

from __future__ import annotations

import argparse
import gc
import math
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_json, print_table  # noqa: E402

POS = 1  # class index of "nodule"


def rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * (2**12) / 2**20


def get_run(args, model="resnet18_slim"):
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    if args.run:
        return Path(args.run)
    prefix = "explain-bench" if model == "resnet18_slim" else f"explain-bench-{model}"
    name = f"{prefix}-phantom{args.size}-n{args.train_images}-e{args.epochs}-seed{args.seed}"
    path = Path(args.out) / name
    resume = None
    if (path / "last.safetensors").is_file() and (path / "history.jsonl").is_file():
        done = len((path / "history.jsonl").read_text().splitlines())
        if done >= args.epochs:
            print(f"reusing {path}", file=sys.stderr)
            return path
        resume = path  # an interrupted earlier call: continue it
    cfg = TrainConfig(data="phantom", model=model, size=args.size, epochs=args.epochs, seed=args.seed, out=args.out,
                      name=name, device=args.device, progress=False)
    from meddx.data.sources import PHANTOM_SPLITS, load_phantom

    # images depend only on (seed, split, index): a larger training split leaves val/test unchanged
    data = load_phantom(args.size, args.seed, splits=PHANTOM_SPLITS | {"train": args.train_images})
    tic = time.time()
    run = fit(cfg, data=data, resume=resume)
    print(f"trained {run.path} in {time.time() - tic:.0f} s", file=sys.stderr)
    return run.path


def evaluate_maps(model, x, maps, masks, args):
    from meddx.explain.faithfulness import FaithfulnessMeter, deletion_aucs, insertion_aucs

    strict, loose = FaithfulnessMeter(0.0), FaithfulnessMeter(3.0)
    strict.update(maps, masks)
    loose.update(maps, masks)
    kw = {"steps": args.deletion_steps, "max_fraction": args.max_fraction, "baseline": args.baseline}
    strict.add("deletion_auc", deletion_aucs(model, x, maps, POS, **kw))
    if args.insertion:
        strict.add("insertion_auc", insertion_aucs(model, x, maps, POS, **kw))
    out = strict.aggregate()
    out["pointing_game_3px"] = loose.aggregate()["pointing_game"]
    return out


def faithfulness_table(args, run_path):
    from meddx.data import load_data
    from meddx.data.augment import Normalization
    from meddx.engine.checkpoint import load_model
    from meddx.engine.config import TrainConfig
    from meddx.engine.run import RunDir
    from meddx.explain.methods import METHODS, explain
    from meddx.models.registry import get_model_spec

    run = RunDir.open(run_path)
    cfg = TrainConfig.load(run.config)
    model, meta = load_model(run.model_checkpoint(), args.device)
    data = load_data(cfg.data, size=cfg.size, seed=cfg.seed)
    norm = Normalization(**meta["normalization"])
    with torch.no_grad():
        logits = torch.cat([model(norm(data.test.images[i:i + 256]).to(args.device)).float().cpu()
                            for i in range(0, len(data.test), 256)])
    prob = torch.softmax(logits, 1)[:, POS].numpy()
    y = data.test.labels.numpy()
    pred = (prob > 0.5).astype(int)
    from sklearn.metrics import roc_auc_score

    model_info = {"model": meta["model"], "size": cfg.size, "epochs": len(run.read_history()),
                  "best_epoch": meta["epoch"] + 1, "test_auc": float(roc_auc_score(y, prob)),
                  "test_acc": float((pred == y).mean()), "n_test": int(len(y)),
                  "n_true_positive": int(((pred == 1) & (y == 1)).sum()), "n_positive": int((y == 1).sum())}
    tp = np.flatnonzero((pred == 1) & (y == 1))[: args.images]
    masks = data.extra["test"]["masks"][tp] > 0
    x = norm(data.test.images[torch.from_numpy(tp)]).to(args.device)
    model_info["n_explained"] = int(len(tp))
    if not len(tp):  # an undertrained model (--quick) may find no nodule: nothing to explain
        model_info["nodule_area_fraction"] = math.nan
        print_json({"model": model_info, "note": "no true-positive test image to explain"})
        return model_info, []
    model_info["nodule_area_fraction"] = float(masks.mean())
    print_json({"model": model_info})

    declared = get_model_spec(meta["model"]).target_layer
    jobs = []
    for name, spec in METHODS.items():
        if args.methods and name not in args.methods:
            continue
        if spec.family == "attention":
            jobs += attention_jobs(model)
            continue
        layers = [declared] + [la for la in args.layers if la != declared and has_layer(model, la)] \
            if spec.needs_layer else [None]
        jobs += [(name, la, (la + (" (declared)" if la == declared else "")) if la else "-", {}) for la in layers]
    rows = []
    rng = np.random.default_rng(0)
    ref = {"random map (chance)": rng.random(masks.shape).astype(np.float32),
           "nodule mask (ideal)": masks.astype(np.float32)}
    for label, maps in ref.items():
        rows.append({"method": label, "layer": "-", "ms/image": None,
                     **evaluate_maps(model, x, maps, masks, args)})
        print_json(rows[-1])
    if "occlusion" in [j[0] for j in jobs]:  # occlusion at other window sizes (stride: half of it)
        jobs += [("occlusion", None, f"window {w}, stride {max(1, w // 2)}", {"window": w, "stride": max(1, w // 2)})
                 for w in args.occlusion_windows]
    for name, layer, where, opts in jobs:
        spec = METHODS[name]
        gc.collect()
        tic = time.perf_counter()
        try:
            maps = explain(model, x, POS, name, layer=layer, model_name=meta["model"], batch_size=32, **opts)
        except Exception as exc:  # report failures honestly instead of hiding the row
            rows.append({"method": spec.label, "layer": where, "error": f"{type(exc).__name__}: {exc}"})
            print_json(rows[-1])
            continue
        ms = (time.perf_counter() - tic) * 1000 / len(tp)
        rows.append({"method": spec.label, "layer": where, "ms/image": ms,
                     **evaluate_maps(model, x, maps, masks, args)})
        print_json(rows[-1])
    return model_info, rows


def has_layer(model, name):
    try:
        model.get_submodule(name)
        return True
    except AttributeError:
        return False


def attention_jobs(model):
    """The "attention" rows for a model with attention (none otherwise): the default map and its variants."""
    from meddx.errors import MeddxError
    from meddx.explain.attention import attention_modules

    try:
        kind = attention_modules(model)[0]
    except MeddxError:
        return []
    if kind == "vit":
        variants = [("ViT last-layer CLS", {"vit_attention": "last"})]
    elif kind == "gate":
        variants = [("all gates (mean)", {"gates": "all"}), ("gates' product", {"gates": "product"})]
    else:
        variants = []
    default = {"vit": "ViT rollout", "gate": "coarsest gate (default)"}.get(kind, "spatial gates")
    return [("attention", None, default, {})] + [("attention", None, name, opts) for name, opts in variants]


def cost(args):
    """Grad-CAM latency on one 28 px image and memory over many calls (default model, untrained weights)."""
    from meddx.explain.methods import explain, hook_count
    from meddx.models import DEFAULT_MODEL, create_model

    torch.manual_seed(0)
    model = create_model(DEFAULT_MODEL, 1, 2, 28).eval()
    x = torch.randn(1, 1, 28, 28)
    by_threads = {}
    for threads in sorted({1, args.threads}):
        torch.set_num_threads(threads)
        for _ in range(20):
            explain(model, x, method="gradcam")
        times = []
        for _ in range(args.timing_calls):
            tic = time.perf_counter()
            explain(model, x, method="gradcam")
            times.append((time.perf_counter() - tic) * 1000)
        by_threads[threads] = {"median": statistics.median(times), "p90": float(np.percentile(times, 90)),
                               "min": min(times)}
    gc.collect()
    rss0 = rss_mb()
    tracemalloc.start()
    warm = 50
    marks = {}
    for i in range(1, args.memory_calls + 1):
        explain(model, x, method="gradcam")
        if i == warm:
            gc.collect()
            traced0, rss_warm = tracemalloc.get_traced_memory()[0], rss_mb()
        if i in (warm, 250, 500, args.memory_calls):
            marks[i] = round(rss_mb(), 1)
    gc.collect()
    traced1 = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    rss1 = rss_mb()
    t = by_threads[args.threads]
    return {"model": DEFAULT_MODEL, "input": "1x1x28x28", "threads": args.threads,
            "gradcam_ms_median": t["median"], "gradcam_ms_p90": t["p90"], "gradcam_ms_min": t["min"],
            "gradcam_ms_median_1_thread": by_threads[1]["median"], "calls_timed": args.timing_calls,
            "memory_calls": args.memory_calls, "rss_mb_before": round(rss0, 1), "rss_mb_by_call": marks,
            "rss_growth_mb_after_warmup": round(rss1 - rss_warm, 2),
            "python_heap_growth_kb_after_warmup": round((traced1 - traced0) / 1024, 1),
            "hooks_left": hook_count(model)}


def markdown(model_info, rows, cost_info):
    def f(v, nd=3):
        return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"

    lines = []
    if model_info:
        m = model_info
        lines += [f"Model: {m['model']} at {m['size']} px, {m['epochs']} epochs (best epoch {m['best_epoch']}), "
                  f"test AUC {m['test_auc']:.3f}, ACC {m['test_acc']:.3f}; explained: {m['n_explained']} "
                  f"true-positive test images (of {m['n_true_positive']} TPs, {m['n_positive']} positives); "
                  f"nodules cover {m['nodule_area_fraction']:.2%} of those images.", "",
                  "| method | layer | pointing game | pointing ±3 px | energy in mask | deletion AUC ↓ | "
                  "insertion AUC ↑ | ms / image |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['layer']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(f"| {r['method']} | {r['layer']} | {f(r['pointing_game'])} | {f(r['pointing_game_3px'])} | "
                     f"{f(r['energy_in_mask'])} | {f(r['deletion_auc'])} | {f(r.get('insertion_auc'))} | "
                     f"{f(r['ms/image'], 1)} |")
    if cost_info:
        c = cost_info
        lines += ["", f"Grad-CAM, one 28 px image, {c['model']}, {c['threads']} threads: median "
                  f"{c['gradcam_ms_median']:.1f} ms (p90 {c['gradcam_ms_p90']:.1f}, min {c['gradcam_ms_min']:.1f}) "
                  f"over {c['calls_timed']} calls (1 thread: median {c['gradcam_ms_median_1_thread']:.1f} ms). "
                  f"Memory over {c['memory_calls']} calls after a 50-call warm-up: RSS "
                  f"{c['rss_growth_mb_after_warmup']:+.2f} MB (by call: {c['rss_mb_by_call']}), Python heap "
                  f"{c['python_heap_growth_kb_after_warmup']:+.1f} kB (tracemalloc); hooks left: {c['hooks_left']}."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="reuse this run folder instead of training")
    ap.add_argument("--out", default="runs", help="parent folder of the benchmark's run folder")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--train-images", type=int, default=6000, help="phantom training slices")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=120, help="true-positive test images to explain")
    ap.add_argument("--methods", nargs="*", default=None, help="subset of methods (default: all)")
    ap.add_argument("--layers", nargs="*", default=["layer4", "layer3"], help="CAM layers to compare")
    ap.add_argument("--occlusion-windows", nargs="*", type=int, default=[6],
                    help="extra Occlusion rows at these window sizes (default row: 1/12 of the side)")
    ap.add_argument("--deletion-steps", type=int, default=10)
    ap.add_argument("--max-fraction", type=float, default=0.1,
                    help="deletion covers the most salient 10%% of the pixels (nodules are ~1%%)")
    ap.add_argument("--baseline", default="impute", help="removed pixels: impute (from neighbours) | blur | mean")
    ap.add_argument("--insertion", action="store_true", help="also the insertion AUC (doubles the cost)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timing-calls", type=int, default=200)
    ap.add_argument("--memory-calls", type=int, default=1000)
    ap.add_argument("--skip-cost", action="store_true")
    ap.add_argument("--skip-faithfulness", action="store_true")
    ap.add_argument("--model", nargs="+", default=["resnet18_slim"],
                    help="registered models to train and explain, one table each (attention models: issue #19)")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny training, 8 images, few methods")
    args = ap.parse_args()
    if args.quick:
        args.epochs, args.train_images, args.images, args.size, args.skip_cost = 1, 300, 8, 28, True
        args.methods, args.layers, args.occlusion_windows = args.methods or ["gradcam", "attention"], [], []
    torch.set_num_threads(args.threads)

    tables, cost_info = [], None
    if not args.skip_cost:
        cost_info = cost(args)
        print_json({"cost": cost_info})
    for model in [] if args.skip_faithfulness else args.model:
        model_info, rows = faithfulness_table(args, get_run(args, model))
        cols = ["method", "layer", "pointing_game", "pointing_game_3px", "energy_in_mask", "deletion_auc"] + (
            ["insertion_auc"] if args.insertion else []) + ["ms/image"]
        print_table(rows, cols, f"{model}: explanations on the phantom ({model_info['n_explained']} true positives)")
        tables.append((model_info, rows))
    print()
    for i, (model_info, rows) in enumerate(tables or [(None, [])]):
        print(markdown(model_info, rows, cost_info if i == 0 else None) + "\n")
    out = [{"benchmark": "explain"} | ({"cost": cost_info} if cost_info else {})]
    for model_info, rows in tables:
        out += [model_info] + [{"model": model_info["model"]} | {k.replace("/", "_per_"): v for k, v in r.items()}
                               for r in rows]
    print_json(out)


if __name__ == "__main__":
    main()
