"""The same-target sampler (views.py) and the encoder's padding invariance (model.py) of the DuoRec example."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import data  # noqa: E402
from model import DuoRec  # noqa: E402
from views import SameTargetSampler  # noqa: E402


def test_same_target_partner_differs_and_shares_the_target() -> None:
    targets = np.array([5, 3, 5, 9, 5, 3, 7])
    sampler = SameTargetSampler(targets)
    generator = torch.Generator().manual_seed(0)
    rows = np.arange(len(targets))
    for _ in range(50):
        partners = sampler.sample(rows, generator)
        assert (targets[partners] == targets).all()
        alone = np.array([t in (9, 7) for t in targets])
        assert (partners[alone] == rows[alone]).all()  # no other sample with target 9 or 7: itself
        assert (partners[~alone] != rows[~alone]).all()
    assert sampler.has_partner(rows).tolist() == [True, True, True, False, True, True, False]


def test_same_target_partner_is_uniform_over_the_others() -> None:
    targets = np.array([1, 1, 1, 1, 2])
    sampler = SameTargetSampler(targets)
    generator = torch.Generator().manual_seed(1)
    counts = Counter(sampler.sample(np.zeros(6000, dtype=np.int64), generator).tolist())
    assert set(counts) == {1, 2, 3}
    assert all(abs(c / 6000 - 1 / 3) < 0.03 for c in counts.values())


def test_same_target_sampler_works_on_a_subset_of_rows_and_is_seeded() -> None:
    targets = np.random.default_rng(0).integers(0, 20, size=500)
    sampler = SameTargetSampler(targets)
    rows = np.array([7, 3, 400, 3])
    first = sampler.sample(rows, torch.Generator().manual_seed(5))
    again = sampler.sample(rows, torch.Generator().manual_seed(5))
    assert np.array_equal(first, again)
    assert (targets[first] == targets[rows]).all()


def test_representation_does_not_depend_on_padding_or_grouping() -> None:
    torch.manual_seed(0)
    seq = data.make_synthetic(n_users=300, seed=4)
    samples = data.train_samples(seq)
    rows = np.random.default_rng(0).choice(len(samples), 64, replace=False)
    model = DuoRec(seq.n_items).eval()
    with torch.no_grad():
        grouped = model.encode(data.make_batch(seq.items, samples.end[rows], samples.length[rows]))
        padded = model.encode(data.make_batch(seq.items, samples.end[rows], samples.length[rows], bucket_edges=()))
        extra = torch.from_numpy(data.pad_inputs(seq.items, samples.end[rows], samples.length[rows]))
        wider = torch.cat([extra, torch.zeros(64, 7, dtype=torch.long)], dim=1)  # more padding after the items
        wide = model(wider, torch.from_numpy(samples.length[rows]))
    assert torch.allclose(grouped, padded, atol=1e-5)
    assert torch.allclose(grouped, wide, atol=1e-5)


def test_attention_is_causal() -> None:
    torch.manual_seed(0)
    model = DuoRec(20).eval()
    seqs = torch.tensor([[1, 2, 3, 4], [1, 2, 9, 8]])
    with torch.no_grad():
        h = model(seqs, torch.tensor([2, 2]))  # the representation at item 2 ignores what follows
    assert torch.allclose(h[0], h[1], atol=1e-6)


def test_model_follows_duorec_settings() -> None:
    model = DuoRec(100)
    assert len(model.layers) == 2 and model.layers[0].heads == 2
    assert model.item_embedding.weight.shape == (101, 64)
    assert model.layers[0].ff_in.out_features == 256
    assert model.p == 0.5 and model.layers[0].attn_p == 0.5
    assert float(model.item_embedding.weight[1:].detach().std()) == pytest.approx(0.02, rel=0.1)
    assert float(model.item_embedding.weight[0].detach().abs().sum()) == 0.0
    h = torch.randn(3, 64)
    assert model.item_scores(h).shape == (3, 100)  # padding (item 0) is not a candidate


def test_dropout_keeps_the_expected_value() -> None:
    torch.manual_seed(0)
    from model import dropout

    x = torch.ones(200_000)
    y = dropout(x, 0.5, training=True)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)
    assert torch.equal(dropout(x, 0.5, training=False), x)
