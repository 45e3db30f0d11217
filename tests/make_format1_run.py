"""Build the checked-in "format 1" run folder used by ``tests/test_pinned_format1.py``.

Run ONCE with the code that writes checkpoint metadata ``"format": 1`` (that is the point: later metadata
formats must keep loading this folder unchanged). Do not regenerate it after the format changes; the script
refuses to overwrite an existing folder unless given ``--force``.

    PYTHONPATH=src python tests/make_format1_run.py [--force]

What it writes under ``tests/data/``:

* ``format1_data.npz``: tiny MedMNIST-layout data (8x8 px greyscale, 3 classes: a bright 3x3 square in the
  top-left / top-right / bottom-left corner; 60/20/20 images). 8 px rather than the phantom's 28 (or its
  16 px minimum): seednet's first dense layer grows with the input (28 px: 1.2 M weights, 4.8 MB; 16 px:
  1.3 MB), and the folder should stay a few hundred KB.
* ``format1_run/``: ``config.json``, ``data.json``, ``history.jsonl`` and ``best.safetensors`` of a 1-epoch
  seednet run on it (``select: best``, so that evaluate/predict use the one checkpoint kept; ``data`` is the
  relative path ``format1_data.npz``, resolved from the working directory as any run's data spec is).
* ``format1_images/test0.png``, ``test1.png``: the first two test images as files.
* ``format1_expected.json``: what today's code says about them: ``evaluate_run`` metrics (200 bootstrap
  resamples, CPU) and ``Predictor.predict_files`` probabilities for the two images.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
RUN_FILES = ("config.json", "data.json", "history.jsonl", "best.safetensors")
N_BOOTSTRAP = 200


def make_data(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    corners = [(0, 0), (0, 5), (5, 0)]
    arrays = {}
    for split, n in (("train", 60), ("val", 20), ("test", 20)):
        y = np.arange(n) % 3
        rng.shuffle(y)
        x = rng.integers(0, 60, size=(n, 8, 8)).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = corners[k]
            x[i, r:r + 3, c:c + 3] = 220
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None].astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="overwrite an existing tests/data/format1_run")
    args = parser.parse_args()
    run_dir = DATA / "format1_run"
    if run_dir.exists() and not args.force:
        sys.exit(f"{run_dir} exists; it must stay as the format-1 code wrote it (use --force to rebuild)")

    from PIL import Image

    from meddx.engine.checkpoint import read_checkpoint
    from meddx.engine.config import TrainConfig
    from meddx.engine.evaluate import evaluate_run
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor

    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            make_data(Path("format1_data.npz"))
            cfg = TrainConfig(data="format1_data.npz", model="seednet", epochs=1, batch_size=16, out=".",
                              name="format1_run", select="best", progress=False, device="cpu")
            run = fit(cfg)
            (run.path / "last.safetensors").unlink()
            _, meta, _ = read_checkpoint(run.best)
            assert meta["format"] == 1, meta.get("format")
            shutil.rmtree(run_dir, ignore_errors=True)
            run_dir.mkdir(parents=True)
            for f in RUN_FILES:
                shutil.copyfile(run.path / f, run_dir / f)
            shutil.copyfile("format1_data.npz", DATA / "format1_data.npz")
        finally:
            os.chdir(cwd)

    images_dir = DATA / "format1_images"
    images_dir.mkdir(exist_ok=True)
    with np.load(DATA / "format1_data.npz") as f:
        test_images = f["test_images"][:2]
    files = []
    for i, img in enumerate(test_images):
        files.append(images_dir / f"test{i}.png")
        Image.fromarray(img).save(files[-1])

    # what today's code says, measured on a scratch copy (evaluate writes metrics/report into the run folder)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(run_dir, Path(tmp) / "format1_run")
        shutil.copyfile(DATA / "format1_data.npz", Path(tmp) / "format1_data.npz")
        cwd = os.getcwd()
        os.chdir(tmp)
        try:
            m = evaluate_run("format1_run", n_bootstrap=N_BOOTSTRAP, device="cpu", report=False)
            preds = Predictor("format1_run", device="cpu").predict_files([str(p) for p in files])
        finally:
            os.chdir(cwd)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=DATA).stdout.strip()
    expected = {
        "created_with_commit": commit,
        "n_bootstrap": N_BOOTSTRAP,
        "metrics": {k: m[k] for k in ("task", "n", "acc", "auc", "acc_ci", "auc_ci", "loss", "epoch", "checkpoint",
                                      "dataset", "model")},
        "predictions": {Path(p["file"]).name: {"label": p["label"], "probabilities": p["probabilities"]}
                        for p in preds},
    }
    (DATA / "format1_expected.json").write_text(json.dumps(expected, indent=2) + "\n")
    size = sum(f.stat().st_size for f in run_dir.iterdir())
    print(f"wrote {run_dir} ({size / 1024:.0f} KB), {DATA / 'format1_expected.json'}")


if __name__ == "__main__":
    main()
