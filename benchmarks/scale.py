"""Scaling out: DDP training (1 vs 2 processes) and batch inference over files on disk, in one run.

    python benchmarks/scale.py [--part all|ddp|infer] [--seeds 3] [--epochs 4] [--files 20000] [--quick]

(a) ddp: `meddx train` single process (1 thread) vs `meddx train --nproc 2` (1 thread per rank), same data
    (PneumoniaMNIST 28 px from shared/datasets, else the phantom), same global batch, LR and seeds; final test
    ACC/AUC per seed, and the time per global batch (epoch seconds / steps, validation included). Also the
    measured gloo all-reduce time of the model's gradient size, the input of the README's scaling model.
(b) infer: N generated PNG files; `meddx predict --input --output results.parquet` (files/s) vs the naive loop
    `Predictor.predict_files([f])` per file, on the same model AND the same runtime (`--runtimes`, default torch
    then onnx: the run's model.onnx, which `meddx train` writes); peak RSS of the job (main process + decoding
    workers) at 5k and N files (first runtime); a kill -9 mid-run and a rerun must leave every file exactly once.
(c) GPU/NCCL: runs (a) with --device cuda over all GPUs when CUDA is available; otherwise says it skipped.

The last line is JSON: ddp_acc_delta, ddp_auc_delta, ddp_step_ratio, batch_infer_speedup, rss_mb_5k, rss_mb_20k,
... On a shared machine the timings are inflated; ratios measured in the same run stay comparable.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, print_json, print_table  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


def train_run(data: str, out: Path, name: str, seed: int, epochs: int, nproc: int, device: str = "cpu",
              batch: int = 128) -> dict:
    """One `meddx train` (nproc 1: plain; else DDP) at 1 thread per process; its test metrics and step time."""
    env = {**ENV, "OMP_NUM_THREADS": "1", "MEDDX_THREADS_PER_RANK": "1"}
    cmd = [PY, "-m", "meddx.cli", "train", "--data", data, "--epochs", str(epochs), "--seed", str(seed),
           "--batch-size", str(batch), "--out", str(out), "--name", name, "--device", device]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.time()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"training failed ({' '.join(cmd)}):\n{r.stderr[-3000:]}")
    folder = out / name
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    data_json = json.loads((folder / "data.json").read_text())
    steps = max(1, data_json["n_train"] // batch)
    metrics = json.loads((folder / "metrics.json").read_text())
    step_s = statistics.median(r["seconds"] for r in rows[1:] or rows) / steps  # epoch 1 has warm-up
    return {"nproc": nproc, "seed": seed, "acc": metrics["acc"], "auc": metrics["auc"], "step_ms": 1000 * step_s,
            "wall_s": time.time() - t0}


def allreduce_ms(numel: int, repeats: int = 20) -> float:
    """Median time of a gloo all-reduce of ``numel`` float32 values between 2 local processes."""
    code = f"""
import os, time, statistics, torch, torch.distributed as dist
torch.set_num_threads(1)
dist.init_process_group("gloo")
t = torch.randn({numel})
times = []
for _ in range({repeats} + 3):
    dist.barrier(); t0 = time.perf_counter(); dist.all_reduce(t); times.append(time.perf_counter() - t0)
if dist.get_rank() == 0:
    print("ALLREDUCE_MS", 1000 * statistics.median(times[3:]))
dist.destroy_process_group()
"""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    r = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", f.name],
                       env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    os.unlink(f.name)
    line = [x for x in r.stdout.splitlines() if x.startswith("ALLREDUCE_MS")]
    return float(line[0].split()[1]) if line else float("nan")


def part_ddp(args, work: Path, device: str = "cpu", nproc: int = 2) -> dict:
    data = str(SHARED / "pneumoniamnist" / "pneumoniamnist.npz")
    if args.quick or not Path(data).is_file():
        data = "phantom"
    rows = []
    for seed in range(args.seeds):
        for n in (1, nproc):  # alternate, so machine noise hits both
            rows.append(train_run(data, work / "runs", f"{device}-n{n}-s{seed}", seed, args.epochs, n, device))
            print(f"  trained nproc={n} seed={seed}: acc {rows[-1]['acc']:.4f} auc {rows[-1]['auc']:.4f} "
                  f"step {rows[-1]['step_ms']:.1f} ms", flush=True)
    print_table(rows, ["nproc", "seed", "acc", "auc", "step_ms", "wall_s"], f"DDP on {device}: {Path(data).stem}")
    one = [r for r in rows if r["nproc"] == 1]
    many = [r for r in rows if r["nproc"] == nproc]

    def mean(rs, k):
        return statistics.mean(r[k] for r in rs)

    def spread(rs, k):
        return statistics.stdev(r[k] for r in rs) if len(rs) > 1 else float("nan")

    from meddx.models import create_model

    numel = sum(p.numel() for p in create_model("resnet18_slim", 1, 2, 28).parameters())
    out = {"ddp_data": Path(data).stem, "ddp_acc_1": mean(one, "acc"), "ddp_acc_n": mean(many, "acc"),
           "ddp_acc_delta": mean(many, "acc") - mean(one, "acc"), "ddp_acc_sd_1": spread(one, "acc"),
           "ddp_auc_delta": mean(many, "auc") - mean(one, "auc"), "ddp_auc_sd_1": spread(one, "auc"),
           "step_ms_1": statistics.median(r["step_ms"] for r in one),
           "step_ms_n": statistics.median(r["step_ms"] for r in many), "grad_params": numel}
    out["ddp_step_ratio"] = out["step_ms_n"] / out["step_ms_1"]
    if device == "cpu":
        out["allreduce_ms"] = allreduce_ms(numel)
    return out


# ---------------------------------------------------------------- (b) batch inference


def make_pngs(folder: Path, n: int) -> Path:
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.png")))
    rng = np.random.default_rng(0)
    for i in range(have, n):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"f{i:06d}.png")
    return folder


def predict_job(run: Path, inputs: str, output: Path, runtime: str = "auto") -> subprocess.Popen:
    code = ("import resource, sys\nfrom meddx.engine.batch_predict import predict_archive\n"
            "s = predict_archive(sys.argv[1], sys.argv[2], sys.argv[3], runtime=sys.argv[4], progress=False)\n"
            "print('RESULT', s.done, s.seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "
            "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n")
    return subprocess.Popen([PY, "-c", code, str(run), inputs, str(output), runtime], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def run_job(run: Path, inputs: str, output: Path, runtime: str = "auto") -> dict:
    from meddx.engine.batch_predict import workers_score
    from meddx.engine.batch_read import plan_workers
    from meddx.engine.distributed import cores

    out, err = predict_job(run, inputs, output, runtime).communicate()
    line = [x for x in out.splitlines() if x.startswith("RESULT")]
    if not line:
        sys.exit(f"batch prediction failed:\n{err[-3000:]}")
    _, done, seconds, main_kb, worker_kb = line[0].split()
    workers = plan_workers(None, workers_score(runtime, run, "auto"), cores())[0]
    # peak RSS of the job: the main process plus its reading workers (each at most the largest one's peak)
    return {"files": int(done), "files_per_s": int(done) / float(seconds),
            "rss_mb": (int(main_kb) + workers * int(worker_kb)) / 1024}


def naive_rate(run: Path, files: list[Path], runtime: str) -> list[float]:
    """Files/s of `Predictor.predict_files([f])` per file with ``runtime``, at torch's default threads and at 1
    thread (the faster is reported: a busy machine punishes oversubscribed threads)."""
    import torch

    from meddx.engine.predict import Predictor

    predictor = Predictor(run, device="cpu", runtime=runtime)
    predictor.predict_files([files[0]])  # warm-up
    default, rates = torch.get_num_threads(), []
    for threads in (default, 1):
        torch.set_num_threads(threads)
        t0 = time.time()
        for f in files:
            predictor.predict_files([f])
        rates.append(len(files) / (time.time() - t0))
    torch.set_num_threads(default)
    print(f"  naive loop ({runtime}): {rates[0]:.1f} files/s at {default} threads, {rates[1]:.1f} at 1 thread")
    return rates


def kill_and_rerun(run: Path, folder: Path, work: Path, after: int) -> dict:
    """kill -9 a CSV job after some rows, rerun it; is every file in the output exactly once?"""
    import csv

    out = work / "killed.csv"
    out.unlink(missing_ok=True)
    proc = predict_job(run, str(folder), out)
    while proc.poll() is None and not (out.is_file() and out.read_text().count("\n") > after):
        time.sleep(0.05)
    killed = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = out.read_text().count("\n") - 1
    run_job(run, str(folder), out)
    with open(out, newline="") as f:
        files = [r["file"] for r in csv.DictReader(f)]
    expected = sorted(str(p) for p in folder.glob("*.png"))
    return {"killed_after_rows": before, "killed_mid_run": killed,
            "exactly_once": killed and sorted(files) == expected}


def part_infer(args, work: Path) -> dict:
    run = work / "runs" / "infer-model"
    if not (run / "last.safetensors").is_file():
        r = subprocess.run([PY, "-m", "meddx.cli", "train", "--data", "phantom", "--epochs", "1", "--out",
                            str(work / "runs"), "--name", "infer-model", "--no-evaluate"], env=ENV,
                           capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"training the inference model failed:\n{r.stderr[-2000:]}")
    small, big = (500, 2000) if args.quick else (5000, args.files)
    folder = make_pngs(work / "pngs", big)
    listing = work / f"first{small}.csv"
    listing.write_text("path\n" + "".join(f"{folder / f'f{i:06d}.png'}\n" for i in range(small)))
    naive_files = sorted(folder.glob("*.png"))[:min(500, small)]
    rows, speedups, naive_default = [], {}, {}
    for i, rt in enumerate(args.runtimes):
        sizes = ((small, str(listing)), (big, str(folder))) if i == 0 else ((small, str(listing)),)
        for n, inputs in sizes:
            out = work / f"res{n}-{rt}.parquet"
            out.unlink(missing_ok=True)
            rows.append({"method": f"meddx predict --input ({rt})", "runtime": rt, **run_job(run, inputs, out, rt)})
        naive = naive_rate(run, naive_files, rt)
        naive_default[rt] = naive[0]
        rows.append({"method": f"naive predict_files per file ({rt})", "runtime": rt, "files": len(naive_files),
                     "files_per_s": max(naive), "rss_mb": float("nan")})
        speedups[rt] = rows[-2]["files_per_s"] / rows[-1]["files_per_s"]
    print_table(rows, ["method", "files", "files_per_s", "rss_mb"], "Batch inference, 28 px PNG files")
    first = args.runtimes[0]
    kill = kill_and_rerun(run, folder, work, after=big // 5)
    print(f"kill -9 after {kill['killed_after_rows']} rows, rerun: every file exactly once: {kill['exactly_once']}")
    batch_big = rows[1]["files_per_s"]
    return {"batch_infer_speedup": speedups[first], "batch_infer_runtime": first,
            **{f"batch_infer_speedup_{rt}": v for rt, v in speedups.items()},
            "batch_files_per_s": batch_big, "naive_files_per_s": rows[2]["files_per_s"],
            "batch_infer_speedup_vs_default_threads": batch_big / naive_default[first],
            "rss_mb_5k": rows[0]["rss_mb"], "rss_mb_20k": rows[1]["rss_mb"], "infer_files": big,
            "kill_rerun_exactly_once": kill["exactly_once"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["all", "ddp", "infer"], default="all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--files", type=int, default=20000)
    ap.add_argument("--runtimes", nargs="+", default=["torch", "onnx"],
                    help="each: the batch job and the naive loop on the same runtime (the first also at --files)")
    ap.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "meddx-scale-bench"))
    ap.add_argument("--quick", action="store_true", help="smoke run: phantom, 1 seed, 1 epoch, 2k files")
    args = ap.parse_args()
    if args.quick:
        args.seeds, args.epochs = 2, 1
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"cores": len(os.sched_getaffinity(0)), "load_avg_start": os.getloadavg()[0]}
    if args.part in ("all", "ddp"):
        result |= part_ddp(args, work)
        result |= gpu_part(args, work)
    if args.part in ("all", "infer"):
        result |= part_infer(args, work)
    result["load_avg_end"] = os.getloadavg()[0]
    result["max_rss_mb_bench"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print_json(result)


def gpu_part(args, work: Path) -> dict:
    import torch

    if not torch.cuda.is_available():
        print("(c) GPU/NCCL: skipped (no CUDA device on this machine)")
        return {"gpu": "skipped: no CUDA"}
    n = torch.cuda.device_count()
    res = part_ddp(args, work, device="cuda", nproc=max(2, n) if n > 1 else 1)
    return {f"gpu_{k}": v for k, v in res.items()}


if __name__ == "__main__":
    main()
