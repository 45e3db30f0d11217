"""Shared fixtures: tiny synthetic data files, and the real data sets in ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MEDDX_SHARED", REPO.parent / "shared" / "datasets"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared/datasets; skip (or fail when MEDDX_REQUIRE_SHARED=1) if it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        msg = f"real data not found at {path} (shared/datasets is laid beside the repo in CI)"
        if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
            pytest.fail(msg + "; MEDDX_REQUIRE_SHARED=1 forbids skipping")
        pytest.skip(msg)
    return path


def require_module(name: str):
    """``pytest.importorskip(name)``, except that MEDDX_REQUIRE_SHARED=1 (CI) turns the skip into a failure:
    a missing optional extra must not silently skip a whole test module there."""
    if os.environ.get("MEDDX_REQUIRE_SHARED") == "1":
        import importlib

        try:
            return importlib.import_module(name)
        except ImportError as exc:
            pytest.fail(f"{name} is not installed ({exc}); MEDDX_REQUIRE_SHARED=1 forbids skipping", pytrace=False)
    return pytest.importorskip(name)


def write_fake_medmnist(
    path: Path,
    n: tuple[int, int, int] = (60, 20, 20),
    size: int = 28,
    channels: int = 1,
    classes: int = 2,
    multilabel: int = 0,
    seed: int = 0,
) -> Path:
    """A learnable MedMNIST-format file: class k has a bright square at a class-specific place."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        if multilabel:
            y = rng.integers(0, 2, size=(count, multilabel))
        else:
            y = np.arange(count) % classes
            rng.shuffle(y)
            y = y[:, None]
        x = rng.integers(0, 60, size=(count, size, size) + ((channels,) if channels > 1 else ())).astype(
            np.uint8
        )
        for i in range(count):
            ks = np.flatnonzero(y[i]) if multilabel else [int(y[i, 0])]
            for k in ks:
                r, c = (k * 7) % (size - 8), (k * 11) % (size - 8)
                x[i, r : r + 8, c : c + 8] = 220
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y.astype(np.uint8)
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def fake_npz(tmp_path: Path) -> Path:
    return write_fake_medmnist(tmp_path / "fakemnist.npz")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread is faster, and immune to oversubscription on a busy 2-core machine.
    A module uses it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
