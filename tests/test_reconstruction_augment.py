"""Training degradations of reconstruction: several physical degradations per slice, turned exactly, seeded."""

from __future__ import annotations

import numpy as np
import pytest
import torch


@pytest.fixture(scope="module")
def tiny_phantom():
    from meddx.data.recon_data import load_phantom_ct

    return load_phantom_ct(32, 0, {"train": 6, "val": 2, "test": 2})


def test_dihedral_gives_the_eight_distinct_exact_turns():
    from meddx.tasks.reconstruction_augment import dihedral

    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    turns = [dihedral(x, k) for k in range(8)]
    assert len({t.tobytes() for t in turns}) == 8  # no two alike
    assert all(sorted(t.ravel()) == sorted(x.ravel()) for t in turns)  # same values, moved, not resampled
    assert np.array_equal(dihedral(x, 8), x) and np.array_equal(dihedral(x, 1), np.rot90(x, 1, axes=(1, 2)))


def test_variant_count_scales_with_the_set():
    from meddx.tasks.reconstruction_augment import variant_count

    assert variant_count(98) == 8 and variant_count(320) == 3 and variant_count(100_000) == 2


def test_low_dose_variants_are_seeded_turned_and_span_noise_levels(tiny_phantom):
    from meddx.tasks.reconstruction import ReconstructionTask
    from meddx.tasks.reconstruction_augment import dihedral

    task = ReconstructionTask("lowdose", (32, 32))
    x, y = task.training_pairs(tiny_phantom.train)
    k = len(x)
    assert x.shape == (k, 6, 1, 32, 32) and y.shape == (k, 6, 1, 32, 32) and k == 8
    nominal = task.pairs(tiny_phantom.train)
    assert torch.equal(x[0], nominal[0]) and torch.equal(y[0], nominal[1])  # variant 0: the stored pairs
    assert np.allclose(y[3, :, 0].numpy(), dihedral(y[0, :, 0].numpy(), 3))  # targets turned with the inputs
    again = ReconstructionTask("lowdose", (32, 32)).training_pairs(tiny_phantom.train)
    assert torch.equal(again[0], x)  # deterministic
    noise = [float((x[i] - y[i]).std()) for i in range(k)]
    assert len({round(v, 6) for v in noise}) == k  # every variant a new noise draw
    assert max(noise[1:]) > noise[0] * 1.2  # larger patients / lower doses than the nominal scan


def test_make_batch_draws_variants_unless_augmentation_is_off(tiny_phantom):
    from meddx.data.augment import policy_for
    from meddx.tasks.reconstruction import ReconstructionTask

    task = ReconstructionTask("sparseview", (32, 32), patch=32)
    idx = torch.arange(6).repeat(4)
    x, y = task.make_batch(tiny_phantom.train, idx, None, torch.device("cpu"), policy_for("ct"),
                           torch.Generator().manual_seed(0))
    stored = task.pairs(tiny_phantom.train)[1]
    turned = sum(not torch.equal(y[i], stored[i % 6]) for i in range(len(idx)))
    assert 0 < turned < len(idx)  # some stored pairs, some turned variants
    x, y = task.make_batch(tiny_phantom.train, idx, None, torch.device("cpu"), None, None)
    assert all(torch.equal(y[i], stored[i % 6]) for i in range(len(idx)))
