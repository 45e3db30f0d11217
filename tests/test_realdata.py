"""Real MedMNIST data from ../shared/datasets (skips without it; fails under MEDDX_REQUIRE_SHARED=1)."""

from __future__ import annotations

import json

import pytest

from meddx.data import load_data
from meddx.data.medmnist import md5sum, medmnist_info

from .conftest import shared_path


def test_breastmnist_file_is_official_and_loads():
    path = shared_path("breastmnist", "breastmnist.npz")
    assert md5sum(path) == medmnist_info()["breastmnist"]["files"]["28"]["md5"]
    b = load_data(str(path))
    assert (len(b.train), len(b.val), len(b.test)) == (546, 78, 156)
    assert b.task == "binary-class" and b.in_channels == 1 and b.image_size == (28, 28)
    # by name from a data folder, as `--data breastmnist --data-dir ...` does
    assert len(load_data("breastmnist", data_dir=str(path.parent), download=False).test) == 156


@pytest.mark.slow
def test_breastmnist_short_training_learns(tmp_path):
    """Twelve epochs of the default model: clearly better than chance on the official test split."""
    from typer.testing import CliRunner

    from meddx.cli import app

    path = shared_path("breastmnist", "breastmnist.npz")
    r = CliRunner().invoke(app, ["train", "--data", str(path), "--epochs", "12", "--out", str(tmp_path),
                                 "--name", "b"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert m["n"] == 156 and m["auc"] > 0.8  # (majority-class ACC is 0.73, so ACC alone proves little)
    assert m["auc_ci"][0] < m["auc"] < m["auc_ci"][1]
