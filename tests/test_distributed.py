"""DDP training on CPU/gloo: sharding rules, the launcher's command line, and real 2-process runs on loopback
(rank-0-only writes, gathered validation equal to a single-process evaluation, kill -9 + resume, restarts)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from meddx.engine import distributed
from meddx.engine.launch import failure_message, torchrun_args
from meddx.errors import MeddxError
from tests.conftest import REPO, write_fake_medmnist

PY = sys.executable
ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "MEDDX_DIST_TIMEOUT": "30", "MEDDX_THREADS_PER_RANK": "1", "OMP_NUM_THREADS": "1"}
LIMIT_S = 240  # no subprocess of this file may outlive this (CI must never hang)


# ---------------------------------------------------------------- pure rules (no process group)


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (21, 2), (100, 3), (7, 7), (5, 8)])
def test_shards_cover_every_item_once(n, world):
    bounds = [distributed.shard_bounds(n, world, r) for r in range(world)]
    covered = [i for lo, hi in bounds for i in range(lo, hi)]
    assert covered == list(range(n))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


def test_global_batch_split_matches_single_process_batch():
    """The ranks' shares of one global batch are disjoint and together are exactly the single-process batch."""
    idx = torch.randperm(103, generator=torch.Generator().manual_seed(3))[:32]
    for world in (2, 3, 5):
        parts = idx.tensor_split(world)
        assert torch.equal(torch.cat(parts), idx)
        # loss weights (share * N / B) average to 1: DDP's mean gradient is the global batch mean
        assert sum(len(p) * world / len(idx) for p in parts) / world == pytest.approx(1.0)


def test_torchrun_command_line():
    args = torchrun_args(2, "1", None, 0, "r", ["--epochs", "2"])
    assert "--standalone" in args and "--nproc-per-node=2" in args
    assert args[args.index("-m") + 1:] == ["meddx.train", "--epochs", "2"]
    multi = torchrun_args(4, "2", "host:29400", 1, "myrun", [])
    assert "--standalone" not in multi and "host:29400" in multi and "myrun" in multi
    assert "--max-restarts=1" in multi and "--nnodes=2" in multi
    with pytest.raises(MeddxError, match="rdzv-endpoint"):
        torchrun_args(2, "2", None, 0, "r", [])


@pytest.mark.parametrize(("code", "rc", "err"), [(None, 0, ""), (5, 5, ""), ("error: x: bad", 1, "error: x: bad")])
def test_a_worker_exits_with_its_code_and_flushed_output(code, rc, err):
    """exit_worker skips the interpreter's shutdown (os._exit) but not what was printed, nor the exit status."""
    script = ("import sys; from meddx.engine.distributed import exit_worker\n"
              f"print('done', end=''); sys.stderr.write('partial'); exit_worker({code!r}); print('never')")
    proc = subprocess.run([PY, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (rc, "done")
    assert proc.stderr.strip() == "partial" + err


def test_failure_message_names_the_rank_signal_and_resume(tmp_path):
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    failure = ProcessFailure(local_rank=1, pid=1234, exitcode=-9, error_file=str(tmp_path / "none.json"))
    exc = ChildFailedError("meddx.train", {1: failure})
    assert failure_message(exc, tmp_path) == ("training rank 1 was killed by SIGKILL; the other ranks were "
                                               "stopped; no checkpoint was saved yet; start it again")
    (tmp_path / "last.safetensors").write_bytes(b"")
    assert f"continue with --resume {tmp_path}" in failure_message(exc, tmp_path)


# ---------------------------------------------------------------- real 2-process runs on loopback


def _torchrun(args: list[str], cwd: Path, restarts: int = 0) -> subprocess.Popen:
    cmd = [PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", f"--max-restarts={restarts}",
           "--monitor-interval=0.2", "-m", "meddx.train", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        out, _ = proc.communicate(timeout=LIMIT_S)
    except subprocess.TimeoutExpired:
        for pid in _descendants(proc.pid):
            _kill_quietly(pid)
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"DDP run did not end within {LIMIT_S} s:\n{out[-3000:]}")
    return proc.returncode, out


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: ppid is the 4th field of /proc/<pid>/stat)."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _kill_quietly(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _rank_pid(launcher: int, rank: int) -> int:
    for pid in _descendants(launcher):
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in env and b"LOCAL_RANK=" + str(rank).encode() in env:
            return pid
    raise AssertionError(f"no rank {rank} worker below {launcher}")


def _wait_for_epochs(history: Path, epochs: int, proc: subprocess.Popen) -> None:
    deadline = time.time() + LIMIT_S
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= epochs:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {epochs} epoch(s) in {history} (exit {proc.poll()})")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    # 21 validation images: the ranks' slices are 11 + 10 (uneven: the gather must not pad or duplicate)
    return write_fake_medmnist(tmp_path_factory.mktemp("ddp") / "fake.npz", n=(384, 21, 20))


def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--epochs", "4", "--batch-size", "32", "--out", str(out), "--no-evaluate",
            "--seed", "1", *extra]


def _ranks_without_agent(args: list[str], cwd: Path, port: int) -> list[subprocess.Popen]:
    """Two workers started by hand (no torchrun agent to stop the survivor): what a rank on another machine sees."""
    env = {**ENV, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    return [subprocess.Popen([PY, "-m", "meddx.train", *args], cwd=cwd, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
            for r in (0, 1)]


@pytest.mark.slow
def test_kill9_makes_the_survivor_exit_with_a_message_then_resume_finishes(data_file, tmp_path):
    """kill -9 of rank 1 after the first checkpoint: rank 0 fails its next collective and exits (code 3, one line)
    well within the process group's timeout; `meddx train --nproc 2 --resume` continues from the checkpoint;
    only rank 0 ever wrote (one run folder, no temporaries)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "runs"
    rank0, rank1 = _ranks_without_agent(_train_args(data_file, out), tmp_path, port)
    try:
        folder = _wait_for_run_folder(out, rank0)
        _wait_for_epochs(folder / "history.jsonl", 1, rank0)
        rank1.kill()
        t_kill = time.time()
        code, log = _finish(rank0)
    finally:
        for p in (rank0, rank1):
            p.kill()
    assert code == 3 and time.time() - t_kill < 30, log[-2000:]  # MEDDX_DIST_TIMEOUT=30 bounds it
    assert "error: rank 0: lost the other training processes" in log and "Traceback" not in log, log[-2000:]
    done = len((folder / "history.jsonl").read_text().splitlines())
    assert 1 <= done < 4
    assert [p.name for p in out.iterdir()] == [folder.name]  # rank 1 never created a folder of its own

    resumed = subprocess.run([PY, "-m", "meddx.cli", "train", "--nproc", "2", "--resume", str(folder),
                              "--no-evaluate"], cwd=tmp_path, env=ENV, capture_output=True, text=True,
                             timeout=LIMIT_S)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = [json.loads(line) for line in (folder / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    assert [p.name for p in out.iterdir()] == [folder.name]
    assert not list(folder.glob(".*.tmp"))  # atomic writes left no temporaries


def _wait_for_run_folder(out: Path, proc: subprocess.Popen) -> Path:
    deadline = time.time() + LIMIT_S
    while time.time() < deadline and proc.poll() is None:
        folders = list(out.glob("*/config.json")) if out.is_dir() else []
        if folders:
            return folders[0].parent
        time.sleep(0.05)
    raise AssertionError(f"no run folder under {out} (exit {proc.poll()}): {proc.stdout.read()[-2000:]}")


GATHER_WORKER = """
import sys, numpy as np, torch
from meddx.data import load_data
from meddx.data.augment import Normalization
from meddx.engine import distributed
from meddx.engine.checkpoint import load_model
from meddx.tasks import task_from_meta

device = distributed.setup(torch.device("cpu"))
model, meta = load_model(sys.argv[1])
data = load_data(sys.argv[2], size=28, seed=1, task="classification")
scores, loss = distributed.gather_probabilities(model, task_from_meta(meta), data.val,
                                                Normalization(**meta["normalization"]), device=device,
                                                batch_size=4)
if distributed.is_main():
    np.save(sys.argv[3], scores)
    print("LOSS", repr(loss), "RANKS", distributed.world_size())
distributed.shutdown()
distributed.exit_worker(0)  # as meddx.train's workers leave (no interpreter shutdown over gloo's threads)
"""


@pytest.mark.slow
def test_restart_resumes_and_gathered_validation_equals_single_process(data_file, tmp_path):
    """--max-restarts 1: after kill -9 of rank 1, torchrun restarts both workers, which continue the named run
    from its checkpoint. Then: the gathered validation predictions of the weights equal one process's, and the
    last history row's validation metrics are those of a single-process evaluation of the saved weights."""
    from meddx.data import load_data
    from meddx.data.augment import Normalization
    from meddx.engine.checkpoint import load_model
    from meddx.models.inference import predict
    from meddx.tasks import task_from_meta

    out = tmp_path / "runs"
    proc = _torchrun(_train_args(data_file, out, "--name", "r"), tmp_path, restarts=1)
    _wait_for_epochs(out / "r" / "history.jsonl", 1, proc)
    os.kill(_rank_pid(proc.pid, 1), signal.SIGKILL)
    code, log = _finish(proc)
    assert code == 0, log[-3000:]
    rows = [json.loads(line) for line in (out / "r" / "history.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]

    ckpt = out / "r" / "last.safetensors"
    script = tmp_path / "gather.py"
    script.write_text(GATHER_WORKER)
    gathered = subprocess.run([PY, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                               str(script), str(ckpt), str(data_file), str(tmp_path / "g.npy")], cwd=tmp_path,
                              env=ENV, capture_output=True, text=True, timeout=LIMIT_S)
    assert gathered.returncode == 0, gathered.stderr[-3000:]
    assert "RANKS 2" in gathered.stdout

    model, meta = load_model(ckpt)
    task = task_from_meta(meta)
    data = load_data(str(data_file), size=28, seed=1, task="classification")
    single, loss = predict(model, data.val.images, task, Normalization(**meta["normalization"]),
                           labels=data.val.labels)
    ddp = np.load(tmp_path / "g.npy")
    assert ddp.shape == single.shape == (21, 2)  # 11 + 10 rows: no padding duplicate
    np.testing.assert_allclose(ddp, single, atol=1e-6)
    quick = task.quick_metrics(data.val.labels.numpy(), single)
    assert rows[-1]["val_auc"] == pytest.approx(quick["auc"], abs=1e-9)
    assert rows[-1]["val_loss"] == pytest.approx(loss, rel=1e-5)


def test_worker_command_line_repeats_the_train_options(tmp_path):
    """`meddx train --nproc 2 ...` hands the workers every option that differs from its default, minus the
    launcher's own, with a fixed run name and without the evaluation (the launcher evaluates once)."""
    import typer

    from meddx.engine.commands import app as engine_app
    from meddx.engine.launch import worker_args

    train = typer.main.get_command(engine_app).commands["train"]
    ctx = train.make_context("train", ["--data", "x.npz", "--epochs", "3", "--class-weights", "--nproc", "2",
                                       "--max-restarts", "1", "--lr", "0.01"])
    args = worker_args(ctx, "myrun")
    assert args[:3] == ["--name", "myrun", "--no-evaluate"]
    pairs = dict(zip(args[3::2], args[4::2]))
    assert "--class-weights" in args and pairs.get("--data") == "x.npz" and pairs.get("--epochs") == "3"
    assert "--lr" in args and float(args[args.index("--lr") + 1]) == 0.01
    assert not {"--nproc", "--max-restarts", "--nnodes", "--evaluate", "--seed"} & set(args)


@pytest.mark.slow
@pytest.mark.parametrize("task,extra", [("segmentation", ["--size", "32"]),
                                        ("detection", ["--size", "64", "--batch-size", "8"])])
def test_other_tasks_train_under_ddp(task, extra, tmp_path):
    """Every task of the protocol trains through `meddx train --nproc 2` (validation on rank 0, broadcast)."""
    out = tmp_path / "runs"
    r = subprocess.run([PY, "-m", "meddx.cli", "train", "--data", "phantom", "--task", task, *extra, "--epochs", "1",
                        "--nproc", "2", "--out", str(out), "--name", "t", "--no-evaluate"], cwd=tmp_path, env=ENV,
                       capture_output=True, text=True, timeout=LIMIT_S)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "t" / "history.jsonl").read_text().splitlines()]
    monitor = {"segmentation": "val_dice", "detection": "val_map50"}[task]
    assert len(rows) == 1 and 0.0 <= rows[0][monitor] <= 1.0 and np.isfinite(rows[0]["train_loss"])
    assert [p.name for p in out.iterdir()] == ["t"] and (out / "t" / "last.safetensors").is_file()
