"""``reconstruct_files``: a trained reconstruction run applied to degraded image files, written back in the
same format with the geometry kept.

Formats: a DICOM file (CT in HU through its rescale slope/intercept; written as a new derived instance with the
same pixel spacing, position and orientation, new SOP/series UIDs), NIfTI (2D or 3D: every axial slice, same
affine and header), PNG (MRI magnitudes; for CT only 16-bit PNGs holding HU + 1024 are accepted: an 8-bit PNG
holds display values, not HU) and ``.npy`` (CT: HU; MRI: the complex zero-filled image or a magnitude).
MRI magnitudes are scaled to [0, 1] by the 99.5th percentile (as in training) and scaled back after.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from meddx.errors import MeddxError

PNG_HU_OFFSET = 1024  # 16-bit PNG convention for CT: stored value = HU + 1024


def output_path(path: Path, out_dir: Path | None) -> Path:
    name = path.name
    for suffix in (".nii.gz", ".nii", ".png", ".npy", ".dcm"):
        if name.lower().endswith(suffix):
            return (out_dir or path.parent) / f"{name[: -len(suffix)]}_recon{suffix}"
    return (out_dir or path.parent) / f"{name}_recon.dcm"  # DICOM files often have no suffix


class SliceRunner:
    """The run's network on one 2D slice in display units (HU, or MRI magnitude / complex image)."""

    def __init__(self, run: str | Path, device: str = "auto") -> None:
        from meddx.runtimes import open_runtime

        self.runtime = open_runtime("torch", run, device=device)
        self.task = self.runtime.task
        if self.task.name != "reconstruction":
            raise MeddxError(f"this is a {self.task.name} run; meddx reconstruct needs a reconstruction run", run)

    @property
    def is_mri(self) -> bool:
        return self.task.is_mri

    def __call__(self, image: np.ndarray, where: Path) -> np.ndarray:
        from meddx.tasks.reconstruction_checks import check_range

        if self.is_mri:
            scale = _magnitude_scale(np.abs(image))
            return self.task.reconstruct_array(self.runtime.model, image / scale, self.runtime.device,
                                               where=where) * scale
        if np.iscomplexobj(image):
            raise MeddxError("complex values where a real CT slice (HU) is expected", where)
        check_range(np.asarray(image), "ct", where)
        return self.task.reconstruct_array(self.runtime.model, image, self.runtime.device, where=where)


def _magnitude_scale(mag: np.ndarray) -> float:
    if mag.size and float(mag.min()) < 0:
        raise MeddxError("MRI magnitudes must be >= 0")
    pos = mag[mag > 0]
    return max(float(np.percentile(pos, 99.5)), 1e-6) if pos.size else 1.0


def reconstruct_files(run: str | Path, paths: list[Path], out_dir: Path | None = None, device: str = "auto"
                      ) -> list[dict[str, Any]]:
    """Reconstruct each file; one ``{"file", "output", "slices"}`` dict per input."""
    if not paths:
        raise MeddxError("no image files given")
    for p in paths:
        if not Path(p).is_file():
            raise MeddxError("file not found (give image files: DICOM, NIfTI, PNG, .npy)", p)
    runner = SliceRunner(run, device)
    results = []
    for p in map(Path, paths):
        target = output_path(p, out_dir)
        slices = _dispatch(p)(runner, p, target)
        results.append({"file": str(p), "output": str(target), "slices": slices})
    return results


def _dispatch(path: Path):
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        return _nifti
    if name.endswith(".png"):
        return _png
    if name.endswith(".npy"):
        return _npy
    from meddx.data.pixels import head

    if name.endswith((".dcm", ".dicom")) or head(path)[128:132] == b"DICM":
        return _dicom
    raise MeddxError("unsupported file (expected DICOM, NIfTI, PNG or .npy)", path)


def _npy(runner: SliceRunner, path: Path, target: Path) -> int:
    from meddx.utils.io import atomic_path

    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MeddxError(f"not a readable .npy array ({exc})", path) from None
    if arr.dtype.kind not in "biufc":
        raise MeddxError(f"expected a numeric array, got dtype {arr.dtype}", path)
    out = runner(np.squeeze(arr), path).astype(np.float32)
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, out, allow_pickle=False)
    return 1


def _png(runner: SliceRunner, path: Path, target: Path) -> int:
    from PIL import Image

    from meddx.utils.io import atomic_path

    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim != 2:
        raise MeddxError(f"expected a greyscale PNG, got shape {arr.shape}", path)
    if runner.is_mri:
        out = runner(arr.astype(np.float64), path)
        stored = np.clip(np.rint(out), 0, np.iinfo(arr.dtype).max).astype(arr.dtype)
    else:
        if arr.dtype != np.uint16:
            raise MeddxError("an 8-bit PNG holds display values, not HU; CT needs a 16-bit PNG of HU + 1024, "
                             "DICOM, NIfTI or .npy", path)
        out = runner(arr.astype(np.float64) - PNG_HU_OFFSET, path)
        stored = np.clip(np.rint(out + PNG_HU_OFFSET), 0, 65535).astype(np.uint16)
    with atomic_path(target) as tmp:
        Image.fromarray(stored).save(tmp, format="PNG")
    return 1


def _nifti(runner: SliceRunner, path: Path, target: Path) -> int:
    import nibabel as nib

    from meddx.utils.io import atomic_path

    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=np.float64)
    except Exception as exc:  # nibabel raises many types for corrupt files
        raise MeddxError(f"not a readable NIfTI file ({str(exc).splitlines()[0][:200]})", path) from None
    vol = data if data.ndim == 3 else data.reshape(*data.shape[:2], -1)
    if data.ndim not in (2, 3) and not (data.ndim == 4 and data.shape[3] == 1):
        raise MeddxError(f"expected a 2D or 3D NIfTI, got shape {data.shape}", path)
    out = np.stack([runner(vol[:, :, k], path) for k in range(vol.shape[2])], axis=2).reshape(data.shape)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header["scl_slope"], header["scl_inter"] = 1.0, 0.0
    with atomic_path(target) as tmp:
        tmp_nii = tmp.with_name(tmp.name + ".nii.gz")
        nib.save(nib.Nifti1Image(out.astype(np.float32), img.affine, header), str(tmp_nii))
        tmp_nii.replace(tmp)
    return int(vol.shape[2])


def _dicom(runner: SliceRunner, path: Path, target: Path) -> int:
    import pydicom
    from pydicom.pixels import apply_modality_lut
    from pydicom.uid import generate_uid

    from meddx.utils.io import atomic_path

    try:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for corrupt files
        raise MeddxError(f"not a readable DICOM image ({str(exc).splitlines()[0][:200]})", path) from None
    if stored.ndim != 2 or int(ds.get("SamplesPerPixel", 1)) != 1:
        raise MeddxError(f"expected a single-frame greyscale DICOM image, got shape {stored.shape}", path)
    values = np.asarray(apply_modality_lut(stored, ds), np.float64)
    out = runner(values, path)
    slope, intercept = float(ds.get("RescaleSlope", 1) or 1), float(ds.get("RescaleIntercept", 0) or 0)
    info = np.iinfo(stored.dtype)
    ds.PixelData = np.clip(np.rint((out - intercept) / slope), info.min, info.max).astype(stored.dtype).tobytes()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesDescription = f"{ds.get('SeriesDescription', '')} meddx reconstruct".strip()[:64]
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.DerivationDescription = f"meddx reconstruction network ({runner.task.degradation.name})"[:1024]
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    with atomic_path(target) as tmp:
        ds.save_as(tmp, enforce_file_format=True)
    return 1
