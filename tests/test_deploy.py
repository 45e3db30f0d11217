"""Compression and deployment: ONNX round trip, int8 closeness, pruning, the CLI's new runs, and clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from meddx.cli import app
from meddx.deploy import onnx_export, prune, quantize
from meddx.engine.checkpoint import load_model, save_checkpoint
from meddx.engine.config import TrainConfig
from meddx.engine.fit import fit
from meddx.models import create_model
from tests.conftest import write_fake_medmnist

runner = CliRunner()
META = {"model": "resnet18_slim", "in_channels": 1, "image_shape": [28, 28], "input_size": 28, "spatial_dims": 2,
        "normalization": {"scale": 1 / 255, "mean": [0.3], "std": [0.2]}, "task": "classification",
        "kind": "binary-class", "input_dtype": "uint8", "num_outputs": 2, "classes": ["a", "b"]}


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


# `meddx predict RUN IMG --json` in a new interpreter, then whether it imported PyTorch
FRESH_PREDICT = ("import sys\nfrom meddx.cli import app\ntry:\n    app(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
                 "print('torch imported' if 'torch' in sys.modules else 'torch not imported')")


def _predict_in_fresh_process(run, img):
    """(the JSON predict output, the finished process) of `meddx predict RUN IMG --json` in a new interpreter."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", FRESH_PREDICT, "predict", str(run), str(img), "--json"],
                          capture_output=True, text=True, timeout=120)
    return json.loads(proc.stdout[:proc.stdout.rindex("]") + 1]), proc


def _random_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics, so that folding them is really exercised."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 1.5 + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=gen) * 0.2 - 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    return write_fake_medmnist(tmp_path_factory.mktemp("data") / "fakemnist.npz", n=(64, 32, 32))


@pytest.fixture(scope="module")
def trained_run(data_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    cfg = TrainConfig(data=str(data_file), model="resnet18_slim", epochs=1, batch_size=16, out=str(out), name="src",
                      progress=False)
    return fit(cfg).path


@pytest.mark.parametrize("name", ["seednet", "resnet18_slim"])
def test_onnx_round_trip_matches_pytorch(name, tmp_path):
    model = _random_bn(create_model(name, 1, 2, 28))
    meta = META | {"model": name}
    path = onnx_export.export_onnx(model, meta, tmp_path / "m.onnx")
    x = onnx_export.example_input(meta, batch=5, seed=1)
    diff = onnx_export.verify_onnx(model, meta, path, x)
    assert diff <= 1e-4
    pred = onnx_export.OnnxPredictor(path)
    assert pred.meta["classes"] == ["a", "b"]
    probs = pred.predict(x)
    assert probs.shape == (5, 2) and np.allclose(probs.sum(1), 1, atol=1e-5)
    # the batch axis is dynamic: a different batch size gives the same per-image answers
    assert np.allclose(pred.predict(x[:2]), probs[:2], atol=1e-5)


def test_fold_batchnorm_keeps_outputs():
    model = _random_bn(create_model("resnet18_slim", 1, 2, 28))
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        ref = model(x)
        assert quantize.fold_batchnorm(model) == 20
        assert torch.allclose(model(x), ref, atol=1e-4)


def test_unstructured_pruning_reaches_sparsity():
    model = create_model("resnet18_slim", 1, 2, 28)
    prune.prune_unstructured(model, 0.7)
    prune.make_permanent(model)
    assert abs(prune.weight_sparsity(model) - 0.7) < 0.005
    assert not any(k.endswith(("_orig", "_mask")) for k in model.state_dict())


def test_structured_pruning_shrinks_and_reloads():
    model = create_model("resnet18_slim", 1, 2, 28).eval()
    n0 = sum(p.numel() for p in model.parameters())
    info = prune.prune_structured(model, "resnet18_slim", 0.5, torch.randn(2, 1, 28, 28), "fc")
    assert 0.45 < info["channels_removed"] < 0.55
    assert sum(p.numel() for p in model.parameters()) < 0.35 * n0
    rebuilt = prune.apply_pruned_shapes(create_model("resnet18_slim", 1, 2, 28), prune.pruned_shapes(model))
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model(x))


@pytest.mark.parametrize("float_ends", [True, False])
def test_int8_float_ends_keep_stem_and_classifier_in_float(float_ends, tmp_path):
    """By default the stem (with the folded preprocessing) and the classifier stay float, every other
    Conv/Gemm runs on int8 weights; ``float_ends=False`` quantizes them all. QAT mirrors the choice."""
    import onnx

    model = _random_bn(create_model("resnet18_slim", 1, 2, 28))
    fp32 = onnx_export.export_onnx(model, META, tmp_path / "m.onnx")
    gen = torch.Generator().manual_seed(0)
    calib = [(torch.rand(16, 1, 28, 28, generator=gen) * 255).to(torch.uint8).numpy() for _ in range(2)]
    q = quantize.quantize_onnx(fp32, tmp_path / "q.onnx", calib, float_ends=float_ends)
    graph = onnx.load(str(q)).graph
    dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm")]
    int8_weights = [n.input[1] in dq_out for n in layers]
    assert len(layers) > 10 and all(int8_weights[1:-1])
    assert int8_weights[0] is not float_ends and int8_weights[-1] is not float_ends
    first_conv_input_quantized = layers[0].input[0] in dq_out
    assert first_conv_input_quantized is not float_ends
    assert bool(onnx_export.read_meta(q)["quantization"]["float"]) is float_ends
    probs = onnx_export.OnnxPredictor(q).predict(torch.from_numpy(calib[0]))
    ref = onnx_export.OnnxPredictor(fp32).predict(torch.from_numpy(calib[0]))
    assert np.abs(probs - ref).max() < 0.1

    qat = create_model("resnet18_slim", 1, 2, 28)
    handles = quantize.prepare_qat(qat, float_ends=float_ends)
    parametrized = [torch.nn.utils.parametrize.is_parametrized(m, "weight") for m in qat.modules()
                    if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert all(parametrized[1:-1]) and parametrized[0] is not float_ends and parametrized[-1] is not float_ends
    assert len(handles) == sum(parametrized)


def test_export_int8_and_predict_onnx(trained_run, tmp_path):
    r = invoke("export", trained_run, "--int8", "--calibration-samples", "64")
    assert r.exit_code == 0, r.output
    res = json.loads((trained_run / "export.json").read_text())
    assert res["max_abs_diff"] <= 1e-4 and res["verified_on"] == "test images"
    assert res["int8"]["max_abs_diff_vs_fp32"] < 0.15 and res["int8"]["top1_agreement"] >= 0.9
    assert res["int8"]["file_mb"] < 0.5 * res["file_mb"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(trained_run / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # predict through ONNX Runtime and through PyTorch on the same file
    img = tmp_path / "x.npy"
    np.save(img, (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.float32))
    onnx_fp32 = invoke("predict", trained_run / "model.onnx", img, "--runtime", "onnx", "--json")
    torch_out = invoke("predict", trained_run, img, "--runtime", "torch", "--json")
    assert onnx_fp32.exit_code == 0 and torch_out.exit_code == 0, onnx_fp32.output
    p_onnx = json.loads(onnx_fp32.output)[0]["probabilities"]
    p_torch = json.loads(torch_out.output)[0]["probabilities"]
    assert all(abs(p_onnx[k] - p_torch[k]) < 1e-4 for k in p_torch)
    r = invoke("predict", trained_run, img, "--runtime", "onnx", "--json")  # run folder: its model.onnx, as named
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)[0]["probabilities"] == p_onnx
    r = invoke("predict", trained_run, img, "--runtime", "int8", "--json")  # run folder: its model_int8.onnx
    assert r.exit_code == 0, r.output
    p_int8 = json.loads(r.output)[0]["probabilities"]
    assert p_int8.keys() == p_torch.keys() and p_int8 != p_onnx  # the int8 model, not the fp32 one
    assert all(abs(p_int8[k] - p_torch[k]) < 0.15 for k in p_torch)


def test_auto_runtime_uses_the_exported_onnx_model_only_while_it_matches_the_checkpoint(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    img = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)).save(img)
    assert invoke("export", run).exit_code == 0
    # a fresh process: the ONNX path must not import PyTorch at all (that is what makes it start fast)
    out, proc = _predict_in_fresh_process(run, img)
    assert out[0]["runtime"] == "onnxruntime fp32" and out[0]["model_files"] == [str(run / "model.onnx")]
    assert proc.stdout.strip().endswith("torch not imported"), proc.stdout + proc.stderr
    p_torch = json.loads(invoke("predict", run, img, "--runtime", "torch", "--json").output)[0]["probabilities"]
    assert all(abs(out[0]["probabilities"][k] - p_torch[k]) < 1e-5 for k in p_torch)
    # the checkpoint changes after the export (retrained, fine-tuned): auto goes back to PyTorch, never stale ONNX
    ckpt = run / "last.safetensors"
    ckpt.write_bytes((run / "best.safetensors").read_bytes() if (run / "best.safetensors").is_file() else b"")
    record = json.loads((run / "export.json").read_text())
    from meddx.utils.io import file_digest

    if file_digest(ckpt) == record["checkpoint_sha256"]:  # best == last: make the bytes differ another way
        record["checkpoint_sha256"] = "0" * 64
        (run / "export.json").write_text(json.dumps(record))
    r = invoke("predict", run, img, "--json")
    assert r.exit_code == 0 and json.loads(r.output)[0]["runtime"] == "torch", r.output


def test_train_writes_model_onnx_that_predict_runs_without_pytorch(data_file, tmp_path):
    """`meddx train` ends with a verified model.onnx, so the first `meddx predict` on a new run starts without
    PyTorch (issue #13 item 7); `--no-export` leaves the run without it (predict then uses PyTorch)."""
    from PIL import Image

    common = ["--data", data_file, "--model", "seednet", "--epochs", 1, "--batch-size", 16, "--out", tmp_path,
              "--no-evaluate", "--device", "cpu"]
    r = invoke("train", *common, "--name", "with")
    assert r.exit_code == 0, r.output
    run = tmp_path / "with"
    record = json.loads((run / "export.json").read_text())
    assert (run / "model.onnx").is_file() and record["verified_on"] == "random images"
    assert record["max_abs_diff"] < 1e-4
    img = tmp_path / "x.png"
    Image.fromarray((np.arange(28 * 28).reshape(28, 28) % 256).astype(np.uint8)).save(img)
    out, proc = _predict_in_fresh_process(run, img)
    assert proc.stdout.strip().endswith("torch not imported"), proc.stdout + proc.stderr
    assert out[0]["runtime"] == "onnxruntime fp32"
    r = invoke("train", *common, "--name", "without", "--no-export")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "without" / "model.onnx").exists()
    r = invoke("predict", tmp_path / "without", img, "--json")
    assert r.exit_code == 0 and json.loads(r.output)[0]["runtime"] == "torch", r.output


@pytest.mark.parametrize("method,extra", [
    ("prune", ["--amount", "0.6", "--epochs", "1", "--max-train", "16"]),
    ("prune-structured", ["--amount", "0.5", "--epochs", "1", "--max-train", "16", "--no-distill"]),
    ("qat", ["--epochs", "1", "--max-train", "16", "--calibration-samples", "32"]),
])
def test_compress_cli_writes_new_run(trained_run, tmp_path, method, extra):
    r = invoke("compress", trained_run, "--method", method, *extra, "--out", tmp_path, "--name", "c", "--bootstrap", 0)
    assert r.exit_code == 0, r.output
    new = tmp_path / "c"
    info = json.loads((new / "compress.json").read_text())
    metrics = json.loads((new / "metrics.json").read_text())
    assert info["method"] == method and metrics["method"] == method
    assert (new / "config.json").is_file() and (new / "data.json").is_file()
    assert 0 <= metrics["acc"] <= 1 and abs(metrics["delta_acc"] - (metrics["acc"] - metrics["source_acc"])) < 1e-9
    model, meta = load_model(new / "best.safetensors")  # the compressed checkpoint loads on its own
    assert meta["compression"]["method"] == method
    if method == "prune":
        assert info["sparsity"] >= 0.6 - 0.005
        assert info["after"]["nonzero_params"] < 0.5 * info["before"]["nonzero_params"]
    if method == "prune":  # distillation by default: the source is the teacher
        assert info["distillation"]["teacher"].endswith(".safetensors") and info["distillation"]["alpha"] == 1.0
    if method == "prune-structured":
        assert "distillation" not in info  # --no-distill
    if method == "prune-structured":
        assert info["after"]["params"] < 0.35 * info["before"]["params"]
        assert info["after"]["file_mb"] < 0.4 * info["before"]["file_mb"]
        with torch.no_grad():
            assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 2)
    if method == "qat":
        assert (new / "model_int8.onnx").is_file() and metrics["runtime"] == "onnxruntime int8"
        assert info["onnx_max_abs_diff"] <= 1e-4
        # `meddx evaluate` on the int8 run scores the int8 ONNX model, as compress did
        r = invoke("evaluate", new, "--bootstrap", 0)
        assert r.exit_code == 0, r.output
        again = json.loads((new / "metrics.json").read_text())
        assert again["runtime"] == "onnxruntime int8" and again["acc"] == pytest.approx(metrics["acc"])
        # QAT distils the source with SGD and records which state it kept (the start counts: epoch -1)
        assert info["distillation"]["alpha"] == 1.0 and info["finetune"]["optimizer"] == "sgd"
        history = info["finetune"]["history"]
        assert [h["epoch"] for h in history] == [-1, 0] and sum(bool(h.get("kept")) for h in history) == 1


def test_default_fine_tune_length_counts_optimiser_steps():
    from meddx.deploy.compress import default_epochs

    # the benchmark's data sets: PneumoniaMNIST 4,708 training images -> 36 steps of 128 -> 6 epochs;
    # BreastMNIST 546 -> 4 steps -> capped at 50 epochs; a large set needs one epoch
    assert default_epochs("prune-structured", 4708, 128) == 6
    assert default_epochs("prune-structured", 546, 128) == 50
    assert default_epochs("prune-structured", 100_000, 128) == 1
    assert default_epochs("prune-structured", 10, 128) == 50  # fewer images than one batch: one step per epoch
    assert default_epochs("prune", 4708, 128) == default_epochs("qat", 4708, 128) == 1
    assert default_epochs("ptq", 4708, 128) == 0


def test_qat_keeps_its_calibrated_start_when_the_fine_tune_only_hurts(trained_run, tmp_path):
    """A learning rate that wrecks the weights: QAT must hand back its starting point (the calibrated int8
    model, i.e. what PTQ gives), not the wrecked state."""
    from meddx.deploy.compress import compress_run
    from meddx.deploy.onnx_export import OnnxPredictor

    ptq = compress_run(trained_run, "ptq", out=tmp_path, name="ptq", n_bootstrap=0)
    qat = compress_run(trained_run, "qat", out=tmp_path, name="qat", n_bootstrap=0, epochs=1, lr=1e4)
    history = json.loads((qat.path / "compress.json").read_text())["finetune"]["history"]
    assert history[0]["epoch"] == -1 and history[0].get("kept") and not history[1].get("kept")
    x = torch.from_numpy(np.load(write_fake_medmnist(tmp_path / "x.npz", n=(8, 8, 8)))["test_images"])[:, None]
    p_ptq = OnnxPredictor(ptq.path / "model_int8.onnx").predict(x)
    p_qat = OnnxPredictor(qat.path / "model_int8.onnx").predict(x)
    assert np.abs(p_qat - p_ptq).max() < 0.02


def test_a_ptq_run_predicts_and_explains_with_its_int8_model_by_default_and_says_so(trained_run, tmp_path):
    from meddx.deploy.compress import compress_run

    ptq = compress_run(trained_run, "ptq", out=tmp_path, name="ptq-default", n_bootstrap=0)
    img = tmp_path / "x.npy"
    np.save(img, (np.arange(28 * 28).reshape(28, 28) % 256).astype(np.float32))
    r = invoke("predict", ptq.path, img, "--json")
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)[0]
    assert got["runtime"] == "onnxruntime int8" and got["model_files"] == [str(ptq.path / "model_int8.onnx")]
    r = invoke("predict", ptq.path, img, "--runtime", "torch", "--json")
    assert json.loads(r.stdout)[0]["runtime"] == "torch"
    r = invoke("explain", ptq.path, img, "--method", "saliency", "--out", tmp_path / "ex")
    assert r.exit_code == 0, r.output
    assert "runtime: onnxruntime int8" in r.stdout
    assert json.loads((tmp_path / "ex" / "explanations.json").read_text())["runtime"] == "onnxruntime int8"


def test_bad_inputs_give_clear_errors(trained_run, data_file, tmp_path):
    r = invoke("compress", trained_run, "--method", "distil")
    assert r.exit_code == 2 and "unknown compression method 'distil'" in r.output
    # options are checked before anything is loaded: a missing run is not even opened
    r = invoke("compress", tmp_path / "nowhere", "--method", "prune", "--amount", "1.5")
    assert r.exit_code == 2 and "--amount must be between 0 and 1 (exclusive), got 1.5" in r.output
    r = invoke("compress", tmp_path / "nowhere", "--method", "ptq", "--calibration", "median")
    assert r.exit_code == 2 and "--calibration must be one of minmax, percentile, entropy" in r.output
    r = invoke("compress", trained_run, "--method", "ptq", "--calibration-samples", "0")
    assert r.exit_code == 2 and "needs calibration images" in r.output
    r = invoke("predict", tmp_path, tmp_path / "x.png", "--runtime", "tflite")
    assert r.exit_code == 2 and "runtime must be auto, torch, onnx, int8; got 'tflite'" in r.output
    r = invoke("export", tmp_path)
    assert r.exit_code == 2 and "not a meddx run folder" in r.output
    # an architecture structured pruning cannot handle: the run with its weights swapped for a ShuffleNetV2
    shuffle = tmp_path / "shuffle"
    shutil.copytree(trained_run, shuffle, ignore=shutil.ignore_patterns("*.onnx", "last.safetensors"))
    _, meta = load_model(shuffle / "best.safetensors")
    save_checkpoint(shuffle / "best.safetensors", create_model("shufflenet_v2", 1, 2, 28),
                    meta | {"model": "shufflenet_v2"})
    r = invoke("compress", shuffle, "--method", "prune-structured")
    assert r.exit_code == 2 and "does not support model 'shufflenet_v2'" in r.output
    (tmp_path / "x.png").write_bytes(b"not decoded: the runtime fails first")  # inputs are checked before the run
    r = invoke("predict", shuffle, tmp_path / "x.png", "--runtime", "onnx")
    assert r.exit_code == 2 and "run has no model.onnx for runtime onnx" in r.output
    # a run whose training data (the calibration set) is gone
    cfg = json.loads((shuffle / "config.json").read_text())
    cfg["data"] = str(tmp_path / "gone.npz")
    (shuffle / "config.json").write_text(json.dumps(cfg))
    r = invoke("compress", shuffle, "--method", "ptq")
    assert r.exit_code == 2 and "calibration data" in r.output and "gone.npz" in r.output
    assert r.output.startswith("error: ") and r.output.count("\n") == 1


def test_distillation_loss_and_task_delegation():
    from meddx.deploy.distill import DistillationTask, distillation_loss
    from meddx.tasks.classification import MULTI_LABEL, ClassificationTask

    torch.manual_seed(0)
    logits, other = torch.randn(8, 3), torch.randn(8, 3)
    hard = torch.tensor(1.25)
    # a student equal to its teacher pays only the (weighted) label loss; a different one pays more
    assert distillation_loss(logits, logits, hard, "multi-class", alpha=0.7).item() == pytest.approx(0.3 * 1.25)
    assert distillation_loss(logits, other, hard, "multi-class", alpha=0.7).item() > 0.3 * 1.25 + 0.01
    ml = distillation_loss(logits, other, hard, MULTI_LABEL, alpha=1.0, temperature=1.0)
    assert ml.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(
        logits, torch.sigmoid(other)).item())
    task = ClassificationTask("multi-class", 3)
    teacher = torch.nn.Linear(4, 3)
    dt = DistillationTask(task, teacher)
    assert dt.monitor == "fidelity" and dt.kind == "multi-class"  # the loss and the monitor are its own
    assert not any(p.requires_grad for p in teacher.parameters())
    student = torch.nn.Linear(4, 3)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 1, 0])
    loss = dt.training_loss(student, x, y)
    loss.backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_distillation_validates_fidelity_to_the_teacher():
    from meddx.data.augment import Normalization
    from meddx.data.dataset import Split
    from meddx.deploy.distill import DistillationTask
    from meddx.tasks.classification import ClassificationTask

    def net(seed: int) -> torch.nn.Module:
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Conv2d(1, 3, 1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    gen = torch.Generator().manual_seed(0)
    split = Split((torch.rand(40, 1, 6, 6, generator=gen) * 255).to(torch.uint8), torch.arange(40) % 3)
    norm = Normalization(scale=1 / 255, mean=[0.5], std=[0.25])
    teacher = net(0)
    dt = DistillationTask(ClassificationTask("multi-class", 3), teacher)
    kw = {"device": torch.device("cpu"), "batch_size": 16}
    same = dt.validate(net(0), split, norm, **kw)  # a student equal to the teacher
    other = dt.validate(net(1), split, norm, **kw)
    assert same["fidelity"] == pytest.approx(1.0) and other["fidelity"] < 0.99
    assert set(other) >= {"loss", "auc", "acc"}  # the task's own validation metrics stay beside it


def test_recalibrate_bn_estimates_training_statistics():
    from meddx.data.augment import Normalization, policy_for
    from meddx.deploy.compress import recalibrate_bn

    gen = torch.Generator().manual_seed(0)
    images = (torch.rand(300, 1, 8, 8, generator=gen) * 255).to(torch.uint8)
    norm = Normalization(scale=1 / 255, mean=[0.5], std=[0.25])
    bn = torch.nn.BatchNorm2d(1, momentum=0.1)
    x = norm(images)
    recalibrate_bn(bn, images, norm, batch_size=1000)  # one batch holding every image: the exact statistics
    assert not bn.training and bn.momentum == 0.1  # eval mode and the layer's momentum restored
    assert bn.running_mean.item() == pytest.approx(x.mean().item(), abs=1e-5)
    assert bn.running_var.item() == pytest.approx(x.var().item(), rel=1e-3)
    recalibrate_bn(bn, images, norm, n=50, batch_size=1000)  # a random 50-image sample: a different estimate
    assert bn.running_mean.item() != pytest.approx(x.mean().item(), abs=1e-5)
    # the training augmentation passes through (border-padded rotations smooth the images: lower variance)
    recalibrate_bn(bn, images, norm, batch_size=1000, policy=policy_for("xray"))
    assert bn.running_var.item() < 0.95 * x.var().item()


@pytest.mark.parametrize("method,model", [("prune", "unet"), ("prune-structured", "segresnet")])
def test_compress_segmentation_run(tmp_path, method, model):
    """Pruning applies to segmentation networks too; the change is measured on Dice; int8 and structured
    pruning of MONAI's UNet say clearly that they do not apply."""
    from meddx.data.segdata import load_phantom_segmentation
    from meddx.deploy.compress import compress_run
    from meddx.errors import MeddxError

    data = load_phantom_segmentation(32, seed=0, splits={"train": 16, "val": 4, "test": 6})
    cfg = TrainConfig(data="phantom", task="segmentation", model=model, size=32, epochs=1, out=str(tmp_path),
                      name="seg", progress=False)
    src = fit(cfg, data=data).path
    new = compress_run(src, method, amount=0.5, epochs=1, out=tmp_path, name="c", n_bootstrap=0, data=data)
    metrics = json.loads(new.metrics.read_text())
    info = json.loads((new.path / "compress.json").read_text())
    assert metrics["task"] == "segmentation" and metrics["method"] == method and 0.0 <= metrics["dice"] <= 1.0
    assert metrics["delta_dice"] == pytest.approx(metrics["dice"] - metrics["source_dice"])
    assert "distillation" not in info and len(info["finetune"]["history"]) == 1
    model, meta = load_model(new.best)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 2, 32, 32)  # the class maps keep their channels
    if method == "prune":
        assert info["sparsity"] >= 0.5 - 0.005
        with pytest.raises(MeddxError, match="does not support model 'unet'"):
            compress_run(src, "prune-structured", out=tmp_path, data=data)
    else:
        assert info["after"]["params"] < 0.5 * info["before"]["params"]
        with pytest.raises(MeddxError, match="task 'segmentation' is not supported"):
            compress_run(src, "ptq", out=tmp_path, data=data)
