"""3D volumes from disk: NIfTI (nibabel), NRRD/MHA and DICOM series (SimpleITK), resampled to a spacing.

Every volume is returned as a :class:`Volume`: a ``(D, H, W)`` array in (z, y, x) order with its voxel
``spacing`` in mm in the same order, in one orientation whatever the reader: NIfTI files are turned to the
closest canonical (RAS+) orientation with nibabel, SimpleITK volumes with ``DICOMOrient(image, "RAS")`` (the
same voxel order), so a DICOM series and a NIfTI label map of it line up.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from meddx.errors import MeddxError

if TYPE_CHECKING:
    import torch

NIFTI_SUFFIXES = (".nii", ".nii.gz")
ITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
VOLUME_SUFFIXES = NIFTI_SUFFIXES + ITK_SUFFIXES
# Raw intensities are clipped to the 12-bit CT range (-1024..3071 HU) before normalisation, so stray
# padding values (-3024, -32768) do not dominate the statistics; MR values in this range are untouched.
INTENSITY_RANGE = (-1024.0, 3071.0)


@dataclass
class Volume:
    """A volume in (z, y, x) voxel order with its spacing in mm (z, y, x)."""

    array: np.ndarray
    spacing: tuple[float, float, float]
    path: str = ""
    affine: np.ndarray | None = None  # 4x4 voxel (x, y, z index) -> RAS mm, as NIfTI stores it; None: unknown

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def extent_mm(self) -> tuple[float, float, float]:
        """Physical size of the volume (shape times spacing)."""
        return tuple(float(n * s) for n, s in zip(self.array.shape, self.spacing))  # type: ignore[return-value]


def is_volume_path(path: str | Path) -> bool:
    p = Path(path)
    return p.name.lower().endswith(VOLUME_SUFFIXES) or (p.is_dir() and any(_dicom_files(p)))


def _dicom_files(folder: Path) -> list[Path]:
    """Files of a folder that are DICOM (``DICM`` marker or ``.dcm`` name), e.g. ``CT.1.2.840...`` series files."""
    from meddx.data.dicom import looks_like_dicom

    out = []
    for f in sorted(folder.iterdir()):
        if f.is_file() and not f.name.startswith("."):
            try:
                with open(f, "rb") as fh:
                    start = fh.read(132)
            except OSError:
                continue
            if looks_like_dicom(f, start):
                out.append(f)
    return out


def read_volume(path: str | Path) -> Volume:
    """Read a NIfTI file, an NRRD/MHA file or a folder holding one DICOM series."""
    p = Path(path)
    if not p.exists():
        raise MeddxError("file not found", p)
    name = p.name.lower()
    try:
        if name.endswith(NIFTI_SUFFIXES):
            return _read_nifti(p)
        if name.endswith(ITK_SUFFIXES):
            import SimpleITK as sitk

            return _from_sitk(sitk.ReadImage(str(p)), p)
        if p.is_dir():
            return _read_dicom_series(p)
        if name.endswith((".dcm", ".dicom")) or _is_dicom_file(p):
            from meddx.data.dicom import read_values

            values, spacing = read_values(p)
            return Volume(values, spacing, str(p))
    except MeddxError:
        raise
    except Exception as exc:  # nibabel / SimpleITK raise many types for corrupt files
        raise MeddxError(f"not a readable volume ({str(exc).splitlines()[0][:200]})", p) from None
    raise MeddxError(f"unsupported volume file (expected {', '.join(VOLUME_SUFFIXES)}, a multi-frame DICOM file "
                     "or a DICOM series folder)", p)


def _is_dicom_file(p: Path) -> bool:
    from meddx.data.pixels import head

    return p.is_file() and head(p)[128:132] == b"DICM"


def _read_nifti(p: Path) -> Volume:
    import nibabel as nib

    img = nib.as_closest_canonical(nib.load(str(p)))
    data = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise MeddxError(f"expected a 3D volume, got shape {data.shape}", p)
    zooms = img.header.get_zooms()[:3]
    return Volume(np.ascontiguousarray(np.transpose(data, (2, 1, 0))),
                  (float(zooms[2]), float(zooms[1]), float(zooms[0])), str(p), np.asarray(img.affine, float))


def _from_sitk(img, p: Path) -> Volume:
    import SimpleITK as sitk

    if img.GetDimension() != 3:
        raise MeddxError(f"expected a 3D volume, got {img.GetDimension()}D", p)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise MeddxError(f"expected one value per voxel, got {img.GetNumberOfComponentsPerPixel()}", p)
    img = sitk.DICOMOrient(img, "RAS")  # same voxel order as nibabel's as_closest_canonical
    sx, sy, sz = img.GetSpacing()
    affine = np.eye(4)  # ITK geometry is LPS; NIfTI affines are RAS: flip the first two world axes
    affine[:3, :3] = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())[None]
    affine[:3, 3] = img.GetOrigin()
    affine[:2] *= -1
    return Volume(sitk.GetArrayFromImage(img), (float(sz), float(sy), float(sx)), str(p), affine)


def _read_dicom_series(p: Path) -> Volume:
    import SimpleITK as sitk

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(p))
    if not ids:
        raise MeddxError("folder holds no DICOM series", p)
    if len(ids) > 1:
        raise MeddxError(f"folder holds {len(ids)} DICOM series; give one series per folder", p)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p), ids[0]))
    return _from_sitk(reader.Execute(), p)


def resample(volume: Volume, spacing: tuple[float, float, float] | float, label: bool = False) -> Volume:
    """Resample to about ``spacing`` mm (z, y, x), keeping the physical extent of the volume.

    The new shape is ``round(extent / spacing)`` and the returned spacing is ``extent / new shape`` (so the
    extent is preserved exactly, the spacing to within half a voxel). Images are interpolated linearly,
    label maps with nearest neighbour (``label=True``); both with scipy's ``grid_mode`` (voxels as areas).
    """
    from scipy import ndimage

    target = (float(spacing),) * 3 if np.isscalar(spacing) else tuple(float(s) for s in spacing)  # type: ignore
    if len(target) != 3 or min(target) <= 0:
        raise MeddxError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}", volume.path)
    extent = volume.extent_mm
    shape = tuple(max(1, int(round(e / t))) for e, t in zip(extent, target))
    if shape == volume.shape:
        return Volume(volume.array, volume.spacing, volume.path, volume.affine)
    zoom = tuple(n / o for n, o in zip(shape, volume.shape))
    data = volume.array if label else volume.array.astype(np.float32)
    out = ndimage.zoom(data, zoom, order=0 if label else 1, mode="nearest", grid_mode=True)
    new_spacing = tuple(e / n for e, n in zip(extent, out.shape))
    return Volume(out, new_spacing, volume.path, _rescaled_affine(volume.affine, volume.spacing, new_spacing))


def _rescaled_affine(affine: np.ndarray | None, old: tuple[float, ...], new: tuple[float, ...]) -> np.ndarray | None:
    """The affine of a resampled grid with the same extent: voxel edges stay, centres move by half a voxel."""
    if affine is None:
        return None
    ratio = np.array([new[2] / old[2], new[1] / old[1], new[0] / old[0]])  # (x, y, z) index order
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] * ratio[None]
    out[:3, 3] = affine[:3, :3] @ ((ratio - 1) / 2) + affine[:3, 3]
    return out


def check_pair(image: Volume, label: Volume, tol: float = 1e-3) -> None:
    """An image and its label map must share shape and spacing; a one-line error names the label file."""
    if image.shape != label.shape:
        raise MeddxError(f"label map of shape {label.shape} does not match image shape {image.shape} "
                         f"({Path(image.path).name})", label.path)
    if any(abs(a - b) > tol * max(abs(a), 1.0) for a, b in zip(image.spacing, label.spacing)):
        fmt = "x".join(f"{s:.3g}" for s in label.spacing)
        ref = "x".join(f"{s:.3g}" for s in image.spacing)
        raise MeddxError(f"label spacing {fmt} mm differs from the image's {ref} mm", label.path)


def read_pair(image_path: str | Path, label_path: str | Path,
              spacing: tuple[float, float, float] | float | None = None) -> tuple[Volume, Volume]:
    """Read an image volume and its label map, check they match, and resample both to ``spacing``."""
    image, label = read_volume(image_path), read_volume(label_path)
    check_pair(image, label)
    if label.array.dtype.kind == "f":
        if not np.allclose(label.array, np.round(label.array)):
            raise MeddxError("label map holds non-integer values", label_path)
    if label.array.min() < 0:
        raise MeddxError(f"label map holds negative values ({label.array.min()})", label_path)
    label = Volume(label.array.astype(np.int64), label.spacing, label.path)
    if spacing is not None:
        image, label = resample(image, spacing), resample(label, spacing, label=True)
    return image, label


def read_volume_pixels(path: str | Path):
    """A (C, D, H, W) :class:`~meddx.data.pixels.Pixels` of raw values from a (D, H, W) or (C, D, H, W)
    ``.npy`` array or any :func:`read_volume` input (NIfTI, NRRD/MHA, DICOM series folder, multi-frame DICOM)."""
    from meddx.data.arrays import NONE, load_npy
    from meddx.data.pixels import Pixels, check_file

    p = Path(path)
    if p.suffix.lower() != ".npy":
        return Pixels(np.ascontiguousarray(read_volume(p).array)[None], dict(NONE), "volume", str(p))
    arr = load_npy(check_file(p))
    if arr.ndim not in (3, 4):
        raise MeddxError(f"expected a (D, H, W) or (C, D, H, W) volume, got {arr.dtype} {arr.shape}", p)
    return Pixels(np.ascontiguousarray(arr if arr.ndim == 4 else arr[None]), dict(NONE), "npy", str(p))


def read_volume_tensor(path: str | Path) -> torch.Tensor:
    """A (C, D, H, W) tensor from a (D, H, W) or (C, D, H, W) ``.npy`` array or any :func:`read_volume` file."""
    import torch

    return torch.from_numpy(read_volume_pixels(path).array)


def prepare_intensities(array: np.ndarray) -> np.ndarray:
    """Raw intensities as float32, clipped to :data:`INTENSITY_RANGE` (the model's input convention)."""
    return np.clip(array.astype(np.float32), *INTENSITY_RANGE)


def write_nifti(path: str | Path, array: np.ndarray, spacing: tuple[float, float, float],
                affine: np.ndarray | None = None) -> Path:
    """Write a (z, y, x) array as NIfTI, atomically; ``affine`` (e.g. the input volume's) places it in the
    scanner's space, else a diagonal RAS+ affine from ``spacing``."""
    import nibabel as nib

    from meddx.utils.io import atomic_path

    data = np.transpose(np.asarray(array), (2, 1, 0))
    if affine is None:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(data), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path) as tmp:
        target = Path(str(tmp) + suffix)  # nibabel picks compression from the file name
        nib.save(img, str(target))
        target.replace(tmp)
    return path


def pad_or_crop(array: np.ndarray, shape: tuple[int, ...], fill: float = 0.0) -> np.ndarray:
    """Centre-pad (with ``fill``) or centre-crop ``array`` to ``shape``."""
    out = np.full(shape, fill, dtype=array.dtype)
    src, dst = [], []
    for n, m in zip(array.shape, shape):
        if n >= m:
            a = (n - m) // 2
            src.append(slice(a, a + m))
            dst.append(slice(0, m))
        else:
            a = (m - n) // 2
            src.append(slice(0, n))
            dst.append(slice(a, a + n))
    out[tuple(dst)] = array[tuple(src)]
    return out
