"""A folder of the user's own registration pairs as a :class:`DataBundle`.

Layout: ``fixed/<case>.nii.gz`` and ``moving/<case>.nii.gz`` (one grid for all cases), optional
``labels/fixed/<case>.nii.gz`` + ``labels/moving/<case>.nii.gz`` (integer structure maps) and optional
``landmarks/<case>.csv`` (fixed then moving point per row, voxel indices, see
:func:`meddx.data.registration_files.read_landmarks`). Cases are split 70/10/20 (at least one each) by ``seed``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from meddx.data.dataset import DataBundle
from meddx.data.registration_pairs import PairSet
from meddx.errors import MeddxError


def _cases(folder: Path) -> list[str]:
    if not (folder / "fixed").is_dir() or not (folder / "moving").is_dir():
        raise MeddxError("a registration folder needs fixed/ and moving/ sub-folders", folder)
    names = sorted(p.name.split(".")[0] for p in (folder / "fixed").iterdir() if p.name.endswith((".nii", ".nii.gz")))
    missing = [n for n in names if not _file(folder / "moving", n)]
    if missing or len(names) < 3:
        raise MeddxError(f"need >= 3 cases present in both fixed/ and moving/ (missing moving: {missing[:3]})", folder)
    return names


def _file(folder: Path, case: str) -> Path | None:
    for suffix in (".nii.gz", ".nii"):
        if (folder / f"{case}{suffix}").is_file():
            return folder / f"{case}{suffix}"
    return None


def _read_case(folder: Path, case: str, pairs: PairSet) -> tuple[float, ...]:
    from meddx.data.registration_files import read_landmarks, read_pair, scale_unit

    labels = _file(folder / "labels" / "moving", case)
    f, m, ml = read_pair(_file(folder / "fixed", case), _file(folder / "moving", case), labels)
    fl = None
    if labels is not None:
        _, _, fl = read_pair(_file(folder / "fixed", case), _file(folder / "fixed", case),
                             _file(folder / "labels" / "fixed", case))
    zeros = np.zeros(f.array.shape, np.uint8)
    lm = folder / "landmarks" / f"{case}.csv"
    empty = np.zeros((0, f.ndim))
    pairs.fixed.append(scale_unit(f.array))
    pairs.moving.append(scale_unit(m.array))
    pairs.fixed_labels.append(fl.astype(np.uint8) if fl is not None else zeros)
    pairs.moving_labels.append(ml.astype(np.uint8) if ml is not None else zeros)
    pairs.landmarks.append(read_landmarks(lm, f.ndim) if lm.is_file() else (empty, empty))
    pairs.ids.append(case)
    return f.spacing


def load_pair_folder(folder: str | Path, seed: int = 0) -> DataBundle:
    folder = Path(folder)
    names = _cases(folder)
    order = np.random.default_rng(seed).permutation(len(names))
    n_val, n_test = max(1, round(0.1 * len(names))), max(1, round(0.2 * len(names)))
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val], "train": order[n_test + n_val:]}
    out, extra, spacing = {}, {}, ()
    for split, idx in parts.items():
        pairs = PairSet()
        for i in sorted(idx):
            spacing = _read_case(folder, names[i], pairs)
        shapes = {a.shape for a in pairs.fixed}
        if len(shapes) > 1:
            raise MeddxError(f"all pairs must share one grid, found {sorted(shapes)}", folder)
        out[split], extra[split] = pairs.split()
    k = int(max(int(s.labels.max()) if s.labels.numel() else 0 for s in out.values())) + 1
    names_k = ["background"] + [f"structure {c}" for c in range(1, max(k, 2))]
    return DataBundle(name=folder.name, task="registration", class_names=names_k, modality="generic",
                      source=str(folder), extra=extra | {"spacing": list(spacing), "similarity": "lncc"}, **out)
