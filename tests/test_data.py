"""Data loaders: MedMNIST files, folders, CSV manifests, augmentation, and their errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from meddx.data import load_data
from meddx.data.augment import POLICIES, Normalization, random_affine
from meddx.data.dataset import stratified_split
from meddx.data.medmnist import file_name, find_medmnist, load_medmnist, medmnist_info, verify_md5
from meddx.errors import MeddxError

from .conftest import write_fake_medmnist


def test_info_covers_all_medmnist_sets_and_sizes():
    info = medmnist_info()
    two_d = [k for k, v in info.items() if v["spatial_dims"] == 2]
    assert len(two_d) == 12 and len(info) == 18
    assert info["chestmnist"]["task"] == "multi-label, binary-class"
    assert info["retinamnist"]["task"] == "ordinal-regression"
    assert set(info["pneumoniamnist"]["files"]) == {"28", "64", "128", "224"}
    assert (
        file_name("breastmnist", 64) == "breastmnist_64.npz"
        and file_name("breastmnist", 28) == "breastmnist.npz"
    )


def test_load_known_name_by_path(tmp_path):
    p = write_fake_medmnist(tmp_path / "breastmnist.npz")
    b = load_medmnist(p)
    assert b.task == "binary-class" and b.class_names == ["malignant", "normal, benign"]
    assert b.train.images.shape == (60, 1, 28, 28) and b.train.images.dtype == torch.uint8
    assert b.train.labels.shape == (60,) and b.modality == "ultrasound"


def test_unknown_multilabel_and_rgb_inferred(tmp_path):
    p = write_fake_medmnist(tmp_path / "mystuff.npz", channels=3, multilabel=4)
    b = load_medmnist(p)
    assert b.task == "multi-label, binary-class" and b.num_classes == 4
    assert b.train.images.shape[1] == 3 and b.train.labels.dtype == torch.float32


def test_find_by_name_in_data_dir_offline(tmp_path):
    write_fake_medmnist(tmp_path / "breastmnist_64.npz", size=64)
    assert find_medmnist("breastmnist", 64, tmp_path, download=False).name == "breastmnist_64.npz"
    with pytest.raises(MeddxError, match=r"pneumoniamnist\.npz not found; put it in"):
        find_medmnist("pneumoniamnist", 28, tmp_path, download=False)
    with pytest.raises(MeddxError, match="unknown MedMNIST data set"):
        find_medmnist("nosuchmnist", 28, tmp_path)
    with pytest.raises(MeddxError, match="has no size 32"):
        find_medmnist("breastmnist", 32, tmp_path)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import urllib.request

    def boom(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", boom)
    with pytest.raises(MeddxError) as e:
        find_medmnist("breastmnist", 28, tmp_path, download=True)
    assert "could not download breastmnist.npz" in str(e.value) and "\n" not in str(e.value)
    assert not list(tmp_path.glob("*.part"))


def test_checksum_mismatch_removes_file(tmp_path):
    p = tmp_path / "x.npz"
    p.write_bytes(b"not the real thing")
    with pytest.raises(MeddxError, match="checksum mismatch"):
        verify_md5(p, "0" * 32)
    assert not p.exists()


@pytest.mark.parametrize("content,msg", [(b"garbage", "not a readable .npz"), (None, "missing arrays")])
def test_bad_npz(tmp_path, content, msg):
    p = tmp_path / "bad.npz"
    if content is None:
        np.savez(p, train_images=np.zeros((2, 28, 28), np.uint8))
    else:
        p.write_bytes(content)
    with pytest.raises(MeddxError, match=msg) as e:
        load_medmnist(p)
    assert str(p) in str(e.value)


def test_label_out_of_range_named(tmp_path):
    p = write_fake_medmnist(tmp_path / "breastmnist.npz")
    arr = dict(np.load(p))
    arr["test_labels"][3] = 7
    np.savez(p, **arr)
    with pytest.raises(MeddxError, match=r"label 7 out of range for 2 classes") as e:
        load_medmnist(p)
    assert "[test]" in str(e.value)


def _write_folder(root: Path, n: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("benign", "malignant"):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 255, (40, 30), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")
    return root


def test_image_folder_split_is_stratified_and_deterministic(tmp_path):
    root = _write_folder(tmp_path / "imgs")
    a, b = load_data(str(root), size=28), load_data(str(root), size=28)
    assert a.class_names == ["benign", "malignant"] and a.train.images.shape[1:] == (1, 28, 28)
    assert len(a.train) + len(a.val) + len(a.test) == 24
    assert a.test.ids == b.test.ids
    assert set(a.test.labels.tolist()) == {0, 1}


def test_csv_manifest_with_split_and_errors(tmp_path):
    root = _write_folder(tmp_path / "imgs", n=4)
    rows = ["path,label,split"]
    for i, p in enumerate(sorted(root.rglob("*.png"))):
        rows.append(f"{p.relative_to(tmp_path)},{p.parent.name},{['train', 'train', 'val', 'test'][i % 4]}")
    csv = tmp_path / "m.csv"
    csv.write_text("\n".join(rows) + "\n")
    b = load_data(str(csv))
    assert len(b.train) == 4 and len(b.val) == 2 and len(b.test) == 2
    (root / "benign" / "0.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(MeddxError, match=r"0\.png: not a readable image"):
        load_data(str(csv))
    (tmp_path / "bad.csv").write_text("file,y\na.png,1\n")
    with pytest.raises(MeddxError, match="path,label"):
        load_data(str(tmp_path / "bad.csv"))


def test_missing_data_spec():
    with pytest.raises(MeddxError, match="no such data"):
        load_data("/nonexistent/thing")


def test_stratified_split_keeps_ratio():
    y = np.array([0] * 80 + [1] * 20)
    tr, va, te = stratified_split(y, seed=1)
    assert len(tr) == 70 and len(va) == 10 and len(te) == 20
    assert y[te].sum() == 4 and not set(tr) & set(te)


def test_normalization_and_affine():
    x = torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8)
    norm = Normalization.fit(x)
    z = norm(x)
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-2
    g = torch.Generator().manual_seed(0)
    out = random_affine(z, POLICIES["pathology"], g)
    assert out.shape == z.shape and not torch.equal(out, z)
    assert torch.equal(random_affine(z, POLICIES["none"]), z)
    vol = torch.randn(2, 1, 8, 8, 8)
    assert random_affine(vol, POLICIES["ct"], g).shape == vol.shape


def test_download_from_local_url_verifies_checksum(tmp_path, monkeypatch):
    """The real download path, fed from a local file:// URL (no network here)."""
    import copy

    from meddx.data import medmnist as mm

    src = write_fake_medmnist(tmp_path / "src.npz")
    info = copy.deepcopy(mm.medmnist_info())
    info["breastmnist"]["files"]["28"] = {"url": src.resolve().as_uri(), "md5": mm.md5sum(src)}
    monkeypatch.setattr(mm, "medmnist_info", lambda: info)
    dest = tmp_path / "cache"
    got = find_medmnist("breastmnist", 28, dest, download=True)
    assert got == dest / "breastmnist.npz" and mm.md5sum(got) == mm.md5sum(src)
    info["breastmnist"]["files"]["64"] = {"url": src.resolve().as_uri(), "md5": "0" * 32}
    with pytest.raises(MeddxError, match="checksum mismatch"):
        find_medmnist("breastmnist", 64, dest, download=True)
    assert not (dest / "breastmnist_64.npz").exists()
