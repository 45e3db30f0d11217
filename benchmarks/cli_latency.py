"""Command start-up latency: whole-process wall time of the CLI beside ``python -c "import torch"`` (the floor).

    python benchmarks/cli_latency.py [--repeats 5]

Builds a tiny run in a temporary folder (phantom data, the default model unless ``--model``, 1 epoch, no
evaluation; `meddx train` also writes its ``model.onnx``), then times, each ``--repeats`` times after one untimed
warm-up, as fresh processes: ``import torch``; ``meddx --help``; ``meddx predict RUN one.png`` (one 28 px PNG:
``--runtime auto`` takes the run's ``model.onnx``, ONNX Runtime without PyTorch); the same with ``--runtime
torch``; ``meddx predict RUN empty.png`` (a 0-byte file: the rejection); ``meddx explain RUN one.png`` (Grad-CAM,
PyTorch). Commands run as ``python -m meddx.cli`` with this checkout's ``src`` first on ``PYTHONPATH``. Prints
min/median seconds and the median's ratio to the floor, then one JSON line (``predict_s``, ``predict_torch_s``,
``reject_s``, ``explain_s``, ``help_s``, ``torch_import_s``: medians).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, print_json, print_table  # noqa: E402


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    return env


def _meddx(*args: str) -> list[str]:
    return [sys.executable, "-m", "meddx.cli", *args]


def build_run(tmp: Path, model: str) -> tuple[Path, Path, Path]:
    """A 1-epoch run of ``model`` on the phantom, one 28 px PNG and one empty ``.png``."""
    import numpy as np
    from PIL import Image

    subprocess.run(_meddx("train", "--data", "phantom", "--model", model, "--epochs", "1", "--out", str(tmp),
                          "--name", "run", "--no-evaluate", "--device", "cpu"),
                   check=True, env=_env(), capture_output=True)
    one, empty = tmp / "one.png", tmp / "empty.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(one)
    empty.write_bytes(b"")
    return tmp / "run", one, empty


def time_command(cmd: list[str], repeats: int, expect_rc: int) -> list[float]:
    """Wall seconds of ``repeats`` fresh runs after one warm-up; a wrong exit code is an error."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True)
        dt = time.perf_counter() - t0
        if proc.returncode != expect_rc:
            raise SystemExit(f"{' '.join(cmd)} exited {proc.returncode} (expected {expect_rc}):\n{proc.stderr}")
        if i:
            times.append(dt)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="resnet18_slim", help="network of the timed run (default: the default model)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meddx-cli-latency-") as d:
        run, one, empty = build_run(Path(d), args.model)
        cases = [
            ("torch_import_s", 'python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
            ("help_s", "meddx --help", _meddx("--help"), 0),
            ("predict_s", "meddx predict RUN one.png (auto: the run's model.onnx)",
             _meddx("predict", str(run), str(one), "--device", "cpu"), 0),
            ("predict_torch_s", "meddx predict RUN one.png --runtime torch",
             _meddx("predict", str(run), str(one), "--device", "cpu", "--runtime", "torch"), 0),
            ("reject_s", "meddx predict RUN empty.png", _meddx("predict", str(run), str(empty)), 2),
            ("explain_s", "meddx explain RUN one.png", _meddx("explain", str(run), str(one), "--device", "cpu"), 0),
        ]
        medians, rows = {}, []
        for key, label, cmd, rc in cases:
            t = time_command(cmd, args.repeats, rc)
            medians[key] = statistics.median(t)
            rows.append({"command": label, "min s": min(t), "median s": medians[key], "max s": max(t)})
    floor = medians["torch_import_s"]
    for r in rows:
        r["median / torch import"] = r["median s"] / floor
    print_table(rows, ["command", "min s", "median s", "max s", "median / torch import"],
                f"CLI wall time, {args.repeats} runs each (fresh processes), {os.cpu_count()} CPUs")
    print_json({k: round(v, 3) for k, v in medians.items()})


if __name__ == "__main__":
    main()
