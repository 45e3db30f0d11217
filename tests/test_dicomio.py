"""DICOM out: de-identification (PS3.15 E.1 basic profile), TID 1500 SR, SEG and SC written by meddx, read back.

Inputs are real: pydicom's CT_small.dcm and the 20-slice TotalSegmentator CT series, with PHI planted (name,
ID, birth date, accession, institution, referring physician, every UID). The outputs are read back with
highdicom and pydicom (references, geometry, values) and checked by dciodvfy (dicom3tools) with 0 errors.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import require_module, shared_path
from .dicom_phi import PHI, phi_hits, planted_ct, planted_series

require_module("highdicom")
require_module("dicognito")


@pytest.fixture(scope="session")
def cls_run(tmp_path_factory) -> Path:
    """A 1-epoch seednet on 96 slices of the 28 px CT phantom (nodule / no nodule)."""
    from meddx.data.sources import load_phantom
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    out = tmp_path_factory.getbasetemp() / "dicom_runs"
    if not (out / "cls" / "last.safetensors").is_file():
        data = load_phantom(28, splits={"train": 64, "val": 16, "test": 16})
        fit(TrainConfig(data="phantom", model="seednet", epochs=1, size=28, out=str(out), name="cls",
                        progress=False, device="cpu"), data=data)
    return out / "cls"


@pytest.fixture(scope="session")
def seg3d_run(tmp_path_factory) -> Path:
    """A 1-epoch 3D SegResNet on tiny phantom volumes (nodule masks)."""
    from meddx.data.segdata import load_phantom3d
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    out = tmp_path_factory.getbasetemp() / "dicom_runs"
    if not (out / "seg3d" / "last.safetensors").is_file():
        fit(TrainConfig(data="phantom3d", task="segmentation", model="segresnet", batch_size=4, size=32, epochs=1,
                        out=str(out), name="seg3d", progress=False, device="cpu"),
            data=load_phantom3d(16, seed=0, splits={"train": 2, "val": 1, "test": 2}))
    return out / "seg3d"


@pytest.fixture
def ct_series(tmp_path) -> tuple[Path, list[str]]:
    return planted_series(tmp_path / "in" / "series", shared_path("totalsegmentator_examples", "example_ct_dicom"))


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for a file (skip when dicom3tools is absent, fail when MEDDX_REQUIRE_SHARED=1)."""
    exe = shutil.which("dciodvfy")
    if exe is None:
        if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
            pytest.fail("dciodvfy (Debian dicom3tools) is not installed; MEDDX_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip("dciodvfy (Debian dicom3tools) is not installed")
    out = subprocess.run([exe, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


# ---------------------------------------------------------------- de-identification


def test_deidentify_removes_planted_phi_and_keeps_references_within_the_study(ct_series):
    import pydicom

    from meddx.dicomio.deid import REMOVE, Deidentifier, read_deidentified

    folder, planted = ct_series
    files = sorted(folder.iterdir())
    one = read_deidentified(files, Deidentifier())
    assert len({ds.StudyInstanceUID for ds in one}) == 1 and len({ds.SeriesInstanceUID for ds in one}) == 1
    assert len({ds.SOPInstanceUID for ds in one}) == len(files) and len({ds.FrameOfReferenceUID for ds in one}) == 1
    original = pydicom.dcmread(str(files[0]), stop_before_pixels=True)
    assert one[0].StudyInstanceUID != original.StudyInstanceUID
    for ds in one:
        assert ds.PatientIdentityRemoved == "YES" and ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
        assert not [k for k in REMOVE if k in ds and k != "StudyDescription"]
        text = "\n".join(str(e.value) for e in ds.iterall() if e.VR not in ("OB", "OW", "UN"))
        assert not [v for v in planted if v in text], "planted PHI survived de-identification"
        assert "Petersgraben" not in text  # the series' own institution address
        assert not any(e.tag.is_private for e in ds)
    # keyed: the same key gives the same UIDs (idempotent re-runs); no key: random, one-way
    a, b = (read_deidentified(files[:2], Deidentifier("k1")) for _ in range(2))
    assert [d.SOPInstanceUID for d in a] == [d.SOPInstanceUID for d in b]
    assert read_deidentified(files[:1], Deidentifier())[0].SOPInstanceUID != one[0].SOPInstanceUID
    print(f"planted {len(planted)} PHI values in {len(files)} instances; 0 found after de-identification")
    one[0].save_as(str(folder.parent / "deid.dcm"), enforce_file_format=True)  # no new dciodvfy errors
    assert set(dciodvfy_errors(folder.parent / "deid.dcm")) <= set(dciodvfy_errors(files[0]))


def test_table_covers_what_dicognito_leaves(ct_series):
    """The elements of E.1-1 our table handles are still left by dicognito (else the table is dead code) ...
    and a burned-in-annotation image is refused."""
    import pydicom
    from dicognito.anonymizer import Anonymizer

    from meddx.dicomio.deid import Deidentifier
    from meddx.errors import MeddxError

    folder, _ = ct_series
    ds = pydicom.dcmread(str(sorted(folder.iterdir())[0]))
    Anonymizer(seed="x").anonymize(ds)
    assert ds.SeriesDescription == "CT Body 3.0" and ds.ProtocolName == "FDG_TK_KM"  # dicognito keeps them
    ds.BurnedInAnnotation = "YES"
    with pytest.raises(MeddxError, match="burned-in"):
        Deidentifier()(ds)


# ---------------------------------------------------------------- SR + SC (classification)


def test_classification_sr_and_sc_read_back(cls_run, tmp_path):
    import highdicom as hd
    import pydicom

    from meddx.engine.predict import Predictor
    from meddx.pacs.results import dicom_results, producer_for, write_outputs

    path, _ = planted_ct(tmp_path / "in" / "ct.dcm")
    predictor = Predictor(cls_run, device="cpu")
    res = dicom_results(predictor, [path])
    files = write_outputs(res.outputs, tmp_path / "out")
    (src,) = res.sources
    by_modality = {pydicom.dcmread(str(f)).Modality: f for f in files}
    assert sorted(by_modality) == ["OT", "SR"]
    sr = pydicom.dcmread(str(by_modality["SR"]))
    assert sr.SOPClassUID == hd.sr.ComprehensiveSR.from_dataset(sr).SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.PatientID == src.PatientID
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev.StudyInstanceUID == src.StudyInstanceUID
    assert ev.ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    from meddx.dicomio.sr import read_findings

    (finding,) = read_findings(sr)
    (result,) = res.results
    producer = producer_for(predictor)
    assert finding["finding"] == result["label"]
    assert finding["probability"] == pytest.approx(result["probabilities"][result["label"]], abs=1e-6)
    assert finding["algorithm"] == (producer.name, producer.version) and "sha256:" in producer.version
    assert finding["sources"] == [src.SOPInstanceUID]
    sc = hd.Image.from_dataset(pydicom.dcmread(str(by_modality["OT"])))
    assert (sc.Rows, sc.Columns, sc.SamplesPerPixel) == (src.Rows, src.Columns, 3)
    assert [float(v) for v in sc.PixelSpacing] == [float(v) for v in src.PixelSpacing]
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.PatientID == src.PatientID
    rgb = sc.pixel_array
    assert rgb.shape == (src.Rows, src.Columns, 3) and rgb.std() > 1  # an image, not a blank
    for f in files:
        assert dciodvfy_errors(f) == [], f.name
    # the same key: the same output UIDs (a re-run stores nothing new)
    again = dicom_results(predictor, [path], key="k"), dicom_results(predictor, [path], key="k")
    assert [d.SOPInstanceUID for d in again[0].outputs] == [d.SOPInstanceUID for d in again[1].outputs]


def test_exported_run_scores_with_onnx_and_still_writes_the_heat_map_sc(cls_run, tmp_path):
    """``--runtime auto`` scores an exported run with ONNX Runtime; Grad-CAM then comes from its PyTorch model."""
    import pydicom

    from meddx.deploy.compress import export_run
    from meddx.engine.predict import Predictor
    from meddx.pacs.results import dicom_results

    run = tmp_path / "exported"
    shutil.copytree(cls_run, run)
    export_run(run)
    path, _ = planted_ct(tmp_path / "in" / "ct.dcm")
    predictor = Predictor(run, device="cpu", runtime="auto")
    assert predictor.runtime.name == "onnx"
    res = dicom_results(predictor, [path])
    assert sorted(d.Modality for d in res.outputs) == ["OT", "SR"] and res.notes == []
    assert all(isinstance(d, pydicom.Dataset) for d in res.outputs)


# ---------------------------------------------------------------- SEG (3D segmentation)


def test_labels_on_sources_follow_patient_geometry(ct_series):
    """A mask made on the volume grid (bone: HU > 300) sampled back onto each instance equals the same
    threshold of that instance's own pixels: slice order, row/column flips and the LPS/RAS turn are right."""
    import pydicom
    from pydicom.pixels import apply_modality_lut

    from meddx.data.volumes import read_volume
    from meddx.dicomio.seg import labels_on_sources

    folder, _ = ct_series
    vol = read_volume(folder)  # (z, y, x) in RAS order, as meddx's segmentation masks are written
    mask = (np.transpose(vol.array, (2, 1, 0)) > 300).astype(np.uint8)  # [i, j, k] as NIfTI indexes it
    sources = [pydicom.dcmread(str(f)) for f in sorted(folder.iterdir())]
    frames = labels_on_sources(mask, vol.affine, sources)
    own = np.stack([(apply_modality_lut(ds.pixel_array, ds) > 300) for ds in sources]).astype(np.uint8)
    assert frames.shape == own.shape == (20, 512, 512)
    assert own.sum() > 1000 and (frames == own).mean() > 0.999


@pytest.mark.slow
def test_segmentation_seg_reads_back_on_the_series(seg3d_run, ct_series, tmp_path):
    import highdicom as hd
    import nibabel as nib

    from meddx.dicomio.seg import labels_on_sources
    from meddx.engine.predict import Predictor
    from meddx.pacs.results import dicom_results, write_outputs

    folder, _ = ct_series
    predictor = Predictor(seg3d_run, device="cpu")
    res = dicom_results(predictor, [folder])
    (seg_file,) = write_outputs(res.outputs, tmp_path / "out")
    seg = hd.seg.segread(str(seg_file))
    assert seg.Modality == "SEG" and seg.number_of_segments == 1 and seg.SegmentSequence[0].SegmentLabel == "nodule"
    src_uids = {ds.SOPInstanceUID for ds in res.sources}
    assert {uid for _, _, uid in seg.get_source_image_uids()} == src_uids
    assert seg.FrameOfReferenceUID == res.sources[0].FrameOfReferenceUID
    by_uid = {ds.SOPInstanceUID: ds for ds in res.sources}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        pos = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert pos == pytest.approx([float(v) for v in by_uid[ref].ImagePositionPatient])
    # values: the SEG holds the predicted mask as meddx wrote it (NIfTI), sampled onto the instances
    mask_pred = predictor.predict_files([folder], out_dir=tmp_path / "masks")[0]
    img = nib.load(mask_pred["mask"])
    sources = sorted(res.sources, key=lambda d: float(d.ImagePositionPatient[2]))
    want = labels_on_sources(np.asarray(img.dataobj), img.affine, sources)
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in sources],
                                               combine_segments=True, skip_overlap_checks=True)
    assert pixels.shape == want.shape and np.array_equal(pixels, want)
    assert int(want.sum()) == sum(res.results[0]["voxels"].values())
    assert dciodvfy_errors(seg_file) == []


# ---------------------------------------------------------------- the CLI and the PHI search


@pytest.mark.slow
def test_predict_dicom_out_writes_no_phi_anywhere(cls_run, seg3d_run, ct_series, tmp_path, capsys, caplog):
    from typer.testing import CliRunner

    from meddx.cli import app

    caplog.set_level(logging.DEBUG)
    series, planted_s = ct_series
    ct, planted_c = planted_ct(tmp_path / "in" / "ct.dcm")
    runner = CliRunner()
    texts = []
    for run, inputs in ((cls_run, [ct]), (seg3d_run, [series])):
        out = tmp_path / f"dicom-{run.name}"
        r = runner.invoke(app, ["predict", str(run), *map(str, inputs), "--dicom-out", str(out), "--json",
                                "--device", "cpu", "--out", str(tmp_path / "masks")])
        assert r.exit_code == 0, r.output
        texts += [r.output, r.stderr if r.stderr_bytes is not None else ""]
        payload = json.loads(r.stdout[r.stdout.index("["):])
        assert payload[0]["dicom"] and all(Path(p).is_file() for p in payload[0]["dicom"])
        assert {Path(p).parent for p in payload[0]["dicom"]} == {out}
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text]
    planted = sorted(set(planted_s) | set(planted_c))
    hits = phi_hits(planted, texts, [tmp_path / "dicom-cls", tmp_path / "dicom-seg3d", tmp_path / "masks"])
    print(f"planted {len(planted)} PHI values ({', '.join(PHI)} + UIDs); searched {len(texts)} outputs/logs and "
          f"every file written; found {len(hits)}")
    assert hits == []


def test_predict_dicom_out_refuses_non_dicom_input(cls_run, tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    from meddx.cli import app

    png = tmp_path / "x.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(png)
    r = CliRunner().invoke(app, ["predict", str(cls_run), str(png), "--dicom-out", str(tmp_path / "o")])
    assert r.exit_code != 0 and "error:" in r.output and "DICOM" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_2d_segmentation_seg_on_a_single_ct_image(tmp_path):
    """A 2D model's PNG mask (at the image's own size) becomes a one-frame SEG on that image."""
    import highdicom as hd
    from PIL import Image

    from meddx.data.segdata import load_phantom_segmentation
    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit
    from meddx.engine.predict import Predictor
    from meddx.pacs.results import dicom_results, write_outputs

    data = load_phantom_segmentation(32, seed=0, splits={"train": 16, "val": 4, "test": 4})
    run = fit(TrainConfig(data="phantom", task="segmentation", size=32, epochs=1, out=str(tmp_path), name="seg2d",
                          progress=False, device="cpu"), data=data).path
    ct, _ = planted_ct(tmp_path / "in" / "ct.dcm")
    predictor = Predictor(run, device="cpu")
    res = dicom_results(predictor, [ct])
    (seg_file,) = write_outputs(res.outputs, tmp_path / "out")
    seg = hd.seg.segread(str(seg_file))
    (src,) = res.sources
    pixels = seg.get_pixels_by_source_instance([src.SOPInstanceUID], combine_segments=True, skip_overlap_checks=True)
    want = np.asarray(Image.open(predictor.predict_files([ct], out_dir=tmp_path / "m")[0]["mask"])) > 0
    assert pixels.shape == (1, src.Rows, src.Columns) and np.array_equal(pixels[0] > 0, want)
    assert dciodvfy_errors(seg_file) == []
