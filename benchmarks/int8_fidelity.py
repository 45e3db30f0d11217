"""How close does int8 stay to its fp32 model? ORT static quantization with and without ``float_ends`` (issue #5).

For each trained classification run, quantizes its ONNX export twice with `meddx.deploy.quantize.quantize_onnx`
(every Conv/Gemm in int8; the stem with the folded preprocessing and the classifier kept in float, the
default) on the same calibration images as `meddx compress --method ptq`, and prints per split (validation and
test): the mean and largest |p - p_fp32| of the predicted class probabilities, the images whose predicted class
changed, and the change of ACC. Validation is what a choice may be made on; test is printed beside it.

    python benchmarks/int8_fidelity.py --runs /tmp/meddx-bench-compress2/full/breastmnist-resnet18 ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_json, print_table  # noqa: E402

COLUMNS = ["run", "variant", "val_dp", "val_dp_max", "val_changed", "val_d_acc", "test_dp", "test_dp_max",
           "test_changed", "test_d_acc"]


def fidelity(run: Path, seed: int, calibration_samples: int = 512) -> list[dict[str, Any]]:
    """One row per variant (all int8 / float ends) for ``run``; ``seed`` picks the calibration images."""
    import numpy as np

    from meddx.data import load_data
    from meddx.deploy import onnx_export, quantize
    from meddx.engine.checkpoint import load_model
    from meddx.engine.config import TrainConfig
    from meddx.engine.run import RunDir

    cfg = TrainConfig.load(run / "config.json")
    data = load_data(cfg.data, data_dir=cfg.data_dir, size=cfg.size, seed=cfg.seed, task=cfg.task)
    model, meta = load_model(RunDir.open(run).model_checkpoint())
    calib = quantize.calibration_batches(data.train.images, calibration_samples, seed=seed)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        fp32 = onnx_export.export_onnx(model, meta, Path(work) / "fp32.onnx")
        ref = {s: onnx_export.OnnxPredictor(fp32).predict(getattr(data, s).images) for s in ("val", "test")}
        for variant, float_ends in (("int8, all layers", False), ("int8, float ends", True)):
            q = quantize.quantize_onnx(fp32, Path(work) / "int8.onnx", calib, float_ends=float_ends)
            row: dict[str, Any] = {"run": f"{run.parent.parent.name}/{run.name}", "variant": variant}
            for split in ("val", "test"):
                p = onnx_export.OnnxPredictor(q).predict(getattr(data, split).images)
                y = getattr(data, split).labels.numpy().ravel()
                d = np.abs(p - ref[split]).max(1)
                row |= {f"{split}_dp": float(d.mean()), f"{split}_dp_max": float(d.max()),
                        f"{split}_changed": int((p.argmax(1) != ref[split].argmax(1)).sum()),
                        f"{split}_d_acc": float((p.argmax(1) == y).mean() - (ref[split].argmax(1) == y).mean())}
            rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", nargs="+", type=Path, required=True, help="trained classification run folders")
    p.add_argument("--seed", type=int, default=None,
                   help="calibration sample seed (default: each run's training seed, as the compress benchmark)")
    args = p.parse_args(argv)
    import onnxruntime
    import torch

    from meddx.engine.config import TrainConfig

    onnxruntime.set_default_logger_severity(3)
    torch.set_num_threads(2)
    rows = []
    for run in args.runs:
        seed = TrainConfig.load(run / "config.json").seed if args.seed is None else args.seed
        rows += fidelity(run, seed)
    print_table(rows, COLUMNS, "int8 vs fp32: mean / largest |p - p_fp32|, changed predictions, change of ACC")
    print_json(rows)


if __name__ == "__main__":
    main()
