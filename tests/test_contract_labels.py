"""The label contract of classification data, whatever the file is called: integer (or 0/1 multi-label) labels,
class ids 0..K-1 without gaps, every class in training, declared or recognised class names, recorded in data.json."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddx.data import load_data
from meddx.data.medmnist import load_medmnist
from meddx.errors import MeddxError
from tests.conftest import shared_path, write_fake_medmnist


def _edit(path: Path, **changes) -> Path:
    arrays = dict(np.load(path))
    for key, fn in changes.items():
        arrays[key] = fn(arrays[key]) if callable(fn) else fn
    np.savez(path, **arrays)
    return path


def _set(index: int, value):
    def fn(a):
        a = a.astype(np.asarray(value).dtype) if isinstance(value, float) else a.copy()
        a[index] = value
        return a
    return fn


def test_gap_in_custom_labels_is_refused_with_values_and_how_to_declare(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "custom.npz"), train_labels=_set(5, 7))
    with pytest.raises(MeddxError) as e:
        load_medmnist(p)
    msg = str(e.value)
    assert "found 0, 1, 7" in msg and "absent: 2, 3, 4, 5, 6" in msg and "classes.json" in msg
    assert str(p) in msg and "\n" not in msg


def test_non_integer_labels_refused(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "custom.npz"), val_labels=_set(2, 0.5))
    with pytest.raises(MeddxError, match=r"whole-number class ids, found 0\.5") as e:
        load_medmnist(p)
    assert "[val]" in str(e.value)


def test_label_only_in_test_is_refused(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "custom.npz", classes=3),
              train_labels=lambda y: np.where(y == 2, 0, y))
    with pytest.raises(MeddxError, match=r"class\(es\) 2 \('2'\) never occur in the training split but occur "
                                         r"in val and test"):
        load_medmnist(p)


def test_known_set_with_a_class_missing_from_training(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "breastmnist.npz"), train_labels=lambda y: np.zeros_like(y))
    with pytest.raises(MeddxError, match=r"class\(es\) 1 \('normal, benign'\) never occur in the training split but "
                                         r"occur in val and test"):
        load_medmnist(p)


def test_multilabel_column_without_positive_in_training(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "ml.npz", multilabel=3), train_labels=lambda y: y * [1, 1, 0])
    with pytest.raises(MeddxError, match=r"label column\(s\) 2 \('2'\) never occur"):
        load_medmnist(p)


def test_classes_declared_inside_npz(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "custom.npz", classes=3), classes=np.array(["a", "b", "c"]))
    b = load_medmnist(p)
    assert b.class_names == ["a", "b", "c"] and b.task == "multi-class"
    s = b.summary()
    assert s["num_classes"] == 3 and s["class_names_from"] == "npz" and s["label_kind"] == "class id per image"


def test_classes_declared_in_sidecar_and_checked(tmp_path):
    p = write_fake_medmnist(tmp_path / "custom.npz")
    side = tmp_path / "custom.npz.classes.json"
    side.write_text(json.dumps(["healthy", "sick"]))
    b = load_medmnist(p)
    assert b.class_names == ["healthy", "sick"] and b.summary()["class_names_from"] == "sidecar"
    side.write_text(json.dumps(["healthy", "sick", "other"]))  # declares a class that training lacks
    with pytest.raises(MeddxError, match=r"2 \('other'\) never occur in the training split"):
        load_medmnist(p)
    side.write_text(json.dumps(["healthy"]))
    with pytest.raises(MeddxError, match="at least 2 distinct"):
        load_medmnist(p)


def test_label_beyond_declared_classes_refused(tmp_path):
    p = _edit(write_fake_medmnist(tmp_path / "custom.npz"), test_labels=_set(3, 2), classes=np.array(["a", "b"]))
    with pytest.raises(MeddxError, match=r"label 2 out of range for 2 classes") as e:
        load_medmnist(p)
    assert "[test]" in str(e.value)


def test_unrecognised_file_says_names_are_generic_in_one_line(tmp_path, capsys):
    b = load_medmnist(write_fake_medmnist(tmp_path / "custom.npz"))
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("notice:")]
    assert b.class_names == ["0", "1"] and b.class_source == "generic"
    assert len(err) == 1 and "class names are generic" in err[0]


def test_renamed_medmnist_file_keeps_names_and_modality(tmp_path, capsys):
    src = shared_path("breastmnist", "breastmnist.npz")
    renamed = tmp_path / "my_scans.npz"
    shutil.copyfile(src, renamed)
    b = load_medmnist(renamed)
    assert b.name == "breastmnist" and b.class_names == ["malignant", "normal, benign"]
    assert b.modality == "ultrasound" and b.summary()["class_names_from"] == "medmnist"
    assert "recognised by content as MedMNIST breastmnist (its MD5 is the official file's)" in capsys.readouterr().err


def test_renamed_3d_medmnist_recognised(tmp_path):
    src = shared_path("adrenalmnist3d", "adrenalmnist3d.npz")
    renamed = tmp_path / "volumes.npz"
    shutil.copyfile(src, renamed)
    b = load_medmnist(renamed)
    assert b.name == "adrenalmnist3d" and b.spatial_dims == 3 and b.modality != "generic"


def _images(root: Path, labels: list[str]) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, lbl in enumerate(labels):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / f"{i}.png")
        rows.append(f"imgs/{i}.png,{lbl},{['train', 'train', 'val', 'test'][i % 4]}")
    return rows


def test_csv_integer_labels_with_gap_refused(tmp_path):
    rows = _images(tmp_path / "imgs", ["0", "1"] * 6 + ["7"] * 4)
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    with pytest.raises(MeddxError, match=r"found 0, 1, 7 \(absent: 2, 3, 4, 5, 6\)"):
        load_data(str(tmp_path / "m.csv"))


def test_csv_integer_labels_named_by_sidecar(tmp_path):
    rows = _images(tmp_path / "imgs", ["0", "1"] * 8)
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    (tmp_path / "m.csv.classes.json").write_text('["benign", "malignant"]')
    b = load_data(str(tmp_path / "m.csv"))
    assert b.class_names == ["benign", "malignant"] and b.summary()["class_names_from"] == "sidecar"


def test_folder_with_an_empty_class_refused(tmp_path):
    root = tmp_path / "data"
    for cls in ("a", "b"):
        _images(root / cls, ["x"] * 6)
    (root / "c").mkdir()
    with pytest.raises(MeddxError, match=r"class folder\(s\) c hold no images"):
        load_data(str(root))


def test_cli_train_refuses_gap_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from meddx.cli import app

    p = _edit(write_fake_medmnist(tmp_path / "custom.npz"), test_labels=_set(0, 7))
    r = CliRunner().invoke(app, ["train", "--data", str(p), "--out", str(tmp_path / "runs"), "--epochs", "1"])
    lines = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert r.exit_code == 2 and len(lines) == 1 and "found 0, 1, 7" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_data_json_records_the_class_contract(tmp_path):
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    p = _edit(write_fake_medmnist(tmp_path / "custom.npz", n=(30, 10, 10), classes=3),
              classes=np.array(["x", "y", "z"]))
    run = fit(TrainConfig(data=str(p), model="seednet", epochs=1, batch_size=16, out=str(tmp_path), name="r",
                          device="cpu"))
    data = json.loads((run.path / "data.json").read_text())
    assert data["classes"] == ["x", "y", "z"] and data["num_classes"] == 3
    assert data["label_kind"] == "class id per image" and data["class_names_from"] == "npz"
