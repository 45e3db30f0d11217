"""Command start-up latency: whole-process wall time of the CLI beside ``python -c "import torch"`` (the floor).

    python benchmarks/cli_latency.py [--repeats 5]

Builds a tiny run in a temporary folder (phantom data, seednet, 1 epoch, no evaluation), then times, each
``--repeats`` times after one untimed warm-up, as fresh processes: ``import torch``; ``meddx --help``;
``meddx predict RUN one.png`` (one 28 px PNG); ``meddx predict RUN empty.png`` (a 0-byte file: the rejection);
``meddx explain RUN one.png`` (Grad-CAM); then ``meddx export RUN`` and ``meddx predict RUN one.png`` again,
which ``--runtime auto`` serves with the exported ``model.onnx`` (ONNX Runtime, no PyTorch import). Commands run
as ``python -m meddx.cli`` with this checkout's ``src`` first on ``PYTHONPATH``. Prints min/median seconds and
the median's ratio to the floor, then one JSON line
(``predict_s``, ``predict_exported_s``, ``reject_s``, ``explain_s``, ``help_s``, ``torch_import_s``: medians).
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


def build_run(tmp: Path) -> tuple[Path, Path, Path]:
    """A 1-epoch seednet run on the phantom, one 28 px PNG and one empty ``.png``."""
    import numpy as np
    from PIL import Image

    subprocess.run(_meddx("train", "--data", "phantom", "--model", "seednet", "--epochs", "1", "--out", str(tmp),
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
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="meddx-cli-latency-") as d:
        run, one, empty = build_run(Path(d))
        cases = [
            ("torch_import_s", 'python -c "import torch"', [sys.executable, "-c", "import torch"], 0),
            ("help_s", "meddx --help", _meddx("--help"), 0),
            ("predict_s", "meddx predict RUN one.png", _meddx("predict", str(run), str(one), "--device", "cpu"), 0),
            ("reject_s", "meddx predict RUN empty.png", _meddx("predict", str(run), str(empty)), 2),
            ("explain_s", "meddx explain RUN one.png", _meddx("explain", str(run), str(one), "--device", "cpu"), 0),
        ]
        export = _meddx("export", str(run))
        cases.append(("predict_exported_s", "meddx predict RUN one.png (after meddx export: onnx)",
                      _meddx("predict", str(run), str(one)), 0))
        medians, rows = {}, []
        for key, label, cmd, rc in cases:
            if key == "predict_exported_s":
                subprocess.run(export, check=True, env=_env(), capture_output=True)
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
