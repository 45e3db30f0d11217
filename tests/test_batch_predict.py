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


def _archive(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"site{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(sub / f"img{i:03d}.png")
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
    onnx_rows = _read_csv(predict_archive(run_dir, root, tmp_path / "o.csv", runtime="onnx", workers=0,
                                          progress=False).output)
    assert [r["file"] for r in onnx_rows] == [r["file"] for r in torch_rows] and len(onnx_rows) == 9
    for a, b in zip(torch_rows, onnx_rows):
        assert a["status"] == b["status"] and a["label"] == b["label"]
        if a["status"] == "ok":
            assert float(a["probability"]) == pytest.approx(float(b["probability"]), abs=1e-4)
