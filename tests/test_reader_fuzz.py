"""``meddx predict`` and ``meddx explain`` over the fuzz corpus (tests/fuzz_corpus.py), in-process.

Every broken file must end with exit code 2 and exactly one ``error:`` line (no traceback), valid files must
succeed (16-bit ones with the 8-bit answer), and nothing may be written outside the ``--out`` folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from meddx.cli import app

from .fuzz_corpus import make_corpus

runner = CliRunner()


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A 1-epoch seednet on the 28 px phantom (uint8 1-channel input)."""
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    out = tmp_path_factory.mktemp("reader_runs")
    return fit(TrainConfig(data="phantom", model="seednet", epochs=1, size=28, out=str(out), name="tiny",
                           progress=False, device="cpu")).path


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, files in os.walk(root):
        for name in files + dirnames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def _check(result, path: Path, expect: str, command: str) -> None:
    out = result.output
    where = f"{command} {path.name}: {out[-400:]!r}"
    assert "Traceback" not in out, where
    if expect == "ok" or (expect == "any" and result.exit_code == 0):
        assert result.exit_code == 0 and result.exception is None, where
        assert "error:" not in out, where
        return
    assert isinstance(result.exception, SystemExit) and result.exit_code == 2, where
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].count("error:") == 1, where


def test_predict_and_explain_over_fuzz_corpus(tiny_run, tmp_path, monkeypatch):
    base = tmp_path / "fuzz"
    cases, skipped = make_corpus(base / "corpus")
    print(f"fuzz corpus: {len(cases)} files" + "".join(f"; skipped: {s}" for s in skipped))
    assert len(cases) >= 150
    monkeypatch.chdir(base)
    out_dir = base / "out"
    before = _tree(base) | _tree(tiny_run)
    answers = {}
    for path, expect in cases:
        r = runner.invoke(app, ["predict", str(tiny_run), str(path), "--json", "--device", "cpu",
                                "--out", str(out_dir)])
        _check(r, path, expect, "predict")
        if r.exit_code == 0:
            answers[path.name] = json.loads(r.stdout)[0]["probabilities"]
        r = runner.invoke(app, ["explain", str(tiny_run), str(path), "--method", "saliency", "--device", "cpu",
                                "--out", str(out_dir)])
        _check(r, path, expect, "explain")
    after = _tree(base) | _tree(tiny_run)
    changed = [p for p in after if before.get(p) != after[p] and not p.startswith(str(out_dir))]
    assert not changed, f"written outside --out: {changed[:5]}"
    # the 16-bit files hold the 8-bit reference image times 257: same answer
    assert answers["png16.png"] == answers["png8.png"] == answers["tif16.tif"]
    assert answers["dicom_as.png"] == answers["dicom.dcm"] and answers["png_as.dcm"] == answers["png8.png"]
