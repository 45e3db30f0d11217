"""Clean images for the reconstruction task, split by subject/volume (never neighbouring slices of one volume
across splits), as square 2D slices: CT in HU, MRI magnitudes scaled to [0, 1] per volume.

Sources (``--data`` with ``--task reconstruction``):

* ``phantom``: the synthetic thorax CT slices (:mod:`meddx.data.phantom`); every slice is its own "subject",
  the splits are drawn from different seeds.
* ``ct``: real CT. train: the head CT of Debian ``invesalius-examples`` (``Cranium.inv3``, 108 slices);
  val: pydicom's ``CT_small.dcm`` and the TotalSegmentator abdomen crop (``example_ct_sm.nii.gz``);
  test: the TotalSegmentator CT DICOM series (20 slices). (The two TotalSegmentator scans may come from one
  patient, not verified: both stay out of training.)
* ``mri``: real brain MRI. train: the MNI152 template (nilearn) and pyradiomics ``brain1``; val: pyradiomics
  ``brain2``; test: Colin27 (``mricron-data``).

The degradation itself is applied by the task (:mod:`meddx.tasks.reconstruction`), so a bundle here holds the
clean slices as both ``images`` and ``labels``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from meddx.data.dataset import DataBundle
from meddx.data.split import Split
from meddx.errors import MeddxError

RECON_SIZE = 128  # default slice side: FBP costs ~0.1 s per 128 px slice on one core (0.35 s at 256)
PHANTOM_SPLITS = {"train": 320, "val": 48, "test": 96}
CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
SOURCES = ("phantom", "ct", "mri")


def shared_datasets() -> Path:
    """``../shared/datasets`` beside the repository (``MEDDX_SHARED`` overrides), as the tests use."""
    env = os.environ.get("MEDDX_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[3].parent / "shared" / "datasets"


@dataclass
class ReconSplit(Split):
    """A split of clean slices plus each slice's pixel size in mm (the CT projector's path lengths)."""

    pixel_mm: np.ndarray = field(default_factory=lambda: np.zeros(0))


@dataclass
class ReconBundle(DataBundle):
    """Clean slices (N, 1, S, S) float32 for ``task == "reconstruction"``; ``modality`` ct (HU) or mri ([0, 1])."""

    def __post_init__(self) -> None:  # the classification label contract does not apply: checks of its own
        for name in ("train", "val", "test"):
            split = getattr(self, name)
            x = split.images
            where = f"{self.source or self.name} [{name}]"
            if x.ndim != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3]:
                raise MeddxError(f"reconstruction needs square single-channel slices, got {tuple(x.shape)}", where)
            if x.is_complex() or not x.is_floating_point() or not bool(torch.isfinite(x).all()):
                raise MeddxError("clean slices must be finite real floats", where)
            if len(split) == 0:
                raise MeddxError("split is empty", where)


# ------------------------------------------------------------------------------------------ helpers


def square_slices(volume: np.ndarray, spacing_yx: tuple[float, float], size: int, fill: float,
                  min_foreground: float = 0.15, threshold: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Z, H, W) -> (n, size, size) float32 slices, padded to square with ``fill`` then resized (scikit-image,
    anti-aliased); slices whose foreground (> ``threshold``) is under ``min_foreground`` are dropped.
    Returns (slices, pixel size in mm of each)."""
    from skimage.transform import resize

    z, h, w = volume.shape
    side = max(h, w)
    pad = ((0, 0), ((side - h) // 2, side - h - (side - h) // 2), ((side - w) // 2, side - w - (side - w) // 2))
    padded = np.pad(volume.astype(np.float32), pad, constant_values=fill)
    thr = fill + 0.1 * (float(np.percentile(volume, 99)) - fill) if threshold is None else threshold
    keep = [k for k in range(z) if (padded[k] > thr).mean() >= min_foreground]
    out = np.stack([resize(padded[k], (size, size), order=1, anti_aliasing=True, preserve_range=True)
                    for k in keep]).astype(np.float32) if keep else np.zeros((0, size, size), np.float32)
    pixel = side * max(spacing_yx) / size
    return out, np.full(len(out), pixel, np.float32)


def scale_magnitude(volume: np.ndarray) -> np.ndarray:
    """MRI magnitudes to [0, 1] per volume: divided by the 99.5th percentile of the head, clipped."""
    v = np.maximum(np.asarray(volume, np.float32), 0.0)
    ref = float(np.percentile(v[v > 0], 99.5)) if (v > 0).any() else 1.0
    return np.clip(v / max(ref, 1e-6), 0.0, 1.0)


def _split(slices: list[tuple[np.ndarray, np.ndarray, str]]) -> ReconSplit:
    images = np.concatenate([s for s, _, _ in slices])
    pixel = np.concatenate([p for _, p, _ in slices])
    ids = [f"{name}:{k}" for s, _, name in slices for k in range(len(s))]
    t = torch.from_numpy(np.ascontiguousarray(images[:, None]))
    return ReconSplit(t, t, ids, pixel_mm=pixel)


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise MeddxError(f"{what} not found (install it, or see README 'Reconstruction and denoising')", path)
    return path


# ------------------------------------------------------------------------------------------ sources


def read_cranium(path: Path = CRANIUM) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The InVesalius head CT: a tar holding ``main.plist`` (shape, dtype, spacing) and ``matrix.dat``
    (raw little-endian int16 HU, (108, 256, 256)). Returns (volume z, y, x in HU, spacing z, y, x mm)."""
    import plistlib
    import tarfile

    with tarfile.open(_require(path, "InVesalius example (Debian package invesalius-examples)")) as tar:
        members = {Path(m.name).name: m for m in tar.getmembers()}
        if "main.plist" not in members:
            raise MeddxError("not an InVesalius project (no main.plist)", path)
        main = plistlib.loads(tar.extractfile(members["main.plist"]).read())
        info = main["matrix"]
        raw = tar.extractfile(members[info["filename"]]).read()
    vol = np.frombuffer(raw, dtype=np.dtype(info["dtype"]).newbyteorder("<")).reshape(info["shape"])
    sx, sy, sz = (float(s) for s in main.get("spacing", (1.0, 1.0, 1.0)))
    return vol.astype(np.float32), (sz, sy, sx)


def axial_slices(vol: Any) -> tuple[np.ndarray, tuple[float, float, float]]:
    """A brain template (:mod:`meddx.data.anatomy` volume, RAS (z, y, x)) as axial slices, anterior up."""
    return np.ascontiguousarray(vol.array[:, ::-1]), tuple(float(s) for s in vol.spacing)


def ct_volume_slices(path: Path, size: int, step: int = 1) -> tuple[np.ndarray, np.ndarray]:
    from meddx.data.volumes import read_volume

    vol = read_volume(_require(path, "CT volume"))
    return square_slices(vol.array[::step], vol.spacing[1:], size, fill=-1000.0, threshold=-500.0)


def mri_volume_slices(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    from meddx.data.volumes import read_volume

    vol = read_volume(_require(path, "MR volume"))
    return square_slices(scale_magnitude(vol.array), vol.spacing[1:], size, fill=0.0, threshold=0.1)


# ------------------------------------------------------------------------------------------ bundles


def load_phantom_ct(size: int = RECON_SIZE, seed: int = 0, splits: dict[str, int] | None = None) -> ReconBundle:
    """Phantom slices in HU (the phantom's own scanner noise included: it is the "full dose" reference)."""
    from meddx.data.phantom import make_slices

    out = {}
    for i, (name, n) in enumerate((splits or PHANTOM_SPLITS).items()):
        ph = make_slices(n, size=size, seed=1000 + seed * 10 + i)
        out[name] = _split([(ph.images, np.full(n, ph.spacing[0], np.float32), f"phantom-{name}")])
    return ReconBundle(name="phantom", task="reconstruction", class_names=["image"], modality="ct",
                       source=f"phantom(size={size}, seed={seed})", **out)


def load_real_ct(size: int = RECON_SIZE) -> ReconBundle:
    """Real CT split by volume: train Cranium; val CT_small + TotalSegmentator crop; test TotalSegmentator DICOM."""
    from pydicom.data import get_testdata_file

    ts = shared_datasets() / "totalsegmentator_examples"
    head, spacing = read_cranium()
    train = [(*square_slices(head, spacing[1:], size, fill=-1000.0, threshold=-500.0), "cranium")]
    val = [(*ct_volume_slices(Path(get_testdata_file("CT_small.dcm")), size), "pydicom-CT_small"),
           (*ct_volume_slices(ts / "example_ct_sm.nii.gz", size), "totalseg-ct_sm")]
    test = [(*ct_volume_slices(ts / "example_ct_dicom", size), "totalseg-ct_dicom")]
    return ReconBundle(name="ct", task="reconstruction", class_names=["image"], modality="ct",
                       source="real CT (Cranium / CT_small + TotalSegmentator crop / TotalSegmentator DICOM)",
                       train=_split(train), val=_split(val), test=_split(test))


def load_real_mri(size: int = RECON_SIZE) -> ReconBundle:
    """Real brain MRI split by volume: train MNI152 + brain1; val brain2; test Colin27."""
    cases = shared_datasets() / "pyradiomics_testcases"

    from meddx.data import anatomy

    def template(volume: Any, name: str) -> tuple[np.ndarray, np.ndarray, str]:
        vol, spacing = axial_slices(volume)
        return (*square_slices(scale_magnitude(vol), spacing[1:], size, fill=0.0, threshold=0.1), name)

    train = [template(anatomy.mni152(resolution=1)["t1"], "mni152"),
             (*mri_volume_slices(cases / "brain1_image.nrrd", size), "brain1")]
    val = [(*mri_volume_slices(cases / "brain2_image.nrrd", size), "brain2")]
    test = [template(anatomy.colin27(), "colin27")]
    return ReconBundle(name="mri", task="reconstruction", class_names=["image"], modality="mri",
                       source="real brain MRI (MNI152 + pyradiomics brain1 / brain2 / Colin27)",
                       train=_split(train), val=_split(val), test=_split(test))


def load_reconstruction(spec: str, size: int | None = None, seed: int = 0) -> ReconBundle:
    """The clean-slice bundle named by ``spec`` (phantom | ct | mri)."""
    size = size or RECON_SIZE
    if size < 16:
        raise MeddxError(f"reconstruction slices must be at least 16 px, got --size {size}")
    if spec == "phantom":
        return load_phantom_ct(size, seed)
    if spec == "ct":
        return load_real_ct(size)
    if spec == "mri":
        return load_real_mri(size)
    raise MeddxError(f"reconstruction data must be one of {', '.join(SOURCES)}", spec)


def describe(bundle: ReconBundle) -> dict[str, Any]:
    """Slices per split and source volume, for the report and the benchmark."""
    def count(split: Split) -> dict[str, int]:
        names = [i.rsplit(":", 1)[0] for i in split.ids or []]
        return {n: names.count(n) for n in dict.fromkeys(names)}

    return {name: count(getattr(bundle, name)) for name in ("train", "val", "test")}
