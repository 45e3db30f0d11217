"""The one reader (meddx.data.images / dicom / arrays) and the input contract, on real files."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meddx.data import intensity
from meddx.data.contract import Expected, conform, load_input
from meddx.data.images import read_pixels
from meddx.errors import MeddxError

from .conftest import shared_path
from .fuzz_corpus import png_with_header, reference_image
from .test_reader_fuzz import tiny_run  # noqa: F401  (session fixture)

pydicom = pytest.importorskip("pydicom")


def dicom_file(name: str) -> Path:
    """A file from pydicom's own test files or from pydicom-data, found on disk (never downloaded)."""
    roots = [Path(pydicom.__file__).parent / "data" / "test_files"]
    spec = importlib.util.find_spec("data_store")  # the pydicom-data package
    if spec and spec.submodule_search_locations:
        roots.append(Path(list(spec.submodule_search_locations)[0]) / "data")
    for root in roots:
        if (root / name).is_file():
            return root / name
    pytest.skip(f"{name} not installed (pip install pydicom-data)")


def _pydicom_window(name: str) -> tuple[np.ndarray, object]:
    from pydicom.pixels import apply_modality_lut

    ds = pydicom.dcmread(dicom_file(name))
    return apply_modality_lut(ds.pixel_array, ds), ds


def test_16bit_png_and_tiff_keep_their_depth(tmp_path):
    ref = reference_image()
    Image.fromarray(ref).save(tmp_path / "a8.png")
    for name in ("a16.png", "a16.tif"):
        Image.fromarray(ref.astype(np.uint16) * 257).save(tmp_path / name)
        px = read_pixels(tmp_path / name)
        assert px.mapping == intensity.scale(0, 65535, "16-bit")
        np.testing.assert_array_equal(px.array[0], ref)  # was all 255 before
    assert read_pixels(tmp_path / "a8.png").mapping["source"] == "8-bit"


def test_16bit_prediction_equals_8bit(tiny_run, tmp_path):  # noqa: F811
    from meddx.engine.predict import Predictor

    ref = reference_image(seed=7)
    Image.fromarray(ref).save(tmp_path / "a8.png")
    Image.fromarray(ref.astype(np.uint16) * 257).save(tmp_path / "a16.png")
    res = Predictor(tiny_run, device="cpu").predict_files([tmp_path / "a8.png", tmp_path / "a16.png"])
    assert res[0]["probabilities"] == res[1]["probabilities"]


def test_folder_of_16bit_pngs_is_not_blank(tmp_path):
    from meddx.data.folder import load_image_folder

    for depth, scale in ((8, 1), (16, 257)):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / str(depth) / cls).mkdir(parents=True)
            for i in range(10):
                img = reference_image(seed=10 * k + i).astype(np.uint16 if depth == 16 else np.uint8) * scale
                Image.fromarray(img).save(tmp_path / str(depth) / cls / f"{i}.png")
    b8, b16 = load_image_folder(tmp_path / "8"), load_image_folder(tmp_path / "16")
    assert b16.train.images.float().std() > 10
    assert b16.train.images.equal(b8.train.images) and b16.extra["intensity_mapping"]["high"] == 65535


def test_dicom_ct_mr_mapping():
    ct = read_pixels(dicom_file("CT_small.dcm"))  # no window: stored 16-bit signed range through rescale
    values, ds = _pydicom_window("CT_small.dcm")
    lo, hi = -32768 * float(ds.RescaleSlope) + float(ds.RescaleIntercept), 32767 + float(ds.RescaleIntercept)
    assert ct.mapping == intensity.scale(lo, hi, "dicom") and ct.array.shape == (1, 128, 128)
    np.testing.assert_array_equal(ct.array[0], intensity.apply(values, ct.mapping))
    mr = read_pixels(dicom_file("MR_small.dcm"))
    assert mr.mapping["kind"] == "window" and mr.array.dtype == np.uint8 and mr.array.std() > 10
    for compressed in ("MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"):
        np.testing.assert_array_equal(read_pixels(dicom_file(compressed)).array, mr.array)


def test_dicom_luts_and_monochrome1():
    from pydicom.pixels import apply_voi_lut

    mlut = read_pixels(dicom_file("mlut_18.dcm"))  # Modality LUT Sequence, no window
    values, ds = _pydicom_window("mlut_18.dcm")
    assert mlut.mapping["kind"] == "scale" and mlut.mapping["high"] <= 65535
    np.testing.assert_array_equal(mlut.array[0], intensity.apply(values, mlut.mapping))
    vlut = read_pixels(dicom_file("vlut_04.dcm"))  # VOI LUT Sequence
    values, ds = _pydicom_window("vlut_04.dcm")
    assert vlut.mapping == {"kind": "voi_lut", "bits": 16, "source": "dicom"}
    expected = intensity.apply(apply_voi_lut(values, ds), intensity.scale(0, 65535, "dicom"))
    np.testing.assert_array_equal(vlut.array[0], expected)
    mono1 = read_pixels(dicom_file("RG3_UNCR.dcm"))  # MONOCHROME1 CR with a window
    values, ds = _pydicom_window("RG3_UNCR.dcm")
    np.testing.assert_array_equal(mono1.array[0], 255 - intensity.apply(values, mono1.mapping))
    assert mono1.notes and mono1.mapping["kind"] == "window"


def test_dicom_colour_and_frames():
    rgb = read_pixels(dicom_file("SC_rgb.dcm"))
    ybr = read_pixels(dicom_file("SC_ybr_full_uncompressed.dcm"))
    assert rgb.array.shape == ybr.array.shape == (3, 100, 100)
    assert np.abs(rgb.array.astype(int) - ybr.array).max() <= 8  # YBR converted to RGB (rounding only)
    assert read_pixels(dicom_file("SC_rgb_jpeg.dcm")).array.shape == (3, 256, 256)
    assert read_pixels(dicom_file("SC_rgb_16bit.dcm")).array.dtype == np.uint8
    assert read_pixels(dicom_file("examples_palette.dcm")).array.shape[0] == 3
    frames = read_pixels(dicom_file("emri_small.dcm"))
    assert frames.array.shape == (1, 10, 64, 64)
    with pytest.raises(MeddxError, match="10 frames"):
        conform(frames, Expected(1, (28, 28)))


def test_dicom_without_decoder_names_transfer_syntax(tmp_path):
    ds = pydicom.dcmread(dicom_file("JPEG2000.dcm"))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.92"  # JPEG 2000 Part 2: no decoder in pydicom
    ds.save_as(tmp_path / "p2.dcm")
    with pytest.raises(MeddxError, match=r"transfer syntax JPEG 2000 Part 2.*1\.2\.840\.10008\.1\.2\.4\.92"):
        read_pixels(tmp_path / "p2.dcm")


def test_dicom_bad_value_representation_is_one_error_without_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom warns of Rows '1A' on access: the user gets only our line
        with pytest.raises(MeddxError, match=r"header is incomplete \(invalid literal.*'1A'\)"):
            read_pixels(dicom_file("badVR.dcm"))


def test_dicom_class_folders_train_like_png(tmp_path):
    from meddx.data.folder import load_image_folder

    series = shared_path("totalsegmentator_examples", "example_ct_dicom")
    files = sorted(series.iterdir())  # extension-less CT.1.3.12... files
    for k, cls in enumerate(("upper", "lower")):
        (tmp_path / cls).mkdir()
        for f in files[k * 10:(k + 1) * 10]:
            shutil.copy(f, tmp_path / cls / f.name)
    bundle = load_image_folder(tmp_path, image_size=32)
    assert bundle.train.images.dtype.is_floating_point is False and bundle.train.images.shape[1:] == (1, 32, 32)
    assert bundle.extra["intensity_mapping"]["kind"] in ("window", "per-file")
    assert bundle.train.images.float().std() > 5


def test_directory_errors_and_series_volume(tmp_path):
    from meddx.data.volumes import is_volume_path, read_volume_pixels

    series = shared_path("totalsegmentator_examples", "example_ct_dicom")
    with pytest.raises(MeddxError, match="is a directory"):
        read_pixels(series)
    assert is_volume_path(series)
    vol = read_volume_pixels(series)
    assert vol.array.ndim == 4 and vol.array.shape[:2] == (1, 20)


def test_caps_and_npy_errors(tmp_path, monkeypatch):
    (tmp_path / "big.png").write_bytes(png_with_header(15000, 15000))
    with pytest.raises(MeddxError, match="exceeds the pixel limit") as exc:
        read_pixels(tmp_path / "big.png")
    assert "Traceback" not in str(exc.value)
    Image.fromarray(reference_image()).save(tmp_path / "small.png")
    monkeypatch.setenv("MEDDX_MAX_PIXELS", "100")
    with pytest.raises(MeddxError, match="100-pixel limit"):
        read_pixels(tmp_path / "small.png")
    monkeypatch.delenv("MEDDX_MAX_PIXELS")
    (tmp_path / "text.npy").write_text("hello world\n")
    with pytest.raises(MeddxError) as exc:
        read_pixels(tmp_path / "text.npy")
    assert "pickle" not in str(exc.value) and "not a .npy array" in str(exc.value)


def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.png"
    Image.fromarray(reference_image()).save(p)
    p.chmod(0)
    if os.access(p, os.R_OK):
        pytest.skip("running as root: chmod 000 does not make a file unreadable")
    with pytest.raises(MeddxError, match="permission denied"):
        read_pixels(p)


def test_notices_once_each(tiny_run, tmp_path, capsys):  # noqa: F811
    from meddx.engine.predict import Predictor

    for i in range(3):
        Image.fromarray(np.stack([reference_image(seed=i)] * 3, -1)).resize((200, 200)).save(tmp_path / f"{i}.png")
    Predictor(tiny_run, device="cpu").predict_files(sorted(tmp_path.glob("*.png")))
    err = capsys.readouterr().err.splitlines()
    assert sum("resized 200x200" in line for line in err) == 1
    assert sum("greyscale" in line for line in err) == 1 and all(line.startswith("notice: ") for line in err)


def test_recorded_mapping_is_replayed(tmp_path):
    win = intensity.window(100, 200)
    px = read_pixels(dicom_file("MR_small.dcm"), mapping=win)
    values, _ = _pydicom_window("MR_small.dcm")
    assert px.mapping == win
    np.testing.assert_array_equal(px.array[0], intensity.apply(values, win))
    meta = {"in_channels": 1, "image_shape": [64, 64], "input_dtype": "uint8", "intensity_mapping": win}
    assert load_input(dicom_file("MR_small.dcm"), meta).equal(__import__("torch").from_numpy(px.array))
