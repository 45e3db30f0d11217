"""A Secondary Capture of a heat-map overlay, with highdicom: the source image (as displayed, 8-bit) blended with
the heat map in a colour map, RGB, on the source's pixel grid (same rows, columns and pixel spacing)."""

from __future__ import annotations

from typing import Any

import numpy as np

from meddx.dicomio.common import MANUFACTURER, STUDY_DESCRIPTION, Producer, derived_uid


def overlay_rgb(display: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """``display`` (H, W) uint8 blended with ``heat`` (any size, values in [0, 1]) in matplotlib's jet map."""
    import torch
    import torch.nn.functional as F
    from matplotlib import colormaps

    heat_t = torch.as_tensor(np.asarray(heat, np.float32))[None, None]
    heat_full = F.interpolate(heat_t, size=display.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
    colours = colormaps["jet"](np.clip(heat_full, 0, 1))[..., :3]
    grey = np.repeat(display[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    return np.clip(np.rint(((1 - alpha) * grey + alpha * colours) * 255), 0, 255).astype(np.uint8)


def heatmap_sc(source: Any, rgb: np.ndarray, producer: Producer, target: str, series_number: int = 903) -> Any:
    """The SC image of ``rgb`` (H, W, 3 uint8) in ``source``'s study, patient and frame of reference."""
    import highdicom as hd

    study = str(source.StudyInstanceUID)
    spacing = tuple(float(v) for v in source.PixelSpacing) if "PixelSpacing" in source else None
    orientation = ("L", "P") if "ImageOrientationPatient" not in source else _orientation(source)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=derived_uid(study, producer.name, "sc-series"),
        series_number=series_number,
        sop_instance_uid=derived_uid(str(source.SOPInstanceUID), producer.name, producer.version, "sc"),
        instance_number=1, manufacturer=MANUFACTURER, pixel_spacing=spacing, patient_orientation=orientation,
        series_description=f"meddx {producer.name} heat map"[:64])
    if "Laterality" in source:  # General Series type 2C: kept as the source states it (empty when unknown)
        sc.Laterality = source.Laterality
    sc.StudyDescription = STUDY_DESCRIPTION
    sc.ImageComments = f"heat map for {target} ({producer.name}); not for diagnosis"
    sc.DerivationDescription = "model input blended with a heat map (jet colour map)"
    return sc


def _orientation(ds: Any) -> tuple[str, str]:
    """Patient Orientation (PS3.3 C.7.6.1.1.1) of the rows and columns from Image Orientation (Patient): the
    dominant LPS axis of each direction cosine (by hand: a two-line lookup highdicom has no public helper for)."""
    cosines = np.asarray(ds.ImageOrientationPatient, float).reshape(2, 3)
    letters = (("R", "L"), ("A", "P"), ("F", "H"))
    return tuple(letters[int(np.argmax(np.abs(v)))][int(v[np.argmax(np.abs(v))] > 0)] for v in cosines)  # type: ignore[return-value]
