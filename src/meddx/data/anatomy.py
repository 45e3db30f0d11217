"""Real anatomy from package registries, offline: the Colin27 brain and its AAL atlas (Debian ``mricron-data``),
the MNI152 template with brain/GM/WM masks (PyPI ``nilearn``, packaged files), and the ITK example brain slices
(Debian ``insighttoolkit5-examples``: proton density and T1 of one slice).

Volumes come back as :class:`meddx.data.volumes.Volume` ((z, y, x) arrays, spacing in mm, RAS affine); slices as
(H, W) float32 arrays. A missing package is a one-line :class:`MeddxError` saying what to install.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddx.data.volumes import Volume
from meddx.errors import MeddxError

MRICRON = Path("/usr/share/mricron/templates")
ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")


def _nifti(path: Path, package: str) -> Volume:
    from meddx.data.volumes import read_volume

    if not path.is_file():
        raise MeddxError(f"not found; install the Debian package {package}", path)
    return read_volume(path)


def colin27() -> Volume:
    """Colin27 T1 brain (``ch2.nii.gz``, 181 x 217 x 181 at 1 mm, MNI space)."""
    return _nifti(MRICRON / "ch2.nii.gz", "mricron-data")


def colin27_brain() -> Volume:
    """Colin27 skull-stripped (``ch2bet.nii.gz``, same grid): ``array > 0`` is its brain mask."""
    return _nifti(MRICRON / "ch2bet.nii.gz", "mricron-data")


def aal() -> Volume:
    """AAL atlas on the Colin27 grid (116 labelled regions, 0 = outside)."""
    return _nifti(MRICRON / "aal.nii.gz", "mricron-data")


def _nilearn_volume(img) -> Volume:
    import nibabel as nib

    img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    zooms = img.header.get_zooms()[:3]
    return Volume(np.ascontiguousarray(np.transpose(data, (2, 1, 0))), (float(zooms[2]), float(zooms[1]),
                  float(zooms[0])), "nilearn:MNI152", np.asarray(img.affine, float))


def mni152(resolution: int = 2) -> dict[str, Volume]:
    """MNI152 T1 template, its brain mask and GM/WM probability maps (nilearn's packaged files) on one grid.

    The probability maps (``gm``, ``wm``: 0..1) are used rather than nilearn's GM/WM masks, which are dilated
    and overlap each other."""
    try:
        from nilearn import datasets
    except ImportError:
        raise MeddxError("the MNI152 template needs nilearn (pip install 'meddx[imaging]')") from None
    return {"t1": _nilearn_volume(datasets.load_mni152_template(resolution=resolution)),
            "brain": _nilearn_volume(datasets.load_mni152_brain_mask(resolution=resolution)),
            "gm": _nilearn_volume(datasets.load_mni152_gm_template(resolution=resolution)),
            "wm": _nilearn_volume(datasets.load_mni152_wm_template(resolution=resolution))}


def colin27_on_mni152(resolution: int = 2) -> dict[str, np.ndarray]:
    """Colin27 T1 and brain mask resampled onto the MNI152 grid (both are in MNI space; nilearn resampling)."""
    import nibabel as nib
    from nilearn import datasets, image

    ref = datasets.load_mni152_template(resolution=resolution)
    out = {}
    for key, name, interp in (("t1", "ch2.nii.gz", "continuous"), ("brain", "ch2bet.nii.gz", "continuous")):
        path = MRICRON / name
        if not path.is_file():
            raise MeddxError("not found; install the Debian package mricron-data", path)
        res = image.resample_to_img(nib.load(str(path)), ref, interpolation=interp, force_resample=True,
                                    copy_header=True)
        out[key] = _nilearn_volume(res).array
    out["brain"] = (out["brain"] > 0).astype(np.uint8)
    return out


def itk_brain_slices() -> dict[str, np.ndarray]:
    """The ITK example brain slice as proton density (``pd``) and T1 (``t1``), 217 x 181 px, float32."""
    from PIL import Image

    out = {}
    for key, name in (("pd", "BrainProtonDensitySlice.png"), ("t1", "BrainT1Slice.png")):
        path = ITK_DATA / name
        if not path.is_file():
            raise MeddxError("not found; install the Debian package insighttoolkit5-examples", path)
        out[key] = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return out
