"""``meddx train`` over the fuzz corpus (tests/fuzz_corpus.py): a training folder holding one broken file, and
each broken ``.npz``/``.csv`` given as the data set itself.

Every case must end with exit code 2, exactly one ``error:`` line naming the file, no traceback, and no run
folder (nothing is trained on what is left after silently dropping the file). Valid array and NIfTI files in a
class folder are trained on, like images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from typer.testing import CliRunner

from meddx.cli import app

from .fuzz_corpus import _npy_bytes, _pil_bytes, make_corpus, reference_image

runner = CliRunner()
TRAIN = ["--epochs", "1", "--model", "seednet", "--no-evaluate", "--device", "cpu"]


def _class_folder(root: Path, extra: Path | None = None, extra_bytes: bytes | None = None, name: str = "") -> Path:
    """Two class folders of three valid PNGs each, plus one more file in class ``a``."""
    ref = reference_image()
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            (root / c / f"ok{i}.png").write_bytes(_pil_bytes(ref, "PNG"))
    if extra is not None:
        shutil.copy(extra, root / "a" / extra.name)
    if extra_bytes is not None:
        (root / "a" / name).write_bytes(extra_bytes)
    return root


def _refused(result, name: str) -> str | None:
    """None if ``result`` is the one-line refusal that names the file, else what went wrong."""
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    if "Traceback" in result.output or result.exit_code != 2 or len(errors) != 1 or name not in errors[0]:
        return f"{name}: rc {result.exit_code}: {result.output[-300:]!r}"
    return None


def test_train_refuses_every_broken_file_of_the_corpus(tmp_path):
    cases, _ = make_corpus(tmp_path / "corpus")
    broken = [p for p, expect in cases if expect == "error" and p.is_file() and not p.is_symlink()]
    out = tmp_path / "out"
    failures, runs = [], 0
    for path in broken:
        data = _class_folder(tmp_path / "ds" / path.name, extra=path)
        failures.append(_refused(runner.invoke(app, ["train", "--data", str(data), "--out", str(out), *TRAIN]),
                                 path.name))
        runs += 1
        if path.suffix in (".npz", ".csv"):
            failures.append(_refused(runner.invoke(app, ["train", "--data", str(path), "--out", str(out), *TRAIN]),
                                     path.name))
            runs += 1
    print(f"train fuzz: {runs} runs over {len(broken)} broken files")
    assert len(broken) >= 100
    assert [f for f in failures if f] == []
    assert not out.exists() or not any(out.iterdir()), "a run folder was written for refused data"


def test_array_and_nifti_files_in_class_folders_are_trained_on(tmp_path):
    import nibabel as nib
    import numpy as np

    ref = reference_image()
    data = _class_folder(tmp_path / "ds", extra_bytes=_npy_bytes(ref), name="arr.npy")
    nib.save(nib.Nifti1Image(ref.astype(np.float32), np.eye(4)), str(data / "b" / "vol.nii.gz"))
    r = runner.invoke(app, ["train", "--data", str(data), "--out", str(tmp_path / "out"), *TRAIN])
    assert r.exit_code == 0, r.output
    import json

    run = next((tmp_path / "out").iterdir())
    summary = json.loads((run / "data.json").read_text())
    assert summary["n_train"] + summary["n_val"] + summary["n_test"] == 8  # 6 PNGs + the .npy + the .nii.gz
