"""Results back into the PACS, measured against a real Orthanc (Debian orthanc + orthanc-dicomweb).

* round trip (pull -> predict -> push) of ``meddx pacs run`` for a 2D classifier on pydicom's CT_small.dcm and a
  3D segmentation of the 20-slice TotalSegmentator CT series: cold (a fresh ``meddx`` process: Python start and
  imports included) and warm (in-process, as ``pacs watch`` and ``serve`` run it), beside the reference: plain
  ``Predictor.predict_files`` on the same input (no DICOM, no PACS) in the same process;
* every object stored: read back by highdicom and checked by dciodvfy (errors counted);
* PHI: values planted in the inputs (name, ID, birth date, accession, institution, referring physician, UIDs)
  searched in the command outputs and every instance meddx stored;
* ``pacs watch`` over N studies (50; ``--quick`` 6) with a kill -9 mid-way and a restart: results per study.

    python benchmarks/pacs.py [--quick] [--studies 50]

Models are tiny (1 epoch on the phantoms: the point is the plumbing, not accuracy). Last line: JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ helpers: Orthanc, planted PHI

from benchmarks._common import REPO, SHARED, print_json, print_table  # noqa: E402
from tests.dicom_phi import phi_hits, planted_ct, planted_series  # noqa: E402
from tests.orthanc_server import orthanc, upload  # noqa: E402


def train(out: Path) -> dict[str, Path]:
    from meddx.data.segdata import load_phantom3d
    from meddx.data.sources import load_phantom
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    fit(TrainConfig(data="phantom", model="seednet", epochs=1, size=28, out=str(out), name="cls", progress=False,
                    device="cpu"), data=load_phantom(28, splits={"train": 64, "val": 16, "test": 16}))
    fit(TrainConfig(data="phantom3d", task="segmentation", model="segresnet", batch_size=4, size=32, epochs=1,
                    out=str(out), name="seg3d", progress=False, device="cpu"),
        data=load_phantom3d(16, seed=0, splits={"train": 2, "val": 1, "test": 2}))
    return {"cls": out / "cls", "seg3d": out / "seg3d"}


def cold_run(run: Path, url: str, study: str) -> tuple[float, str, dict]:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    t = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "meddx.cli", "pacs", "run", str(run), "--url", url, "--study", study,
                        "--device", "cpu"], capture_output=True, text=True, env=env, timeout=600)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"pacs run failed: {p.stdout[-500:]} {p.stderr[-500:]}")
    return wall, p.stdout + p.stderr, json.loads(p.stdout[p.stdout.index("{"):])


def cold_predict(run: Path, source: Path, out: Path) -> float:
    """The reference for the cold round trip: plain ``meddx predict`` on the same input in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "meddx.cli", "predict", str(run), str(source), "--json", "--device", "cpu",
                    "--out", str(out)], capture_output=True, env=env, timeout=600, check=True)
    return time.perf_counter() - t


def warm_run(predictor, url: str, study: str, source: Path) -> dict:
    """In-process: one warm-up, then the timed round trip; beside it the plain prediction on the same input."""
    from meddx.pacs.client import Pacs
    from meddx.pacs.roundtrip import process_study

    pacs = Pacs(url)
    process_study(predictor, pacs, study)  # warm-up (imports, first-call allocations)
    t = time.perf_counter()
    outcome = process_study(predictor, pacs, study)
    total = time.perf_counter() - t
    predictor.predict_files([source], out_dir=tempfile.mkdtemp(prefix="meddx-bench-"))  # warm-up
    t = time.perf_counter()
    predictor.predict_files([source], out_dir=tempfile.mkdtemp(prefix="meddx-bench-"))
    plain = time.perf_counter() - t
    return {"total": total, "plain": plain, "outcome": outcome}


def check_stored(url: str, study: str) -> tuple[int, int, list[str]]:
    """(objects meddx wrote, highdicom read-back errors, dciodvfy error lines) for a results study."""
    import shutil

    import highdicom as hd

    from meddx.pacs.client import Pacs

    readers = {"SR": hd.sr.ComprehensiveSR.from_dataset, "SEG": hd.seg.Segmentation.from_dataset,
               "OT": hd.Image.from_dataset}
    n, hd_errors, dvfy = 0, 0, []
    datasets = Pacs(url).retrieve_study(study)
    for ds in datasets:
        if ds.Modality not in readers:
            continue
        n += 1
        try:
            readers[ds.Modality](ds)
        except Exception as exc:  # any failure of highdicom's own validation counts
            hd_errors += 1
            print(f"highdicom cannot read back {ds.Modality}: {exc}")
        if shutil.which("dciodvfy"):
            with tempfile.NamedTemporaryFile(suffix=".dcm") as f:
                ds.save_as(f.name, enforce_file_format=True)
                out = subprocess.run(["dciodvfy", f.name], capture_output=True, text=True)
                dvfy += [f"{ds.Modality}: {line}" for line in (out.stdout + out.stderr).splitlines()
                         if line.startswith("Error")]
    return n, hd_errors, dvfy


def watch_kill_restart(run: Path, url: str, work: Path, n: int) -> dict:
    from meddx.dicomio.deid import MARK
    from meddx.pacs.client import Pacs

    planted = []
    for i in range(n):
        ct, values = planted_ct(work / "watch-in" / f"ct{i}.dcm")
        planted += values
    upload(url, sorted((work / "watch-in").iterdir()))
    pacs = Pacs(url)
    state, log = work / "state", work / "watch.log"
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "meddx.cli", "pacs", "watch", str(run), "--url", url, "--state", str(state),
           "--interval", "0.2", "--device", "cpu"]
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)
    ledger = state / "ledger.json"
    while proc.poll() is None:
        if ledger.is_file() and len(json.loads(ledger.read_text())["studies"]) >= n // 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    at_kill = len(json.loads(ledger.read_text())["studies"])
    subprocess.run(cmd + ["--once"], stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, check=True)
    wall = time.perf_counter() - t
    entries = json.loads(ledger.read_text())["studies"]
    results = {e.get("results_study") for e in entries.values()}
    per_study = [sorted(i["00080060"]["Value"][0] for i in pacs.instances(s)) for s in results if s]
    exactly_once = sum(m == ["CT", "OT", "SR"] for m in per_study)
    mark_studies = sum(desc.startswith(MARK) for _, desc in pacs.studies())
    hits = phi_hits(sorted(set(planted)), [log.read_text()], [state])
    return {"studies": n, "killed_after": at_kill, "ledger": len(entries), "results_studies": mark_studies,
            "exactly_once": exactly_once, "duplicates": sum(len(m) - 3 for m in per_study if len(m) > 3),
            "wall_s": wall, "phi_found": len(hits), "phi_planted": len(set(planted))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="6 studies for the watch (a smoke run)")
    ap.add_argument("--studies", type=int, default=None, help="studies for the watch (default 50, quick 6)")
    args = ap.parse_args()
    n_watch = args.studies or (6 if args.quick else 50)
    import pydicom

    from meddx.engine.predict import Predictor
    from meddx.pacs.client import Pacs

    work = Path(tempfile.mkdtemp(prefix="meddx-bench-pacs-"))
    t = time.perf_counter()
    runs = train(work / "runs")
    print(f"trained 2 tiny models in {time.perf_counter() - t:.1f} s")
    ct, planted_c = planted_ct(work / "in" / "ct.dcm")
    series, planted_s = planted_series(work / "in" / "series", SHARED / "totalsegmentator_examples" /
                                       "example_ct_dicom")
    rows, texts, stored_texts = [], [], []
    checks = {"objects": 0, "highdicom_errors": 0, "dciodvfy": []}
    with orthanc(work / "orthanc") as url:
        upload(url, [ct] + sorted(series.iterdir()))
        cases = [("2D classification, CT_small", "cls", ct, 10.0),
                 ("3D segmentation, 20-slice CT series", "seg3d", series, 60.0)]
        for label, key, source, target in cases:
            study = str(pydicom.dcmread(str(source if source.is_file() else sorted(source.iterdir())[0]))
                        .StudyInstanceUID)
            cold, text, out = cold_run(runs[key], url, study)
            cold_plain = cold_predict(runs[key], source, work / "masks")
            texts.append(text)
            warm = warm_run(Predictor(runs[key], device="cpu"), url, study, source)
            n, hd_err, dvfy = check_stored(url, out["study"])
            checks["objects"] += n
            checks["highdicom_errors"] += hd_err
            checks["dciodvfy"] += dvfy
            stored_texts += [str(ds) for ds in Pacs(url).retrieve_study(out["study"])]
            rows.append({"case": label, "cold CLI s": cold, "cold predict CLI s": cold_plain,
                         "cold/plain": cold / cold_plain, "warm s": warm["total"],
                         "pull": warm["outcome"].seconds["pull"], "predict": warm["outcome"].seconds["predict"],
                         "push": warm["outcome"].seconds["push"], "plain predict s": warm["plain"],
                         "warm/plain": warm["total"] / max(warm["plain"], 1e-9), "target s": target,
                         "stored": out["stored"]})
    print_table(rows, ["case", "cold CLI s", "cold predict CLI s", "cold/plain", "warm s", "pull", "predict", "push",
                       "plain predict s", "warm/plain", "target s", "stored"],
                "pacs run round trip (Orthanc on loopback, 2 shared CPU cores)")
    planted = sorted(set(planted_c) | set(planted_s))
    hits = phi_hits(planted, texts + stored_texts, [])
    print(f"PHI: planted {len(planted)} values, searched {len(texts)} command outputs and {len(stored_texts)} "
          f"stored instances: found {len(hits)} {hits[:3]}")
    print(f"stored objects: {checks['objects']}, highdicom read-back errors {checks['highdicom_errors']}, "
          f"dciodvfy errors {len(checks['dciodvfy'])} {checks['dciodvfy'][:3]}")
    with orthanc(work / "orthanc-watch") as url:
        w = watch_kill_restart(runs["cls"], url, work, n_watch)
    print_table([w], list(w), f"pacs watch: {n_watch} studies, kill -9 mid-way, restart")
    print_json({
        "roundtrip_2d_cold_s": rows[0]["cold CLI s"], "roundtrip_2d_warm_s": rows[0]["warm s"],
        "predict_2d_cold_s": rows[0]["cold predict CLI s"], "predict_3d_cold_s": rows[1]["cold predict CLI s"],
        "roundtrip_3d_cold_s": rows[1]["cold CLI s"], "roundtrip_3d_warm_s": rows[1]["warm s"],
        "objects_checked": checks["objects"], "highdicom_errors": checks["highdicom_errors"],
        "dciodvfy_errors": len(checks["dciodvfy"]), "phi_planted": len(planted) + w["phi_planted"],
        "phi_found": len(hits) + w["phi_found"], "watch_studies": w["studies"], "watch_killed_after": w["killed_after"],
        "watch_exactly_once": w["exactly_once"], "watch_duplicates": w["duplicates"], "watch_wall_s": w["wall_s"],
    })


if __name__ == "__main__":
    main()
