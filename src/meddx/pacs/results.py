"""DICOM in, DICOM out: de-identify the inputs, predict on the de-identified copies, build SR / SEG / SC.

The one entry point for ``meddx predict --dicom-out``, ``meddx pacs`` and ``serve ?output=dicom``:
:func:`dicom_results`. Inputs are DICOM files (one image each: 2D models) or folders holding one series (3D
segmentation, or a series of 2D images). Nothing identifying leaves this module: the predictor reads private
de-identified copies under neutral names, and the outputs reference the de-identified instances.
"""

from __future__ import annotations

import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from meddx.errors import MeddxError


@dataclass
class Case:
    """What the model sees as one input: a single image, or a series (a folder) for volume models."""

    instances: list[Any]  # de-identified pydicom Datasets
    series: bool = False


@dataclass
class DicomResults:
    sources: list[Any]  # de-identified input instances (pydicom Datasets)
    outputs: list[Any]  # SR / SEG / SC Datasets
    results: list[dict[str, Any]] = field(default_factory=list)  # the task's result dicts (one per input)
    notes: list[str] = field(default_factory=list)
    input_studies: list[str] = field(default_factory=list)  # the de-identified Study Instance UID of each input


def producer_for(predictor: Any) -> Any:
    """The model behind the results, named by its run folder and architecture, versioned by meddx's version and
    the weights' sha256 (first 16 hex digits)."""
    from importlib.metadata import PackageNotFoundError, version

    from meddx.dicomio.common import Producer
    from meddx.utils.io import file_digest

    weights = Path(predictor.files[0])
    try:
        meddx = version("meddx")
    except PackageNotFoundError:  # a source tree that was never installed
        meddx = "source"
    run = weights.parent.name
    return Producer(f"{run} ({predictor.meta['model']})", f"meddx {meddx} sha256:{file_digest(weights)[:16]}",
                    tuple(predictor.classes), predictor.task.name)


def dicom_results(predictor: Any, inputs: list[Path], key: str | None = None, heatmap: bool = True) -> DicomResults:
    """De-identify ``inputs`` (files or series folders) with one key, predict, and build the DICOM outputs."""
    from meddx.dicomio.deid import Deidentifier

    deidentify = Deidentifier(key)
    cases = [_read_case(Path(p), deidentify) for p in inputs]
    res = results_for_cases(predictor, cases, heatmap)
    for result, original in zip(res.results, inputs):
        result["file"] = str(original)
    return res


def results_for_cases(predictor: Any, cases: list[Case], heatmap: bool = True) -> DicomResults:
    """Predict on de-identified cases (each a single image or a series folder) and build SR / SEG / SC."""
    producer = producer_for(predictor)
    with tempfile.TemporaryDirectory(prefix="meddx-dicom-") as tmp:
        work = [_write_case(case, Path(tmp) / f"case{n:04d}") for n, case in enumerate(cases)]
        results = predictor.predict_files(work, out_dir=Path(tmp) / "masks")
        pairs = list(zip(work, [c.instances for c in cases]))
        if predictor.task.is_classifier:
            outputs, notes = _classification_outputs(predictor, producer, pairs, results, heatmap)
        else:
            outputs, notes = _segmentation_outputs(producer, pairs, results), []
    sources = [ds for case in cases for ds in case.instances]
    return DicomResults(sources, outputs, results, notes, [str(c.instances[0].StudyInstanceUID) for c in cases])


def write_outputs(outputs: list[Any], out_dir: Path) -> list[Path]:
    """Each output as ``<modality>_<SOP Instance UID>.dcm`` in ``out_dir`` (written atomically)."""
    from meddx.dicomio.common import write_dataset

    return [write_dataset(ds, Path(out_dir) / f"{ds.Modality}_{ds.SOPInstanceUID}.dcm") for ds in outputs]


def predict_dicom_out(predictor: Any, inputs: list[Path], out_dir: Path) -> list[dict[str, Any]]:
    """``meddx predict --dicom-out``: the task's result dicts, each with ``dicom``: the files written for its
    study (SR + SC for classification, a SEG per input for segmentation)."""
    res = dicom_results(predictor, [Path(p) for p in inputs])
    files = write_outputs(res.outputs, out_dir)
    studies = [str(ds.StudyInstanceUID) for ds in res.outputs]
    for result, study in zip(res.results, res.input_studies):
        result["dicom"] = [str(f) for f, s in zip(files, studies) if s == study]
    for note in res.notes:
        print(f"notice: {note}", file=sys.stderr)
    return res.results


def _read_case(path: Path, deidentify: Any) -> Case:
    from meddx.data.volumes import _dicom_files
    from meddx.dicomio.deid import read_deidentified

    if not path.exists():
        raise MeddxError("file not found", path)
    files = _dicom_files(path) if path.is_dir() else [path]
    if not files:
        raise MeddxError("folder holds no DICOM files", path)
    return Case(read_deidentified(files, deidentify), path.is_dir())


def _write_case(case: Case, target: Path) -> Path:
    """The de-identified instances under neutral names: ``target.dcm``, or a folder for a series."""
    if not case.series:
        path = target.with_suffix(".dcm")
        case.instances[0].save_as(str(path), enforce_file_format=True)
        return path
    target.mkdir()
    for i, ds in enumerate(case.instances):
        ds.save_as(str(target / f"{i:05d}.dcm"), enforce_file_format=True)
    return target


def _classification_outputs(predictor: Any, producer: Any, cases: list, results: list, heatmap: bool
                            ) -> tuple[list[Any], list[str]]:
    """One SR per study (a measurement group per image) and one SC: the heat map of the image whose predicted
    class is the most probable."""
    from meddx.dicomio.sr import ImageFinding, classification_sr

    by_study: dict[str, list[tuple[ImageFinding, Path]]] = defaultdict(list)
    for (path, series), result in zip(cases, results):
        if len(series) != 1:
            raise MeddxError("a classification model takes single DICOM images, not a series folder", path)
        probs = np.asarray(list(result["probabilities"].values()), float)
        finding = ImageFinding(series[0], int(probs.argmax()), float(probs.max()))
        by_study[str(series[0].StudyInstanceUID)].append((finding, path))
    outputs: list[Any] = []
    notes: list[str] = []
    mapper = None
    for group in by_study.values():
        outputs.append(classification_sr([f for f, _ in group], producer))
        if heatmap:
            finding, path = max(group, key=lambda fp: fp[0].probability)
            try:  # scores may come from ONNX/int8; Grad-CAM needs the PyTorch model of the same run
                mapper = mapper or predictor.torch_model()
                outputs.append(_heatmap_sc(mapper, producer, finding, path))
            except MeddxError as exc:  # e.g. no Grad-CAM layer known for this architecture: the SR still goes
                notes.append(f"no heat-map SC: {exc}")
    return outputs, notes


def _heatmap_sc(predictor: Any, producer: Any, finding: Any, path: Path) -> Any:
    from meddx.data.dicom import read_dicom
    from meddx.dicomio.sc import heatmap_sc, overlay_rgb
    from meddx.explain.methods import explain

    raw = predictor.load_image(path)
    heat = explain(predictor.model, predictor.norm(raw[None].float()), [finding.class_index], "gradcam",
                   model_name=predictor.meta["model"])[0]
    shown = read_dicom(path).array
    display = shown[0] if shown.shape[0] == 1 else shown.mean(0).astype(np.uint8)
    return heatmap_sc(finding.source, overlay_rgb(display, heat), producer,
                      producer.classes[finding.class_index])


def _segmentation_outputs(producer: Any, cases: list, results: list) -> list[Any]:
    """One SEG per input: a single image's PNG mask, or a series' mask volume sampled onto its instances."""
    from meddx.dicomio.seg import labels_on_sources, segmentation_seg

    outputs = []
    for (_, series), result in zip(cases, results):
        mask_path = Path(result.pop("mask"))
        if mask_path.suffix == ".png":
            from PIL import Image

            labels = np.asarray(Image.open(mask_path))[None]
            if len(producer.classes) == 2:
                labels = (labels > 0).astype(np.uint8)  # binary masks are stored 0/255
        else:
            import nibabel as nib

            img = nib.load(str(mask_path))
            labels = labels_on_sources(np.asarray(img.dataobj), img.affine, series)
        outputs.append(segmentation_seg(series, labels, producer))
    return outputs
