"""Mixup: a seeded batch repeats, the mixed loss equals the loss on mixed targets, and training uses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from meddx.data.mixup import MixedTargets, mix_batch
from meddx.kinds import BINARY, MULTI_CLASS, MULTI_LABEL, ORDINAL
from meddx.tasks.classification import ClassificationTask


def test_a_seeded_mix_repeats_and_is_a_convex_pairing():
    x = torch.randn(8, 1, 6, 6)
    y = torch.arange(8)
    x1, t1 = mix_batch(x, y, 0.4, torch.Generator().manual_seed(3))
    x2, t2 = mix_batch(x, y, 0.4, torch.Generator().manual_seed(3))
    assert torch.equal(x1, x2) and t1.lam == t2.lam and torch.equal(t1.b, t2.b)
    assert 0.0 <= t1.lam <= 1.0 and torch.equal(t1.a, y)
    assert sorted(t1.b.tolist()) == list(range(8))  # a permutation of the batch
    torch.testing.assert_close(x1, t1.lam * x + (1 - t1.lam) * x[t1.b])
    x3, t3 = mix_batch(x, y, 0.4, torch.Generator().manual_seed(4))
    assert t3.lam != t1.lam


def test_mixup_alpha_must_be_positive():
    with pytest.raises(ValueError, match="alpha"):
        mix_batch(torch.zeros(2, 1), torch.zeros(2, dtype=torch.long), 0.0)


def test_the_mixed_loss_is_cross_entropy_on_mixed_soft_targets_with_label_smoothing():
    torch.manual_seed(0)
    out, a, b = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0]), torch.tensor([2, 2, 0, 1, 1])
    task = ClassificationTask(MULTI_CLASS, 3, label_smoothing=0.1)
    mixed = MixedTargets(a, b, 0.3).loss(task.loss, out)
    soft = 0.3 * F.one_hot(a, 3).float() + 0.7 * F.one_hot(b, 3).float()
    torch.testing.assert_close(mixed, F.cross_entropy(out, soft, label_smoothing=0.1))


def test_the_mixed_loss_is_bce_on_mixed_targets_for_multi_label():
    torch.manual_seed(1)
    out = torch.randn(4, 3)
    a, b = torch.randint(0, 2, (4, 3)), torch.randint(0, 2, (4, 3))
    task = ClassificationTask(MULTI_LABEL, 3)
    mixed = MixedTargets(a, b, 0.8).loss(task.loss, out)
    torch.testing.assert_close(mixed, F.binary_cross_entropy_with_logits(out, 0.8 * a.float() + 0.2 * b.float()))


@pytest.mark.parametrize("kind,ordinal_loss", [(BINARY, "ce"), (ORDINAL, "emd")])
def test_a_mixup_task_mixes_training_batches_and_trains(kind, ordinal_loss):
    from meddx.data.augment import Normalization
    from meddx.data.split import Split

    n_classes = 2 if kind == BINARY else 4
    split = Split(torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8), torch.arange(16) % n_classes)
    task = ClassificationTask(kind, n_classes, ordinal_loss=ordinal_loss, mixup=0.4)
    norm = Normalization(1 / 255, [0.5], [0.25])
    x, y = task.make_batch(split, torch.arange(16), norm, torch.device("cpu"), None, torch.Generator().manual_seed(0))
    assert isinstance(y, MixedTargets) and 0 < y.lam < 1
    assert not torch.allclose(x, norm(split.images.float()))  # the images were mixed
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, n_classes))
    loss = task.training_loss(model, x, y)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss) and model[1].weight.grad.abs().sum() > 0
    plain = ClassificationTask(kind, n_classes, ordinal_loss=ordinal_loss)
    assert isinstance(plain.make_batch(split, torch.arange(16), norm, torch.device("cpu"), None, None)[1],
                      torch.Tensor)


def test_mixup_is_a_validated_opt_in_training_option():
    from meddx.engine.config import TrainConfig
    from meddx.errors import MeddxError

    assert TrainConfig().mixup == 0.0  # off by default (README "Default recipe": the protocol's numbers)
    with pytest.raises(MeddxError, match="mixup alpha"):
        TrainConfig(mixup=-0.1).validate()


def test_train_with_mixup_records_it_and_finishes(tmp_path):
    import json

    from meddx.engine.config import TrainConfig
    from meddx.engine.fit import fit

    run = fit(TrainConfig(data="phantom", epochs=1, batch_size=32, mixup=0.2, out=str(tmp_path), name="mix",
                          progress=False, size=28))
    assert json.loads((run.path / "config.json").read_text())["mixup"] == 0.2
    assert len(run.read_history()) == 1 and (run.path / "best.safetensors").is_file()
