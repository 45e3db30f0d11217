"""The synthetic CT phantom: determinism, annotations that agree with the images, HU ranges, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from meddx.data.phantom import (
    PhantomSlices,
    PhantomVolumes,
    make_slices,
    make_volumes,
    to_uint8,
    window,
)
from meddx.errors import MeddxError


@pytest.fixture(scope="module")
def slices() -> PhantomSlices:
    return make_slices(40, size=48, seed=7)


@pytest.fixture(scope="module")
def volumes() -> PhantomVolumes:
    return make_volumes(3, shape=(16, 32, 32), seed=5, nodule_fraction=0.7)


def _same(a: PhantomSlices | PhantomVolumes, b: PhantomSlices | PhantomVolumes, n: int) -> bool:
    return (
        np.array_equal(a.images[:n], b.images[:n])
        and np.array_equal(a.labels[:n], b.labels[:n])
        and np.array_equal(a.masks[:n], b.masks[:n])
        and np.array_equal(a.lung_masks[:n], b.lung_masks[:n])
        and all(np.array_equal(x, y) for x, y in zip(a.boxes[:n], b.boxes[:n]))
        and all(np.array_equal(x, y) for x, y in zip(a.centres[:n], b.centres[:n]))
        and all(np.array_equal(x, y) for x, y in zip(a.diameters[:n], b.diameters[:n]))
    )


# --------------------------------------------------------------------------- 2D


def test_slices_shapes_and_dtypes(slices: PhantomSlices) -> None:
    n, size = 40, 48
    assert len(slices) == n
    assert slices.images.shape == (n, size, size) and slices.images.dtype == np.float32
    assert slices.labels.shape == (n,) and slices.labels.dtype == np.int64
    assert slices.masks.shape == (n, size, size) and slices.masks.dtype == np.uint8
    assert slices.lung_masks.shape == (n, size, size) and slices.lung_masks.dtype == np.uint8
    assert set(np.unique(slices.lung_masks)) <= {0, 1}
    assert len(slices.boxes) == len(slices.centres) == len(slices.diameters) == n
    for box, centre, diam in zip(slices.boxes, slices.centres, slices.diameters):
        k = len(box)
        assert box.shape == (k, 4) and box.dtype == np.float32
        assert centre.shape == (k, 2) and centre.dtype == np.float32
        assert diam.shape == (k,) and diam.dtype == np.float32
    assert np.isfinite(slices.images).all()
    assert len(slices.spacing) == 2 and all(isinstance(s, float) for s in slices.spacing)
    # the body is about 350 mm wide
    assert 300 < slices.spacing[1] * 0.9 * size < 400


def test_slices_deterministic_and_prefix_stable() -> None:
    a = make_slices(5, size=32, seed=3)
    b = make_slices(12, size=32, seed=3)
    assert _same(a, b, 5)
    assert _same(a, make_slices(5, size=32, seed=3), 5)
    c = make_slices(5, size=32, seed=4)
    assert not np.array_equal(a.images, c.images)
    assert not np.array_equal(b.images[0], b.images[1])


def test_slices_labels_masks_boxes_agree(slices: PhantomSlices) -> None:
    assert np.array_equal(slices.labels, (slices.masks.max(axis=(1, 2)) > 0).astype(np.int64))
    assert 0 < slices.labels.mean() < 1
    for i in range(len(slices)):
        k = len(slices.boxes[i])
        assert slices.masks[i].max() == k
        assert (k > 0) == bool(slices.labels[i])
        for j in range(k):
            ys, xs = np.nonzero(slices.masks[i] == j + 1)
            assert len(ys) > 0
            x1, y1, x2, y2 = slices.boxes[i][j]
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)  # tight
            cy, cx = slices.centres[i][j]
            assert x1 - 1 <= cx <= x2 and y1 - 1 <= cy <= y2
            assert slices.diameters[i][j] > 1.0
        # nodules lie inside the lungs
        assert not (slices.masks[i] > 0)[slices.lung_masks[i] == 0].any()


def test_slices_hounsfield_ranges(slices: PhantomSlices) -> None:
    imgs = slices.images
    corners = np.concatenate([imgs[:, :4, :4], imgs[:, :4, -4:], imgs[:, -4:, :4], imgs[:, -4:, -4:]], axis=1)
    assert -1050 < corners.mean() < -950  # air around the body
    lungs = slices.lung_masks.astype(bool)
    assert -950 <= imgs[lungs].mean() <= -700  # parenchyma ~ -850 HU plus vessels and nodules
    for img, lung, label in zip(imgs, lungs, slices.labels):
        assert lung.sum() > 50
        if not label:  # (a large nodule can fill much of a small lung)
            assert -950 <= np.median(img[lung]) <= -700
    centre = imgs[:, 20:28, 20:28]  # mediastinum: soft tissue
    assert -100 < np.median(centre) < 150
    assert imgs.max() < 1500 and imgs.min() > -1300
    assert imgs.max() > 400  # bone


def test_nodule_fraction_extremes() -> None:
    neg = make_slices(8, size=32, seed=1, nodule_fraction=0.0)
    assert not neg.labels.any() and not neg.masks.any()
    assert all(len(b) == 0 for b in neg.boxes)
    pos = make_slices(8, size=32, seed=1, nodule_fraction=1.0, max_nodules=1)
    assert pos.labels.all()
    assert all(len(b) == 1 for b in pos.boxes)


def test_nodules_vary_and_some_touch_the_wall() -> None:
    s = make_slices(60, size=64, seed=2, nodule_fraction=1.0, max_nodules=3)
    diam = np.concatenate(s.diameters)
    assert diam.min() < 3.5 and diam.max() > 7.0  # 2..10 px at 64 px
    counts = [len(b) for b in s.boxes]
    assert min(counts) == 1 and max(counts) >= 2
    touching = 0
    for mask, lung in zip(s.masks, s.lung_masks):
        outside = np.pad(lung == 0, 1, constant_values=True)
        near_wall = outside[:-2, 1:-1] | outside[2:, 1:-1] | outside[1:-1, :-2] | outside[1:-1, 2:]
        touching += int(((mask > 0) & near_wall).any())
    assert touching >= 5  # juxtapleural nodules exist


def test_not_trivially_separable() -> None:
    """The brightest lung pixel must not give the label away (vessel cross-sections look like nodules)."""
    s = make_slices(200, size=64, seed=11)
    peak = np.array([img[lung.astype(bool)].max() for img, lung in zip(s.images, s.lung_masks)])
    best = max(((peak > t) == s.labels).mean() for t in np.unique(peak))
    assert best < 0.95


# --------------------------------------------------------------------------- 3D


def test_volumes_shapes_labels_boxes(volumes: PhantomVolumes) -> None:
    n, shape = 3, (16, 32, 32)
    assert len(volumes) == n
    assert volumes.images.shape == (n, *shape) and volumes.images.dtype == np.float32
    assert volumes.masks.shape == (n, *shape) and volumes.masks.dtype == np.uint8
    assert volumes.lung_masks.shape == (n, *shape) and volumes.lung_masks.dtype == np.uint8
    assert volumes.labels.dtype == np.int64
    assert np.array_equal(volumes.labels, (volumes.masks.reshape(n, -1).max(axis=1) > 0).astype(np.int64))
    assert len(volumes.spacing) == 3 and all(isinstance(s, float) for s in volumes.spacing)
    for i in range(n):
        k = len(volumes.boxes[i])
        assert volumes.boxes[i].shape == (k, 6) and volumes.boxes[i].dtype == np.float32
        assert volumes.centres[i].shape == (k, 3) and volumes.diameters[i].shape == (k,)
        assert volumes.masks[i].max() == k
        for j in range(k):
            zs, ys, xs = np.nonzero(volumes.masks[i] == j + 1)
            expect = (zs.min(), ys.min(), xs.min(), zs.max() + 1, ys.max() + 1, xs.max() + 1)
            assert tuple(volumes.boxes[i][j]) == expect
            z1, y1, x1, z2, y2, x2 = volumes.boxes[i][j]
            cz, cy, cx = volumes.centres[i][j]
            assert z1 - 1 <= cz <= z2 and y1 - 1 <= cy <= y2 and x1 - 1 <= cx <= x2
        assert not (volumes.masks[i] > 0)[volumes.lung_masks[i] == 0].any()
        lung = volumes.lung_masks[i].astype(bool)
        assert lung.sum() > 200
        assert -950 <= np.median(volumes.images[i][lung]) <= -700
    assert -950 <= volumes.images[volumes.lung_masks.astype(bool)].mean() <= -700
    assert -1050 < volumes.images[:, :, :3, :3].mean() < -950


def test_volumes_deterministic_prefix_and_fractions(volumes: PhantomVolumes) -> None:
    again = make_volumes(2, shape=(16, 32, 32), seed=5, nodule_fraction=0.7)
    assert _same(again, volumes, 2)
    other = make_volumes(1, shape=(16, 32, 32), seed=6, nodule_fraction=0.7)
    assert not np.array_equal(other.images[0], volumes.images[0])
    neg = make_volumes(2, shape=(12, 24, 24), seed=0, nodule_fraction=0.0)
    assert not neg.labels.any() and not neg.masks.any()
    pos = make_volumes(2, shape=(12, 24, 24), seed=0, nodule_fraction=1.0, max_nodules=2)
    assert pos.labels.all() and all(1 <= len(b) <= 2 for b in pos.boxes)


# --------------------------------------------------------------------------- display


def test_window_and_uint8() -> None:
    hu = np.array([-3000.0, -1350.0, -600.0, 150.0, 3000.0])
    w = window(hu)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    u = to_uint8(hu)
    assert u.dtype == np.uint8
    assert u.tolist() == [0, 0, 128, 255, 255]
    s = make_slices(2, size=32, seed=0)
    w = window(s.images)
    assert w.shape == s.images.shape and 0.0 <= w.min() and w.max() <= 1.0
    assert window(np.array([40.0]), level=40.0, width=400.0)[0] == pytest.approx(0.5)
    with pytest.raises(MeddxError, match="width"):
        window(hu, width=0)


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be >= 1, got 0"),
        ({"n": 2, "size": 8}, "phantom size must be >= 16, got 8"),
        ({"n": 2, "size": 32.5}, "size must be an integer"),
        ({"n": 2, "seed": -1}, "seed must be >= 0, got -1"),
        ({"n": 2, "nodule_fraction": 1.5}, "nodule_fraction must be in \\[0, 1\\], got 1.5"),
        ({"n": 2, "nodule_fraction": -0.1}, "nodule_fraction"),
        ({"n": 2, "nodule_fraction": math.nan}, "nodule_fraction"),
        ({"n": 2, "nodule_fraction": "half"}, "nodule_fraction"),
        ({"n": 2, "max_nodules": 0}, "max_nodules must be >= 1, got 0"),
        ({"n": True}, "n must be an integer"),
    ],
)
def test_make_slices_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(MeddxError, match=message):
        make_slices(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be >= 1, got 0"),
        ({"n": 1, "shape": (32, 32)}, "shape must be \\(D, H, W\\)"),
        ({"n": 1, "shape": 32}, "shape must be \\(D, H, W\\)"),
        ({"n": 1, "shape": (4, 32, 32)}, "depth"),
        ({"n": 1, "shape": (16, 8, 32)}, "height"),
        ({"n": 1, "nodule_fraction": 2}, "nodule_fraction"),
        ({"n": 1, "max_nodules": 300}, "max_nodules must be <= 255"),
    ],
)
def test_make_volumes_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(MeddxError, match=message):
        make_volumes(**kwargs)
