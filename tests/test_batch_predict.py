"""``meddx predict RUN --input ... --output ...``: inputs (folder, glob, CSV, DICOM files), error rows, the same
probabilities as per-file prediction, CSV/parquet tables, and exactly-once rows after a kill -9 and rerun."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from meddx.cli import app
from meddx.engine.batch_output import CsvTable, open_table
from meddx.engine.batch_predict import find_inputs, predict_archive
from meddx.errors import MeddxError
from tests.conftest import REPO, write_fake_medmnist
from tests.fuzz_corpus import _dicom_bytes

ENV = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    tmp = tmp_path_factory.mktemp("bp")
    data = write_fake_medmnist(tmp / "fake.npz", n=(40, 10, 10))
    cfg = TrainConfig(data=str(data), epochs=1, model="seednet", out=str(tmp), name="run", progress=False)
    return fit(cfg).path


def _write_pngs(root: Path, n: int, seed: int, folder: str, stem: str) -> None:
    """``n`` random 28 px PNGs alternating between ``root/<folder>0`` and ``root/<folder>1``."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        sub = root / f"{folder}{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(sub / f"{stem}{i:03d}.png")


def _archive(root: Path, n: int = 12) -> Path:
    _write_pngs(root, n, seed=0, folder="site", stem="img")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    series = root / "series"
    series.mkdir()
    for k in range(2):  # extension-less DICOM files, as archives name them
        (series / f"IM{k:04d}").write_bytes(_dicom_bytes())
    (root / "notes.txt").write_text("not an image")
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_folder_glob_and_csv_inputs_find_the_same_files(tmp_path):
    root = _archive(tmp_path / "a")
    from_dir = find_inputs(root)
    assert len(from_dir) == 12 + 1 + 2 and not any(p.endswith("notes.txt") for p in from_dir)
    assert sum("series" in p for p in from_dir) == 2  # DICOM without a suffix, found by its DICM marker
    assert find_inputs(f"{root}/**/*.png") == sorted(p for p in from_dir if p.endswith(".png"))
    listing = tmp_path / "list.csv"
    listing.write_text("path,site\n" + "".join(f"{Path(p).relative_to(tmp_path)},x\n" for p in from_dir))
    assert find_inputs(listing) == [str(tmp_path / Path(p).relative_to(tmp_path)) for p in from_dir]
    with pytest.raises(MeddxError, match="matches no files"):
        find_inputs(f"{root}/*.jpeg")
    with pytest.raises(MeddxError, match="folder, a glob"):
        find_inputs(tmp_path / "missing")


def test_rows_match_per_file_prediction_and_errors_are_rows(run_dir, tmp_path):
    from meddx.engine.predict import Predictor

    root = _archive(tmp_path / "a")
    out = tmp_path / "res.csv"
    summary = predict_archive(run_dir, root, out, batch_size=4, workers=2, progress=False)
    rows = _read_csv(out)
    assert summary.done == len(rows) == 15 and summary.errors == 1
    bad = [r for r in rows if r["status"] == "error"]
    assert [Path(r["file"]).name for r in bad] == ["broken.png"] and "not a readable image" in bad[0]["error"]
    good = [r for r in rows if r["status"] == "ok"]
    reference = Predictor(run_dir, device="cpu").predict_files([r["file"] for r in good])
    for row, ref in zip(good, reference):
        assert row["label"] == ref["label"]
        for c, v in ref["probabilities"].items():
            assert float(row[f"p_{c}"]) == pytest.approx(v, abs=1e-5)
    again = predict_archive(run_dir, root, out, workers=0, progress=False)  # a rerun: nothing left to do
    assert (again.done, again.skipped) == (0, 15) and len(_read_csv(out)) == 15


def test_parquet_parts_survive_an_unclosed_run(run_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "res.parquet"
    table = open_table(out, ["a", "b"])
    table.append([{"file": "x.png", "status": "ok", "label": "a", "probability": 0.7, "error": "", "p_a": 0.7,
                   "p_b": 0.3}])
    table.append([{"file": "y.png", "status": "error", "error": "broken"}])
    # killed here: no output file yet, but the parts say what is done
    assert not out.exists() and open_table(out, ["a", "b"]).done() == {"x.png", "y.png"}
    (tmp_path / "res.parquet.parts" / ".part-00000002.parquet.abc.tmp").write_bytes(b"cut")  # a kill mid-write
    open_table(out, ["a", "b"]).close()
    merged = pq.read_table(out).to_pylist()
    assert [r["file"] for r in merged] == ["x.png", "y.png"] and merged[1]["p_a"] is None
    assert not (tmp_path / "res.parquet.parts").exists()


def test_csv_cut_row_is_dropped_and_other_columns_refused(tmp_path):
    out = tmp_path / "res.csv"
    out.write_text("file,status,label,probability,error,p_a\nx.png,ok,a,1.0,,1.0\ny.png,ok,a,0.")
    assert CsvTable(out, ["file", "status", "label", "probability", "error", "p_a"]).done() == {"x.png"}
    assert out.read_text().endswith("1.0\n")  # the half row is gone, so the rerun appends after a full line
    with pytest.raises(MeddxError, match="other columns"):
        CsvTable(out, ["file", "status", "label", "probability", "error", "p_b"]).done()
    with pytest.raises(MeddxError, match=r"\.csv or \.parquet"):
        open_table(tmp_path / "res.xlsx", ["a"])


KILLABLE = """
import sys
from meddx.engine.batch_predict import predict_archive
predict_archive(sys.argv[1], sys.argv[2], sys.argv[3], batch_size=8, workers=1, progress=False)
"""


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_kill9_then_rerun_writes_every_file_exactly_once(run_dir, tmp_path, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    root = tmp_path / "many"
    root.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1000):
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / f"f{i:04d}.png")
    out = tmp_path / f"res{suffix}"
    proc = subprocess.Popen([sys.executable, "-c", KILLABLE, str(run_dir), str(root), str(out)], env=ENV)
    progress = out if suffix == ".csv" else tmp_path / "res.parquet.parts"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if suffix == ".csv" and out.is_file() and out.read_text().count("\n") > 40:
            break
        if suffix == ".parquet" and progress.is_dir() and len(list(progress.iterdir())) > 5:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    summary = predict_archive(run_dir, root, out, batch_size=64, workers=1, progress=False)
    assert summary.skipped > 0 and summary.skipped + summary.done == 1000
    if suffix == ".csv":
        files = [r["file"] for r in _read_csv(out)]
    else:
        import pyarrow.parquet as pq

        files = pq.read_table(out, columns=["file"]).column("file").to_pylist()
    assert sorted(files) == sorted(str(p) for p in root.iterdir())  # every file, exactly once


def test_cli_input_output(run_dir, tmp_path):
    root = _archive(tmp_path / "a", n=4)
    out = tmp_path / "r.csv"
    r = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(root), "--output", str(out),
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "7 files predicted (1 unreadable" in r.output and len(_read_csv(out)) == 7
    r = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(root)])
    assert r.exit_code == 2 and "error: --input and --output go together" in r.output
    r = CliRunner().invoke(app, ["predict", str(run_dir)])
    assert r.exit_code == 2 and "error: give image FILEs" in r.output


def test_onnx_runtime_gives_the_torch_rows(run_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from meddx.deploy.compress import export_run

    export_run(run_dir)
    root = _archive(tmp_path / "a", n=6)
    torch_rows = _read_csv(predict_archive(run_dir, root, tmp_path / "t.csv", workers=0, progress=False).output)
    # scored in 2 worker processes, each with its own ONNX Runtime session
    onnx_rows = _read_csv(predict_archive(run_dir, root, tmp_path / "o.csv", runtime="onnx", workers=2,
                                          progress=False).output)
    assert [r["file"] for r in onnx_rows] == [r["file"] for r in torch_rows] and len(onnx_rows) == 9
    for a, b in zip(torch_rows, onnx_rows):
        assert a["status"] == b["status"] and a["label"] == b["label"]
        if a["status"] == "ok":
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)


def test_decoding_workers_with_the_model_in_the_main_process_give_the_same_rows(run_dir, tmp_path, monkeypatch):
    import meddx.engine.batch_predict as batch_predict

    root = _archive(tmp_path / "a", n=6)
    scored = _read_csv(predict_archive(run_dir, root, tmp_path / "s.csv", batch_size=4, workers=2,
                                       progress=False).output)
    monkeypatch.setattr(batch_predict, "workers_score", lambda *a: False)  # the GPU / 3D layout
    decoded = _read_csv(predict_archive(run_dir, root, tmp_path / "d.csv", batch_size=4, workers=2,
                                        progress=False).output)
    assert len(scored) == 9 and [r["file"] for r in decoded] == [r["file"] for r in scored]
    for a, b in zip(scored, decoded):
        assert a["status"] == b["status"] and a["label"] == b["label"]
        if a["status"] == "ok":
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-5)


def test_a_3d_model_reads_volumes_in_workers_and_scores_in_the_main_process(tmp_path):
    from meddx.engine.batch_predict import workers_score
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 16), ("val", 6), ("test", 6)):
        y = (np.arange(n) % 2)[:, None]
        x = rng.integers(0, 60, (n, 16, 16, 16)).astype(np.uint8)
        x[y[:, 0] == 1, 4:10, 4:10, 4:10] = 255
        arrays |= {f"{split}_images": x, f"{split}_labels": y}
    np.savez(tmp_path / "vol.npz", **arrays)
    run = fit(TrainConfig(data=str(tmp_path / "vol.npz"), epochs=1, model="seednet", out=str(tmp_path), name="r",
                          progress=False)).path
    vols = tmp_path / "vols"
    vols.mkdir()
    for i in range(5):
        np.save(vols / f"v{i}.npy", arrays["test_images"][i])
    assert not workers_score("torch", run, "cpu")  # one model in the main process, not one per core
    rows = _read_csv(predict_archive(run, vols, tmp_path / "o.csv", runtime="torch", workers=1,
                                     progress=False).output)
    reference = Predictor(run, device="cpu", runtime="torch").predict_files([r["file"] for r in rows])
    assert len(rows) == 5 and all(r["status"] == "ok" for r in rows)
    for row, ref in zip(rows, reference):
        for c, v in ref["probabilities"].items():
            assert float(row[f"p_{c}"]) == pytest.approx(v, abs=1e-5)


def test_torch_runtime_scores_through_a_channels_last_copy_and_keeps_the_model(run_dir):
    import torch

    from meddx.models.inference import predict
    from meddx.runtimes import open_runtime

    rt = open_runtime("torch", run_dir, device="cpu")
    x = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    want, _ = predict(rt.model, x, rt.task, rt.norm)
    assert np.allclose(rt.predict(x), want, atol=1e-5)
    fast = rt._channels_last
    assert fast is not None and fast is not rt.model
    assert all(p.is_contiguous() for p in rt.model.parameters())  # explainers' hooks see the model as trained
    assert any(p.dim() == 4 and p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
               for p in fast.parameters())


def test_no_more_workers_start_than_there_are_batches(run_dir, tmp_path, monkeypatch):
    import torch

    import meddx.engine.batch_read as batch_read

    started = []

    class CountingLoader(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            started.append(kwargs["num_workers"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(batch_read.torch.utils.data, "DataLoader", CountingLoader)
    root = _archive(tmp_path / "a", n=6)  # 9 inputs
    summary = predict_archive(run_dir, root, tmp_path / "r.csv", batch_size=4, workers=8, progress=False)
    assert summary.done == 9 and started == [3]  # 3 batches of at most 4 files


def test_worker_plan_keeps_processes_times_threads_within_the_cores():
    from meddx.engine.batch_read import model_chunk, plan_workers

    assert model_chunk((28, 28)) == model_chunk((64, 64)) == 32
    assert model_chunk((224, 224)) == 2 and model_chunk((512, 512)) == 1  # one model per core: bounded activations

    assert plan_workers(None, True, 8) == (8, 1)  # 2D on CPU: a scoring worker per core, one thread each
    assert plan_workers(None, True, 1) == (0, 1)  # one core: read and score in the main process
    assert plan_workers(0, True, 4) == (0, 4)
    assert plan_workers(None, False, 8) == (2, 6)  # GPU or 3D: a quarter of the cores decode
    assert plan_workers(None, False, 2) == (1, 1)


# ---------------------------------------------------------------- --nproc: several worker processes


def _nproc_archive(root: Path, good: int = 58) -> Path:
    """``good`` PNGs in two folders plus 2 unreadable files (60 inputs)."""
    _write_pngs(root, good, seed=2, folder="s", stem="im")
    (root / "s0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut")
    (root / "s1" / "empty.png").write_bytes(b"")
    return root


def _rows_of(path: Path) -> list[dict]:
    """The table's rows as dicts of text ('' for empty), whatever its format."""
    if path.suffix == ".csv":
        return _read_csv(path)
    import pyarrow.parquet as pq

    return [{k: "" if v is None else str(v) for k, v in r.items()} for r in pq.read_table(path).to_pylist()]


def _same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["file"] for r in got] == [r["file"] for r in want]
    for a, b in zip(got, want):
        assert (a["status"], a["label"], a["error"]) == (b["status"], b["label"], b["error"])
        for col in [c for c in b if c == "probability" or c.startswith("p_")]:
            assert (a[col] == "") == (b[col] == "")
            if b[col]:
                assert float(a[col]) == pytest.approx(float(b[col]), abs=1e-6)


def _leftovers(out: Path) -> list[Path]:
    return [p for p in out.parent.iterdir() if p.name.startswith(out.name + ".")]


@pytest.fixture(scope="module")
def nproc_archive(tmp_path_factory) -> Path:
    return _nproc_archive(tmp_path_factory.mktemp("np") / "a")


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_nproc_2_gives_the_rows_of_one_process(run_dir, nproc_archive, tmp_path, monkeypatch, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    from meddx.engine import batch_parallel

    one = predict_archive(run_dir, nproc_archive, tmp_path / f"one{suffix}", runtime="torch", batch_size=8,
                          workers=0, progress=False)

    def no_single_process(*a, **k):
        raise AssertionError("--nproc 2 fell back to one process")

    monkeypatch.setattr(batch_parallel, "predict_archive", no_single_process)
    two = batch_parallel.predict_parallel(run_dir, nproc_archive, tmp_path / f"two{suffix}", nproc=2,
                                          runtime="torch", batch_size=8, workers=0, progress=False)
    assert (two.total, two.done, two.errors, two.skipped) == (one.total, one.done, one.errors, 0) == (60, 60, 2, 0)
    want = _rows_of(one.output)
    assert sum(r["status"] == "error" for r in want) == 2
    _same_rows(_rows_of(two.output), want)  # contiguous shards: even the order is the one process's
    assert _leftovers(two.output) == []  # rank tables merged and removed


def _typed(row: dict) -> dict:
    return {k: (float(v) if v and (k == "probability" or k.startswith("p_")) else (v or None)) for k, v in row.items()}


@pytest.mark.parametrize("suffix,nproc", [(".csv", 2), (".parquet", 2), (".csv", 1), (".parquet", 1)])
def test_rerun_after_an_interrupted_nproc_run_writes_every_file_once(run_dir, nproc_archive, tmp_path, suffix,
                                                                    nproc):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    from meddx.engine.batch_output import rank_csv
    from meddx.engine.batch_parallel import predict_parallel

    ref = _rows_of(predict_archive(run_dir, nproc_archive, tmp_path / f"ref{suffix}", runtime="torch",
                                   workers=0, progress=False).output)
    classes = [c[2:] for c in ref[0] if c.startswith("p_")]
    out = tmp_path / f"res{suffix}"
    # what kills leave: a main table (10 rows), rank 1's table (rows 10-24, the first 3 also in the main table,
    # as after a kill between a merge and the sidecar's removal) and rank 0's (rows 30-34)
    main = open_table(out, classes)
    main.append([_typed(r) for r in ref[:10]])
    main.close()  # parquet: a finished main file beside the rank parts
    open_table(out, classes, rank=1).append([_typed(r) for r in ref[7:25]])
    open_table(out, classes, rank=0).append([_typed(r) for r in ref[30:35]])
    if suffix == ".csv":
        with open(rank_csv(out, 0), "a") as f:
            f.write(ref[35]["file"] + ",ok,")  # a row cut short by a kill
    summary = predict_parallel(run_dir, nproc_archive, out, nproc=nproc, runtime="torch", batch_size=8,
                               workers=0, progress=False)
    assert (summary.skipped, summary.done) == (30, 30)  # 10 + 15 + 5 already done; the cut row is scored again
    got = _rows_of(out)
    assert sorted(r["file"] for r in got) == sorted(r["file"] for r in ref)  # every file exactly once
    by_file = {r["file"]: r for r in got}
    _same_rows([by_file[r["file"]] for r in ref], ref)
    assert _leftovers(out) == []


def test_bad_nproc_is_one_error_line(run_dir, tmp_path):
    root = _archive(tmp_path / "a", n=1)
    out = tmp_path / "r.csv"
    for value in ("0", "-1"):
        r = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(root), "--output", str(out),
                                     "--nproc", value])
        assert r.exit_code == 2 and r.output.strip().splitlines() == [f"error: --nproc must be at least 1; got {value}"]
    assert not out.exists()
    r = CliRunner().invoke(app, ["predict", str(run_dir), str(root / "site0" / "img000.png"), "--nproc", "2"])
    assert r.exit_code == 2 and "error: --nproc goes with --input/--output" in r.output
    # more processes than files: capped (here one file is left after the rerun, so one process scores it)
    r = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(root), "--output", str(out), "--nproc", "8",
                                 "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert "4 files predicted (1 unreadable" in r.output and len(_read_csv(out)) == 4


def _spawned_children(pid: int) -> list[int]:
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(k) for k in kids if "spawn_main" in _cmdline(int(k))]


def _cmdline(pid: int) -> str:
    """A process's command line; empty when it exited between being listed and being read (polled every 10 ms,
    a short-lived child can)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


NPROC_JOB = """
import sys
from meddx.engine.batch_parallel import predict_parallel
from meddx.errors import MeddxError
try:
    predict_parallel(sys.argv[1], sys.argv[2], sys.argv[3], nproc=2, runtime="torch", batch_size=4, workers=0,
                     progress=False)
except MeddxError as exc:
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_a_killed_worker_fails_the_job_in_one_line_and_the_rerun_completes(run_dir, nproc_archive, tmp_path):
    out = tmp_path / "res.csv"
    proc = subprocess.Popen([sys.executable, "-c", NPROC_JOB, str(run_dir), str(nproc_archive), str(out)], env=ENV,
                            stderr=subprocess.PIPE, text=True)
    deadline, victim = time.time() + 120, None
    while victim is None and time.time() < deadline and proc.poll() is None:
        kids = _spawned_children(proc.pid)
        victim = kids[-1] if len(kids) == 2 else None
        time.sleep(0.01)
    assert victim is not None, "no worker processes seen"
    os.kill(victim, signal.SIGKILL)
    try:
        _, err = proc.communicate(timeout=90)  # never hangs: the parent polls its workers
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 2
    assert err.strip().splitlines() == [f"error: {out}: worker 1 died (signal 9); rows written so far are kept: "
                                        "rerun to continue"]
    r = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(nproc_archive), "--output", str(out),
                                 "--nproc", "2", "--workers", "0"])
    assert r.exit_code == 0, r.output
    files = [row["file"] for row in _read_csv(out)]
    assert sorted(files) == sorted(find_inputs(nproc_archive)) and _leftovers(out) == []


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_workers_stop_when_the_parent_is_killed_and_the_rerun_completes(run_dir, nproc_archive, tmp_path):
    out = tmp_path / "res.parquet" if _has_pyarrow() else tmp_path / "res.csv"
    proc = subprocess.Popen([sys.executable, "-c", NPROC_JOB, str(run_dir), str(nproc_archive), str(out)], env=ENV)
    deadline, kids = time.time() + 120, []
    while len(kids) < 2 and time.time() < deadline and proc.poll() is None:
        kids = _spawned_children(proc.pid)
        time.sleep(0.01)
    assert len(kids) == 2, "no worker processes seen"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.time() + 90  # each worker notices after its next batch
    while any(_running(k) for k in kids) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(_running(k) for k in kids), "orphaned workers kept running"
    from meddx.engine.batch_parallel import predict_parallel

    summary = predict_parallel(run_dir, nproc_archive, out, nproc=2, runtime="torch", batch_size=8, workers=0,
                               progress=False)
    # each worker stopped after its first batch of 4 (not finishing its shard as an orphan would)
    assert summary.skipped <= 8 and summary.skipped + summary.done == 60
    assert sorted(r["file"] for r in _rows_of(out)) == sorted(find_inputs(nproc_archive)) and _leftovers(out) == []


def _has_pyarrow() -> bool:
    import importlib.util

    return importlib.util.find_spec("pyarrow") is not None


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_failing_worker_is_one_error_line_and_keeps_the_other_rows(run_dir, nproc_archive, tmp_path):
    from meddx.engine.batch_output import rank_csv

    out = tmp_path / "res.csv"
    rank_csv(out, 1).mkdir()  # rank 1 cannot write its table: its error must reach the parent as one line
    r = CliRunner().invoke(app, ["predict", str(run_dir), "--input", str(nproc_archive), "--output", str(out),
                                 "--nproc", "2", "--runtime", "torch", "--workers", "0"])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1, r.output
    assert lines[0].startswith(f"error: {out}: worker 1: IsADirectoryError") and "rerun to continue" in lines[0]
    assert not out.exists()  # no merge after a failure: whatever rank 0 wrote stays in its table for the rerun
    assert not rank_csv(out, 0).exists() or len(_read_csv(rank_csv(out, 0))) <= 30
