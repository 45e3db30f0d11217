"""A DICOM SEG of a predicted label map, with highdicom: one segment per foreground class, on the sources' grid.

``labels`` is ``(frames, rows, cols)`` in the order of ``sources`` (one frame per single-frame source image);
:func:`labels_on_sources` brings a mask volume meddx wrote (NIfTI, RAS affine) onto that grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from meddx.dicomio.common import MANUFACTURER, STUDY_DESCRIPTION, Producer, class_code, derived_uid

CATEGORY = ("91723000", "SCT", "Anatomical Structure")


def segmentation_seg(sources: Sequence[Any], labels: np.ndarray, producer: Producer, series_number: int = 902) -> Any:
    """The SEG (BINARY, a label map encoded as one segment per foreground class) of ``labels``."""
    import highdicom as hd
    from highdicom.sr.coding import CodedConcept

    study = str(sources[0].StudyInstanceUID)
    segments = [hd.seg.SegmentDescription(
        segment_number=k, segment_label=producer.classes[k][:64],
        segmented_property_category=CodedConcept(*CATEGORY),
        segmented_property_type=class_code(k, producer.classes[k]),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=producer.algorithm()) for k in range(1, len(producer.classes))]
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=np.ascontiguousarray(labels.astype(np.uint8)),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
        series_instance_uid=derived_uid(study, producer.name, "seg-series"), series_number=series_number,
        sop_instance_uid=derived_uid(study, producer.name, producer.version, "seg"), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=producer.name[:64],
        software_versions=producer.version[:64], device_serial_number="0",
        series_description=f"meddx {producer.name} masks"[:64], omit_empty_frames=False)
    seg.StudyDescription = STUDY_DESCRIPTION
    return seg


def labels_on_sources(mask: np.ndarray, affine: np.ndarray, sources: Sequence[Any]) -> np.ndarray:
    """``(frames, rows, cols)`` labels for ``sources`` (single-frame images with patient geometry), sampled
    (nearest voxel) from ``mask`` indexed ``[i, j, k]`` with a RAS ``affine``, as NIfTI stores it."""
    inverse = np.linalg.inv(affine)
    frames = []
    for ds in sources:
        world = _pixel_positions_lps(ds) * np.array([-1.0, -1.0, 1.0])  # DICOM is LPS, NIfTI affines RAS
        ijk = np.rint(world @ inverse[:3, :3].T + inverse[:3, 3]).astype(np.int64)
        inside = np.all((ijk >= 0) & (ijk < np.array(mask.shape)), axis=-1)
        frame = np.zeros(ijk.shape[:2], np.uint8)
        i, j, k = (ijk[..., d][inside] for d in range(3))
        frame[inside] = mask[i, j, k]
        frames.append(frame)
    return np.stack(frames)


def _pixel_positions_lps(ds: Any) -> np.ndarray:
    """(rows, cols, 3) patient coordinates of every pixel centre, through highdicom's transformer."""
    from highdicom.spatial import PixelToReferenceTransformer

    to_patient = PixelToReferenceTransformer(image_position=ds.ImagePositionPatient,
                                             image_orientation=ds.ImageOrientationPatient,
                                             pixel_spacing=ds.PixelSpacing)
    rows, cols = int(ds.Rows), int(ds.Columns)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    return to_patient(np.stack([c.ravel(), r.ravel()], axis=1)).reshape(rows, cols, 3)
