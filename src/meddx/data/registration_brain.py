"""Registration pairs on real brain anatomy (MNI152 from nilearn, Colin27 from mricron-data), at 4 mm so that
training fits two CPU cores.

``brain2d``: axial slices of MNI152 (T1; labels other-brain / GM / WM) each deformed by known random fields;
training uses even slices, validation and test the odd slices between them (held-out slices) with other seeds.
``brain3d``: the whole MNI152 volume under known random fields (test seeds never used in training).
``colin_mni_pair``: the real inter-subject pair, Colin27 (moving) onto MNI152 (fixed), scored on the brain mask
both carry. ``itk2d``: the ITK proton-density slice (train) and, for testing, the T1 of the same slice deformed
(a multimodal pair scored with mutual information).
"""

from __future__ import annotations

import numpy as np

from meddx.data.dataset import DataBundle
from meddx.data.registration_pairs import PairSet, add_pair

BRAIN_STRUCTURES = ["background", "other brain", "grey matter", "white matter"]
SHAPE_3D = (48, 64, 56)  # MNI152 at 4 mm (48 x 59 x 50), padded to multiples of 8
SHAPE_2D = (64, 56)


def _prepare(array: np.ndarray, shape: tuple[int, ...], order: int) -> np.ndarray:
    """Halve the 2 mm grid (4 mm voxels) and centre-pad to ``shape``."""
    from scipy.ndimage import zoom

    from meddx.data.volumes import pad_or_crop

    return pad_or_crop(zoom(array, 0.5, order=order), shape)


def mni152_labelled() -> tuple[np.ndarray, np.ndarray]:
    """MNI152 T1 in [0, 1] and labels (1 other brain, 2 GM, 3 WM) at 4 mm, (48, 64, 56)."""
    from meddx.data.anatomy import mni152
    from meddx.data.registration_files import scale_unit

    m = mni152()
    labels = np.zeros(m["t1"].array.shape, np.uint8)
    labels[m["brain"].array > 0.5] = 1
    labels[m["gm"].array > 0.5] = 2
    labels[m["wm"].array > 0.5] = 3
    return _prepare(scale_unit(m["t1"].array), SHAPE_3D, 1), _prepare(labels, SHAPE_3D, 0)


def _bundle(name: str, splits: dict[str, PairSet], spacing: list[float], similarity: str = "lncc",
            classes: list[str] | None = None) -> DataBundle:
    out, extra = {}, {}
    for split, pairs in splits.items():
        out[split], extra[split] = pairs.split()
    return DataBundle(name=name, task="registration", class_names=classes or list(BRAIN_STRUCTURES), modality="mr",
                      source=f"{name} (MNI152/Colin27, known random deformations)",
                      extra=extra | {"spacing": spacing, "similarity": similarity}, **out)


def load_brain2d(seed: int = 0, per_slice: int = 12) -> DataBundle:
    image, labels = mni152_labelled()
    z = np.arange(14, 36)  # axial slices through the cerebrum (4 mm grid)
    plan = {"train": (z[::2], per_slice), "val": (z[1::4], 1), "test": (z[3::4], 2)}
    splits = {}
    for s, (name, (slices, reps)) in enumerate(plan.items()):
        pairs = PairSet()
        for k in slices:
            for r in range(reps):
                rng = np.random.default_rng([seed, 21, s, int(k), r])
                add_pair(pairs, rng, image[k][:SHAPE_2D[0], :SHAPE_2D[1]], labels[k][:SHAPE_2D[0], :SHAPE_2D[1]],
                         0.06 * max(SHAPE_2D), f"brain2d-{name}-z{k}-{r}")
        splits[name] = pairs
    return _bundle("brain2d", splits, [4.0, 4.0])


def load_brain3d(seed: int = 0, n_train: int = 48) -> DataBundle:
    image, labels = mni152_labelled()
    splits = {}
    for s, (name, n) in enumerate({"train": n_train, "val": 4, "test": 8}.items()):
        pairs = PairSet()
        for i in range(n):
            add_pair(pairs, np.random.default_rng([seed, 31, s, i]), image, labels, 0.06 * max(SHAPE_3D),
                     f"brain3d-{name}-{i}")
        splits[name] = pairs
    return _bundle("brain3d", splits, [4.0, 4.0, 4.0])


def colin_mni_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(fixed MNI152 T1, moving Colin27 T1, fixed brain mask, moving brain mask) at 4 mm, (48, 64, 56)."""
    from meddx.data.anatomy import colin27_on_mni152, mni152
    from meddx.data.registration_files import scale_unit

    m, c = mni152(), colin27_on_mni152()
    fixed = _prepare(scale_unit(m["t1"].array), SHAPE_3D, 1)
    moving = _prepare(scale_unit(c["t1"]), SHAPE_3D, 1)
    return (fixed, moving, _prepare((m["brain"].array > 0.5).astype(np.uint8), SHAPE_3D, 0),
            _prepare(c["brain"], SHAPE_3D, 0))


def load_itk2d(seed: int = 0, n_train: int = 200) -> DataBundle:
    """ITK slice pairs: PD->PD for training, T1 (fixed) -> PD (moving) for val/test (multimodal, MI loss)."""
    from scipy.ndimage import zoom

    from meddx.data.anatomy import itk_brain_slices
    from meddx.data.registration_files import scale_unit
    from meddx.data.volumes import pad_or_crop

    sl = itk_brain_slices()
    pd, t1 = (pad_or_crop(zoom(scale_unit(sl[k]), 0.5, order=1), (112, 96)) for k in ("pd", "t1"))
    labels = (pd > 0.1).astype(np.uint8)  # head mask from the PD slice
    splits = {}
    for s, (name, n) in enumerate({"train": n_train, "val": 8, "test": 16}.items()):
        pairs = PairSet()
        for i in range(n):
            add_pair(pairs, np.random.default_rng([seed, 41, s, i]), pd, labels, 6.0, f"itk2d-{name}-{i}",
                     fixed_source=t1 if name != "train" else None)
        splits[name] = pairs
    return _bundle("itk2d", splits, [2.0, 2.0], similarity="mi", classes=["background", "head"])
