"""Compression benchmark (issue #5): fp32 ResNet-18 vs pruned, int8 (PTQ/QAT), ONNX and efficient architectures.

For each data set (BreastMNIST, PneumoniaMNIST from ../shared/datasets) this trains ResNet-18 and the efficient
architectures with the same short recipe, compresses the ResNet-18 run with `meddx compress` / `meddx export`
(the library functions behind them), and measures every row in the same process: test ACC/AUC, the change vs
fp32, file size, latency at batch 1 and images/s at batch 64 on 2 CPU threads (raw uint8 image in,
probabilities out, preprocessing included in every row). The machine is shared, so timing happens after all
models are built, in ROUNDS round-robin passes over the rows; each row reports its best pass (lowest latency,
highest throughput) and the JSON keeps every pass.

    flock /tmp/meddx-cpu.lock python benchmarks/compress.py                 # both data sets (~30-40 min CPU)
    flock /tmp/meddx-cpu.lock python benchmarks/compress.py --quick --datasets breastmnist   # smoke run
    flock /tmp/meddx-cpu.lock python benchmarks/compress.py --rebuild pruning --no-distill  # pruning rows, labels only
    flock /tmp/meddx-cpu.lock python benchmarks/compress.py --rebuild int8   # int8 PTQ/QAT/ONNX rows of an earlier run
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, print_json, print_table  # noqa: E402

# Training/fine-tune budgets per data set (CPU: full ResNet-18 with the 28 px stem trains at ~40-80 img/s on this
# 2-core machine; the efficient architectures 5-15x faster). Every architecture gets the same recipe and epoch
# count (the default recipe except ema_decay=0); max_minutes caps a run (the engine then shortens the cosine
# schedule to fit). Structured pruning removes half the channels or more and gets a longer fine-tune
# (sft_*) than mask pruning (ft_*): the smaller network trains 2-3x faster, and it has more to recover.
# The structured fine-tune lengths were chosen by the validation fidelity to the fp32 model (mean |p - p_fp32|,
# benchmarks/prune_finetune.py), not by a test score: BreastMNIST 30 epochs (~2 min; 546 images) over 12 (0.045
# vs 0.061); PneumoniaMNIST 6 over 3 (0.011 vs 0.014 / 0.016 on the seed-0 / seed-1 models; 9 epochs gave
# 0.0099 on seed 0 for 40% more time).
BUDGETS: dict[str, dict[str, Any]] = {
    "breastmnist": {"epochs": 40, "max_minutes": 6.0, "eff_minutes": 3.0, "ft_epochs": 3, "ft_max_train": None,
                    "sft_epochs": 30, "sft_max_train": None, "qat_epochs": 2, "qat_max_train": None},
    "pneumoniamnist": {"epochs": 6, "max_minutes": 7.0, "eff_minutes": 4.0, "ft_epochs": 1, "ft_max_train": 1000,
                       "sft_epochs": 6, "sft_max_train": None, "qat_epochs": 1, "qat_max_train": 1000},
}
QUICK = {"epochs": 1, "max_minutes": 1.0, "eff_minutes": 1.0, "ft_epochs": 1, "ft_max_train": 256,
         "sft_epochs": 1, "sft_max_train": 256, "qat_epochs": 1, "qat_max_train": 256}
EFFICIENT = ("mobilenet_v3_small", "shufflenet_v2", "efficientnet_b0")
COLUMNS = ["row", "runtime", "acc", "auc", "d_acc", "d_acc_ci95", "fixed", "broken", "d_auc", "size_mb", "zip_mb",
           "params", "sparsity", "lat_b1_ms", "img_s_b64", "speedup_b64", "speedup_b1", "seconds"]


def ort_kernels(path: Path, workdir: Path) -> str:
    """The op types ONNX Runtime actually runs after its graph optimisations (which int8 kernels were used)."""
    from collections import Counter

    import onnx

    from meddx.deploy.onnx_export import ort_session

    opt = workdir / f"{path.stem}.optimized.onnx"
    ort_session(path, threads=2, optimized_path=opt)
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    opt.unlink(missing_ok=True)
    return " ".join(f"{k}x{v}" for k, v in ops.most_common(6))


ROUNDS = 3


def runnable(kind: str, path: Path) -> Any:
    """The timed object of a row: the deploy wrapper of a checkpoint (torch) or a 2-thread ORT session."""
    from meddx.deploy.onnx_export import ort_session, wrap_for_deploy
    from meddx.engine.checkpoint import load_model

    if kind == "onnx":
        return ort_session(path, threads=2)
    model, meta = load_model(path)
    return wrap_for_deploy(model, meta)


def time_rows(rows: list[dict[str, Any]], example, rounds: int = ROUNDS) -> None:
    """Round-robin timing of all rows (best of ``rounds`` passes); adds latency, throughput and speedup."""
    from meddx.deploy.latency import measure_latency

    models = [runnable(r["_kind"], r["_path"]) for r in rows]
    passes: list[list[dict[str, float]]] = [[] for _ in rows]
    for k in range(rounds):
        tic = time.time()
        for i, m in enumerate(models):
            passes[i].append(measure_latency(m, example, threads=2, repeats_1=20, repeats_n=3))
        print(f"  timing pass {k + 1}/{rounds}: {time.time() - tic:.0f} s", flush=True)
    for r, p in zip(rows, passes):
        r["lat_b1_ms"] = min(x["latency_ms"] for x in p)
        r["img_s_b64"] = max(x["images_per_s"] for x in p)
        r["img_s_b64_passes"] = [round(x["images_per_s"], 1) for x in p]
        r["lat_b1_ms_passes"] = [round(x["latency_ms"], 2) for x in p]
    base = rows[0]
    for r in rows:
        r["speedup_b64"] = r["img_s_b64"] / base["img_s_b64"]
        r["speedup_b1"] = base["lat_b1_ms"] / r["lat_b1_ms"]


def paired_change(rows: list[dict[str, Any]], images, labels, n_bootstrap: int = 2000) -> None:
    """Per row, against the fp32 row on the same test images: predictions that changed (``fixed``: now right,
    ``broken``: now wrong) and a paired bootstrap 95% CI of Δ ACC (both models scored on each resample)."""
    import numpy as np
    import torch

    from meddx.deploy.onnx_export import OnnxPredictor
    from meddx.metrics.bootstrap import bootstrap_ci

    def predicted(r: dict[str, Any]) -> np.ndarray:
        if r["_kind"] == "onnx":
            return OnnxPredictor(r["_path"], threads=2).predict(images).argmax(1)
        with torch.no_grad():
            return runnable("torch", r["_path"])(images).argmax(1).numpy()

    y = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    preds = [predicted(r) for r in rows]
    base = preds[0] == y
    for r, pred in zip(rows, preds):
        hit = pred == y
        # paired: each resample draws the same images for the fp32 hits (y_true) and this row's (y_score)
        ci = bootstrap_ci(base, hit, lambda b, h: h.mean() - b.mean(), n_bootstrap=n_bootstrap, seed=0)
        r["fixed"], r["broken"] = int((hit & ~base).sum()), int((~hit & base).sum())
        r["agree"] = float((pred == preds[0]).mean())
        r["d_acc_ci95"] = [round(ci[0] * 100, 1), round(ci[1] * 100, 1)]


def test_metrics(task, y_true, y_score) -> dict[str, float]:
    return task.quick_metrics(y_true, y_score)


PRUNING = (("pruned 50% (unstructured)", "prune", 0.5), ("pruned 80% (unstructured)", "prune", 0.8),
           ("pruned 50% (structured)", "prune-structured", 0.5), ("pruned 80% (structured)", "prune-structured", 0.8))


def bench_dataset(name: str, out: Path, budget: dict[str, Any], saved: list[dict[str, Any]] | None = None,
                  rebuild: tuple[str, ...] = (), distill: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Build every row; with ``saved`` (an earlier call's rows), rebuild only the row groups in ``rebuild``
    (``pruning``, ``int8``) from its fp32 run."""
    import torch

    from meddx.data import load_data
    from meddx.deploy.compress import compress_run, export_run
    from meddx.deploy.latency import count_parameters, file_mb, weights_mb, zipped_mb
    from meddx.deploy.onnx_export import OnnxPredictor
    from meddx.deploy.prune import weight_sparsity
    from meddx.engine.checkpoint import load_model
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit
    from meddx.engine.loop import predict
    from meddx.engine.run import RunDir
    from meddx.tasks import task_from_meta

    npz = SHARED / name / f"{name}.npz"
    data = load_data(str(npz))
    y_true = data.test.labels.numpy()
    rows: list[dict[str, Any]] = []

    def train(model_name: str, minutes: float) -> tuple[Path, float]:
        tic = time.time()
        cfg = TrainConfig(data=str(npz), model=model_name, epochs=budget["epochs"], max_minutes=minutes,
                          seed=seed, ema_decay=0.0, out=str(out), name=f"{name}-{model_name}", progress=False)
        run = fit(cfg, data=data).path
        return run, time.time() - tic

    def torch_row(label: str, run: Path, seconds: float, base: dict[str, Any] | None) -> dict[str, Any]:
        ckpt = RunDir.open(run).model_checkpoint()
        model, meta = load_model(ckpt)
        task = task_from_meta(meta)
        y_score, _ = predict(model, data.test.images, task, _norm(meta), batch_size=512)
        m = test_metrics(task, y_true, y_score)
        size = weights_mb(ckpt)  # a `last` checkpoint also holds the optimiser state
        row = {"row": label, "runtime": f"torch fp32 ({torch.backends.cpu.get_cpu_capability()})", **m,
               "size_mb": size, "params": count_parameters(model)["nonzero_params"],
               "total_params": count_parameters(model)["params"], "sparsity": weight_sparsity(model),
               "seconds": round(seconds, 1), "_kind": "torch", "_path": ckpt}
        if "-prune" in run.name and "structured" not in run.name:
            row["zip_mb"] = zipped_mb(ckpt)
        return _with_deltas(row, base)

    def onnx_row(label: str, path: Path, seconds: float, base: dict[str, Any], runtime: str) -> dict[str, Any]:
        y_score = OnnxPredictor(path).predict(data.test.images)
        task = task_from_meta(OnnxPredictor(path).meta)
        m = test_metrics(task, y_true, y_score)
        row = {"row": label, "runtime": runtime, **m, "size_mb": file_mb(path), "seconds": round(seconds, 1),
               "kernels": ort_kernels(path, out), "_kind": "onnx", "_path": path}
        return _with_deltas(row, base)

    def log(row: dict[str, Any]) -> None:
        rows.append(row | {"dataset": name})
        print(f"[{name}] {row['row']}: acc {row['acc']:.4f} auc {row['auc']:.4f} size {row['size_mb']:.2f} MB "
              f"({row['seconds']:.0f} s)"
              + (f" kernels: {row['kernels']}" if row.get("kernels") else ""), flush=True)

    def int8_rows(fp32_run: Path, base: dict[str, Any]) -> None:
        tic = time.time()
        ptq = compress_run(fp32_run, "ptq", out=out, name=f"{name}-resnet18-ptq", n_bootstrap=0, epochs=0, seed=seed)
        log(onnx_row("int8 PTQ", ptq.path / "model_int8.onnx", time.time() - tic, base, "ORT int8 QDQ static"))
        tic = time.time()
        qat = compress_run(fp32_run, "qat", out=out, name=f"{name}-resnet18-qat", n_bootstrap=0, seed=seed,
                           epochs=budget["qat_epochs"], max_train=budget["qat_max_train"])
        log(onnx_row("int8 QAT", qat.path / "model_int8.onnx", time.time() - tic, base, "ORT int8 QDQ (after QAT)"))
        tic = time.time()
        exp = export_run(fp32_run, int8=True)
        sec = time.time() - tic
        row = onnx_row("ONNX fp32", fp32_run / "model.onnx", sec, base, "ORT fp32")
        row["onnx_max_abs_diff"] = exp["max_abs_diff"]
        log(row)
        log(onnx_row("ONNX int8", fp32_run / "model_int8.onnx", sec, base, "ORT int8 QDQ static"))

    if saved:
        base = next(r for r in saved if r["row"] == "fp32 ResNet-18")
        fp32_run = Path(base["_path"]).parent
    else:
        fp32_run, sec = train("resnet18", budget["max_minutes"])
        base = torch_row("fp32 ResNet-18", fp32_run, sec, None)
        log(base)
    for label, method, amount in PRUNING if not saved or "pruning" in rebuild else ():
        tic = time.time()
        key = "sft" if method == "prune-structured" else "ft"
        run = compress_run(fp32_run, method, amount=amount, out=out, n_bootstrap=0, seed=seed,
                           name=f"{name}-resnet18-{method}-{int(amount * 100)}", epochs=budget[f"{key}_epochs"],
                           max_train=budget[f"{key}_max_train"], distill=distill)
        log(torch_row(label, run.path, time.time() - tic, base))
    if not saved or "int8" in rebuild:
        int8_rows(fp32_run, base)
    if saved:
        rebuilt = {r["row"]: r for r in rows}
        return [rebuilt.get(r["row"], r) for r in saved]
    for arch in EFFICIENT:
        run, sec = train(arch, budget["eff_minutes"])
        log(torch_row(f"{arch} fp32", run, sec, base))
    return rows


def _norm(meta: dict[str, Any]):
    from meddx.data.augment import Normalization

    return Normalization(**meta["normalization"])


def _with_deltas(row: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    if base is None:
        return row | {"d_acc": 0.0, "d_auc": 0.0}
    return row | {"d_acc": row["acc"] - base["acc"], "d_auc": row["auc"] - base["auc"]}


def check_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, per data set, from the measured rows."""
    by = {r["row"]: r for r in rows}
    int8 = max((by[k] for k in ("int8 PTQ", "int8 QAT", "ONNX int8") if k in by), key=lambda r: r["speedup_b64"])
    ok_int8 = [k for k in ("int8 PTQ", "int8 QAT", "ONNX int8") if k in by and by[k]["speedup_b64"] >= 2
               and abs(by[k]["d_acc"]) <= 0.005 and abs(by[k]["d_auc"]) <= 0.005]
    s50 = by["pruned 50% (structured)"]
    return {"int8_best_speedup": int8["speedup_b64"], "int8_rows_meeting_all": ok_int8,
            "structured50_speedup": s50["speedup_b64"], "structured50_d_acc": s50["d_acc"],
            "structured50_met": s50["speedup_b64"] >= 1.5 and abs(s50["d_acc"]) <= 0.01,
            "onnx_max_abs_diff": by["ONNX fp32"].get("onnx_max_abs_diff"),
            "onnx_met": by["ONNX fp32"].get("onnx_max_abs_diff", 1.0) <= 1e-4}


def main(argv: list[str] | None = None) -> None:
    import warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=list(BUDGETS))
    p.add_argument("--out", default="/tmp/meddx-bench-compress", help="folder for the benchmark's runs")
    p.add_argument("--quick", action="store_true", help="tiny budgets (checks the script, not the numbers)")
    p.add_argument("--reuse", action="store_true", help="reuse the models built by an earlier run; only time them")
    p.add_argument("--seed", type=int, default=0, help="training and fine-tune seed (a second seed checks the table)")
    p.add_argument("--no-distill", dest="distill", action="store_false",
                   help="pruning fine-tunes on the labels instead of distilling the fp32 model (the default)")
    p.add_argument("--rebuild", nargs="+", choices=("pruning", "int8"), default=[],
                   help="reuse an earlier run's models but rebuild these row groups from its fp32 ResNet-18 (that "
                        "same model: CPU training is seeded but not bit-exact, so a full run may train a slightly "
                        "different one); time all rows")
    p.add_argument("--rebuild-pruning", action="store_true", help="the same as --rebuild pruning")
    args = p.parse_args(argv)
    rebuild = tuple(sorted(set(args.rebuild) | ({"pruning"} if args.rebuild_pruning else set())))
    import onnxruntime
    import torch

    onnxruntime.set_default_logger_severity(3)  # no warning for dumping the optimised graph (ort_kernels)
    torch.set_num_threads(2)
    print(f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), onnxruntime "
          f"{onnxruntime.__version__} {onnxruntime.get_available_providers()}, 2 threads", flush=True)
    all_rows, targets = [], {}
    for name in args.datasets:
        tic = time.time()
        budget = QUICK if args.quick else BUDGETS[name]
        out = Path(args.out) / ("quick" if args.quick else "full")
        saved = out / f"{name}-rows.json"  # built rows (metrics, files): --reuse times them again without rebuilding
        if (args.reuse or rebuild) and saved.is_file():
            rows = [r | {"_path": Path(r["_path"])} for r in json.loads(saved.read_text())]
            if rebuild:
                rows = bench_dataset(name, out, budget, saved=rows, rebuild=rebuild, distill=args.distill,
                                     seed=args.seed)
                saved.write_text(json.dumps(rows, default=str))
        else:
            rows = bench_dataset(name, out, budget, distill=args.distill, seed=args.seed)
            saved.write_text(json.dumps(rows, default=str))
        from meddx.data import load_data

        test = load_data(str(SHARED / name / f"{name}.npz")).test
        paired_change(rows, test.images, test.labels.numpy())
        time_rows(rows, test.images[:1])
        targets[name] = check_targets(rows)
        print_table(rows, COLUMNS, f"{name}: ResNet-18 compression, 2 CPU threads (budget {json.dumps(budget)}, "
                                   f"{(time.time() - tic) / 60:.1f} min)")
        for r in rows:
            if r.get("kernels"):
                print(f"  {r['row']}: ORT kernels after optimisation: {r['kernels']}")
        print(f"  targets: {json.dumps(targets[name], default=float)}", flush=True)
        all_rows += rows
    print_json([{k: v for k, v in r.items() if k != "kernels" and not k.startswith("_")} for r in all_rows])


if __name__ == "__main__":
    main()
