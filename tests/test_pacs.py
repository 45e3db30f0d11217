"""A real PACS round trip: Orthanc (Debian orthanc + orthanc-dicomweb) started by the tests, ``meddx pacs run``
(QIDO -> WADO -> predict -> STOW) and ``meddx pacs watch`` (each study once, across a kill -9 and a restart).

The uploaded studies carry planted PHI; what comes back is checked through QIDO/WADO (it is there, it parses,
its references resolve) and searched for the planted values.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, require_module, shared_path
from .dicom_phi import phi_hits, planted_ct, planted_series
from .orthanc_server import missing, orthanc, upload
from .test_dicomio import cls_run, seg3d_run  # noqa: F401  (session fixtures: tiny trained runs)

require_module("highdicom")
require_module("dicognito")
require_module("dicomweb_client")


@pytest.fixture(scope="module")
def pacs_url(tmp_path_factory):
    why = missing()
    if why:
        if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
            pytest.fail(why + "; MEDDX_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(why)
    with orthanc(tmp_path_factory.mktemp("orthanc")) as url:
        yield url


def _pacs_run(*args: str):
    from typer.testing import CliRunner

    from meddx.cli import app

    return CliRunner().invoke(app, ["pacs", "run", *args, "--device", "cpu"])


def _result_study(url: str, study: str) -> dict[str, list]:
    """The instances of a study, by modality, retrieved and parsed (WADO-RS)."""
    from meddx.pacs.client import Pacs

    pacs = Pacs(url)
    by_modality: dict[str, list] = {}
    for ds in pacs.retrieve_study(study):
        by_modality.setdefault(str(ds.Modality), []).append(ds)
    return by_modality


def test_pacs_run_classification_round_trip(pacs_url, cls_run, tmp_path, capsys, caplog):  # noqa: F811
    import logging

    import pydicom

    from meddx.dicomio.sr import read_findings
    from meddx.pacs.client import Pacs

    ct, planted = planted_ct(tmp_path / "ct.dcm")
    upload(pacs_url, [ct])
    caplog.set_level(logging.DEBUG)
    study = str(pydicom.dcmread(str(ct)).StudyInstanceUID)
    before = {uid for uid, _ in Pacs(pacs_url).studies()}
    r = _pacs_run(str(cls_run), "--url", pacs_url, "--study", study)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["stored"] == {"CT": 1, "SR": 1, "OT": 1}
    # QIDO: the new (de-identified) study is there and holds the three instances
    after = {uid for uid, _ in Pacs(pacs_url).studies()}
    assert after - before == {out["study"]}
    assert sorted(i["00080060"]["Value"][0] for i in Pacs(pacs_url).instances(out["study"])) == ["CT", "OT", "SR"]
    got = _result_study(pacs_url, out["study"])
    (sr,), (ct_copy,) = got["SR"], got["CT"]
    (finding,) = read_findings(sr)
    assert finding["sources"] == [ct_copy.SOPInstanceUID]  # the reference resolves inside the PACS
    assert finding["finding"] == out["results"][0]["label"]
    assert got["OT"][0].pixel_array.shape == (ct_copy.Rows, ct_copy.Columns, 3)
    texts = [r.output, capsys.readouterr().err, caplog.text] + [str(ds) for dss in got.values() for ds in dss]
    hits = phi_hits(planted, texts, [])
    print(f"planted {len(planted)} PHI values; searched the command output and the {sum(map(len, got.values()))} "
          f"stored instances; found {len(hits)}")
    assert hits == []


@pytest.mark.slow
def test_pacs_run_3d_segmentation_of_the_real_series(pacs_url, seg3d_run, tmp_path):  # noqa: F811
    import highdicom as hd

    folder, planted = planted_series(tmp_path / "series", shared_path("totalsegmentator_examples",
                                                                      "example_ct_dicom"))
    files = sorted(folder.iterdir())
    upload(pacs_url, files)
    import pydicom

    study = str(pydicom.dcmread(str(files[0])).StudyInstanceUID)
    r = _pacs_run(str(seg3d_run), "--url", pacs_url, "--study", study)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["stored"] == {"CT": 20, "SEG": 1}
    got = _result_study(pacs_url, out["study"])
    seg = hd.seg.Segmentation.from_dataset(got["SEG"][0])
    assert {uid for _, _, uid in seg.get_source_image_uids()} == {ds.SOPInstanceUID for ds in got["CT"]}
    assert seg.number_of_segments == 1
    assert phi_hits(planted, [r.output] + [str(ds) for dss in got.values() for ds in dss]) == []


def test_pacs_run_errors_are_one_line_and_name_no_uid(pacs_url, cls_run):  # noqa: F811
    r = _pacs_run(str(cls_run), "--url", pacs_url, "--study", "1.2.3.4.5.6.7.8.9")
    assert r.exit_code != 0 and "no such study" in r.output and "1.2.3.4.5.6.7.8.9" not in r.output
    assert "Traceback" not in r.output
    r = _pacs_run(str(cls_run), "--url", "http://127.0.0.1:9/dicom-web", "--study", "1.2.3")
    assert r.exit_code != 0 and "unreachable" in r.output and "Traceback" not in r.output


def test_same_key_twice_stores_nothing_new(pacs_url, cls_run, tmp_path):  # noqa: F811
    """What a kill between STOW and the ledger entry comes to: the study processed again with the same key
    stores the same instances, and the PACS still holds one copy of each."""
    import pydicom

    from meddx.engine.predict import Predictor
    from meddx.pacs.client import Pacs
    from meddx.pacs.roundtrip import process_study

    ct, _ = planted_ct(tmp_path / "ct.dcm")
    upload(pacs_url, [ct])
    pacs, predictor = Pacs(pacs_url), Predictor(cls_run, device="cpu")
    study = str(pydicom.dcmread(str(ct)).StudyInstanceUID)
    first = process_study(predictor, pacs, study, key="same key")
    second = process_study(predictor, pacs, study, key="same key")
    assert first.study == second.study and len(pacs.instances(first.study)) == 3
    third = process_study(predictor, pacs, study, key="another key")
    assert third.study != first.study


def _start_watch(run: Path, url: str, state: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    return subprocess.Popen([sys.executable, "-m", "meddx.cli", "pacs", "watch", str(run), "--url", url,
                             "--state", str(state), "--interval", "0.2", "--device", "cpu", *extra],
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env)


@pytest.mark.slow
def test_watch_processes_each_study_exactly_once_across_kill_9(pacs_url, cls_run, tmp_path):  # noqa: F811
    with orthanc(tmp_path / "orthanc") as url:  # a PACS of its own: only these studies
        _watch_kill_restart(url, cls_run, tmp_path, n=8)


def _watch_kill_restart(pacs_url: str, cls_run: Path, tmp_path: Path, n: int) -> None:  # noqa: F811
    from meddx.dicomio.deid import MARK
    from meddx.pacs.client import Pacs

    planted = []
    for i in range(n):
        ct, values = planted_ct(tmp_path / "in" / f"ct{i}.dcm")
        planted += values
        upload(pacs_url, [ct])
    pacs = Pacs(pacs_url)
    sources = {uid for uid, desc in pacs.studies() if not desc.startswith(MARK)}
    state, log = tmp_path / "state", tmp_path / "watch.log"
    proc = _start_watch(cls_run, pacs_url, state, log)
    ledger = state / "ledger.json"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # kill -9 once two studies are done, mid-way through the rest
        if ledger.is_file() and len(json.loads(ledger.read_text())["studies"]) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done_at_kill = len(json.loads(ledger.read_text())["studies"])
    assert 2 <= done_at_kill < len(sources), "the kill came too late to test a restart"
    proc = _start_watch(cls_run, pacs_url, state, log, "--once")
    assert proc.wait(timeout=300) == 0, log.read_text()[-2000:]
    entries = json.loads(ledger.read_text())["studies"]
    assert len(entries) == len(sources) and all("error" not in e for e in entries.values())
    results = [uid for uid, desc in pacs.studies() if desc.startswith(MARK)]
    mine = {e["results_study"] for e in entries.values()}
    assert mine <= set(results) and len(mine) == len(sources)
    for study in mine:  # exactly one set of results per source study: no duplicate SR / SC
        modalities = sorted(i["00080060"]["Value"][0] for i in pacs.instances(study))
        assert modalities == ["CT", "OT", "SR"], modalities
    again = _start_watch(cls_run, pacs_url, state, log, "--once")
    assert again.wait(timeout=300) == 0
    assert log.read_text().strip().splitlines()[-1] == '{"processed": 0}'
    assert phi_hits(sorted(set(planted)), [log.read_text()], [state]) == []
    print(f"watch: {len(sources)} studies, kill -9 after {done_at_kill}, restart: each processed exactly once")
