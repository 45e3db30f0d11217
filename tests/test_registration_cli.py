"""`meddx register` with the classical baselines, its outputs, and its one-line errors on bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from meddx.cli import app

runner = CliRunner()


@pytest.fixture
def pair2d(tmp_path):
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    a = np.zeros((40, 48))
    a[10:25, 12:30] = 200
    a[14:20, 16:22] = 90
    a = np.clip(gaussian_filter(a, 1.5), 0, 255).astype(np.uint8)  # smooth edges: MI needs gradients
    Image.fromarray(a).save(tmp_path / "f.png")
    Image.fromarray(np.roll(a, 3, 1)).save(tmp_path / "m.png")
    Image.fromarray((np.roll(a, 3, 1) > 100).astype(np.uint8)).save(tmp_path / "ml.png")
    (tmp_path / "lm.csv").write_text("fy,fx,my,mx\n10,12,10,15\n24,29,24,32\n")
    return tmp_path


def _json(output: str) -> dict:
    return json.JSONDecoder().raw_decode(output[output.index("{"):])[0]


def test_bspline_through_register_command(pair2d):
    out = pair2d / "out"
    res = runner.invoke(app, ["register", "-", str(pair2d / "f.png"), str(pair2d / "m.png"), "--labels",
                              str(pair2d / "ml.png"), "--landmarks", str(pair2d / "lm.csv"), "--out", str(out),
                              "--method", "sitk-bspline"])
    assert res.exit_code == 0, res.output
    r = _json(res.output)
    assert r["tre_mm_before"] == pytest.approx(3.0) and r["tre_mm"] < 1.5
    assert r["folding_pct"] == 0.0
    import nibabel as nib

    field = nib.load(r["displacement"])
    assert field.shape == (48, 40, 1, 1, 2) and field.header.get_intent()[0] == "vector"
    # the moving square sits 3 columns right: the field points +3 columns (x component, mm = voxels here)
    inside = np.asarray(field.dataobj)[14:28, 12:22, 0, 0]
    assert 1.5 < np.median(inside[..., 0]) < 3.5 and abs(np.median(inside[..., 1])) < 0.5
    from PIL import Image

    warped_labels = np.asarray(Image.open(r["warped_labels"]))
    assert warped_labels[10:25, 12:30].mean() > 0.9


def test_identity_and_bad_inputs(pair2d, tmp_path):
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.random.rand(8, 9, 10).astype(np.float32), np.eye(4)), str(tmp_path / "v.nii.gz"))
    (tmp_path / "empty.csv").write_text("fy,fx,my,mx\n")
    f, m = str(pair2d / "f.png"), str(pair2d / "m.png")
    cases = [([f, str(tmp_path / "v.nii.gz")], "fixed image is 2D but moving image is 3D"),
             ([f, m, "--labels", str(tmp_path / "v.nii.gz")], "label grid"),
             ([f, m, "--landmarks", str(tmp_path / "empty.csv")], "landmark file holds no points"),
             ([f, m, "--method", "nope"], "unknown method")]
    for args, message in cases:
        res = runner.invoke(app, ["register", "-", *args, "--method", "identity", "--out", str(tmp_path)]
                            if "--method" not in args else ["register", "-", *args])
        assert res.exit_code != 0
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output
    res = runner.invoke(app, ["register", "-", f, m, "--method", "learned"])
    assert res.exit_code != 0 and "needs a trained registration run" in res.output


@pytest.mark.slow
def test_learned_through_register_and_predict(tmp_path, pair2d):
    from meddx.data.registration import load_phantom_pairs
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor

    data = load_phantom_pairs((32, 32), splits={"train": 4, "val": 2, "test": 2})
    run = fit(TrainConfig(data="phantom", task="registration", epochs=1, batch_size=2, out=str(tmp_path),
                          name="r", progress=False), data=data)
    args = ["register", str(run.path), str(pair2d / "f.png"), str(pair2d / "m.png"), "--out", str(tmp_path / "o"),
            "--landmarks", str(pair2d / "lm.csv")]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    refined = _json(res.output)
    assert refined["method"] == "learned"
    # a 1-epoch network barely moves; the instance optimisation after it finds the 3-pixel shift
    assert refined["tre_mm"] < 0.5 * refined["tre_mm_before"], refined
    alone = _json(runner.invoke(app, [*args, "--refine-steps", "0"]).output)
    assert alone["tre_mm"] > refined["tre_mm"] + 1.0, (alone, refined)
    res = runner.invoke(app, [*args, "--refine-steps", "-1"])
    assert res.exit_code != 0 and res.output.strip().startswith("error:") and "refine steps" in res.output
    out = Predictor(run.path).predict_files([pair2d / "f.png", pair2d / "m.png"], tmp_path / "p")
    assert (tmp_path / "p" / "m_ddf.nii.gz").is_file() and out[0]["warped"].endswith("m_warped.png")
