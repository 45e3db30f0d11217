"""Start-up hygiene of the CLI, checked by what is imported (timings are in benchmarks/cli_latency.py):
``import meddx.cli`` imports no torch; a rejected input loads no torch; a classification predict imports none
of the heavy optional libraries (scikit-learn, matplotlib, MONAI, timm, torchvision, SciPy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("sklearn", "matplotlib", "monai", "timm", "torchvision", "scipy")

# Runs the CLI in-process (no SystemExit) and prints the top-level packages it imported, as JSON.
PROBE = """
import json, sys
from meddx.cli import app
try:
    code = app(sys.argv[1:], standalone_mode=False) or 0  # an Exit's code is returned in this mode
except SystemExit as exc:
    code = exc.code
except BaseException as exc:
    code = type(exc).__name__
print(json.dumps({"code": code, "modules": sorted({m.split(".")[0] for m in sys.modules})}))
"""


def _probe(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]) | {"stderr": proc.stderr}


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory) -> Path:
    """A classification run folder with an untrained seednet checkpoint (28 px, uint8, 1 channel)."""
    import torch

    from meddx.data.augment import Normalization
    from meddx.engine.checkpoint import save_checkpoint
    from meddx.engine.config import TrainConfig
    from meddx.models import create_model

    path = tmp_path_factory.mktemp("start") / "run"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(TrainConfig(data="phantom", model="seednet", size=28).to_dict()))
    torch.manual_seed(0)
    meta = {"format": 1, "model": "seednet", "task": "classification", "task_kind": "binary-class",
            "classes": ["no nodule", "nodule"], "num_outputs": 2, "in_channels": 1, "input_size": 28,
            "image_shape": [28, 28], "spatial_dims": 2, "modality": "ct",
            "normalization": Normalization(1 / 255, [0.4], [0.25]).to_dict(), "dataset": "phantom", "epoch": 0,
            "monitor_value": 0.5, "input_dtype": "uint8"}
    save_checkpoint(path / "best.safetensors", create_model("seednet", 1, 2, 28, 2), meta)
    return path


def test_import_cli_imports_no_torch():
    r = _probe("--help")
    assert r["code"] == 0 and "torch" not in r["modules"] and "meddx" in r["modules"]


def test_predict_path_imports_no_heavy_library(seed_run, tmp_path):
    from PIL import Image

    png = tmp_path / "one.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(png)
    r = _probe("predict", str(seed_run), str(png), "--json", "--device", "cpu")
    assert r["code"] == 0, r["stderr"]
    assert "torch" in r["modules"]  # the floor: the model runs in PyTorch
    assert [m for m in HEAVY if m in r["modules"]] == []


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_bytes(b""), "file is empty (0 bytes)"),
    (lambda p: None, "file not found"),
])
def test_bad_input_rejected_before_torch(seed_run, tmp_path, make, message):
    p = tmp_path / "x.png"
    make(p)
    for command in ("predict", "explain"):
        r = _probe(command, str(seed_run), str(p))
        assert r["code"] == 2 and message in r["stderr"] and str(p) in r["stderr"]
        assert "torch" not in r["modules"], command


def test_missing_run_and_bad_runtime_rejected_before_torch(tmp_path):
    png = tmp_path / "x.png"
    png.write_bytes(b"x")
    r = _probe("predict", str(tmp_path / "nowhere"), str(png))
    assert r["code"] == 2 and "run folder or checkpoint not found" in r["stderr"] and "torch" not in r["modules"]
    r = _probe("predict", str(tmp_path), str(png), "--runtime", "tflite")
    assert r["code"] == 2 and "runtime must be" in r["stderr"] and "torch" not in r["modules"]


def _commands(group, prefix=()):
    """(path, click command) for every command of the app, sub-apps included."""
    import typer

    from meddx.cli import app

    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        path = (*prefix, name)
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, path)
        else:
            yield path, cmd


def test_help_names_values_in_words_not_python_types():
    from typer.testing import CliRunner

    from meddx.cli import app

    runner = CliRunner()
    paths = [p for p, _ in _commands(None)]
    assert {("predict",), ("register",), ("pacs", "run")} <= set(paths)
    for path in paths:
        r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert r.exit_code == 0, (path, r.output)
        usage = next(line for line in r.output.splitlines() if "Usage:" in line)
        assert "{" not in usage and "...." not in usage, (path, usage)  # RUN [FILE...], not {RUN} [FILE...]...
        for bad in ("<str>", "<int>", "<float>", "<path>", "<bool>", "list[", "Path]"):
            assert bad not in r.output, (path, bad)
    r = runner.invoke(app, ["predict", "--help"], env={"COLUMNS": "200"})
    assert "RUN [FILE...]" in r.output and "INTEGER" in r.output and "PATH" in r.output
    r = runner.invoke(app, ["register", "--help"], env={"COLUMNS": "200"})
    assert "RUN FIXED MOVING" in r.output
