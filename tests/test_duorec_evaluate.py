"""Ranking metrics and sampled negatives of the DuoRec example (examples/duorec/evaluate.py)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import data  # noqa: E402
import evaluate  # noqa: E402
from model import DuoRec  # noqa: E402


def test_full_rank_counts_ties_against_the_target() -> None:
    scores = torch.tensor(
        [
            [0.5, 0.9, 0.5, 0.1],  # target 0: 0.9 is higher, item 2 ties -> rank 2
            [0.2, 0.3, 0.4, 0.5],  # target 3: best -> rank 0
            [1.0, 1.0, 1.0, 1.0],  # a constant model ranks the target last
        ]
    )
    assert evaluate.full_ranks(scores, torch.tensor([0, 3, 1])).tolist() == [2, 0, 3]


def test_sampled_rank_counts_only_the_negatives_and_ties_against_the_target() -> None:
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1, 0.7]])
    negatives = torch.tensor([[2, 3]])  # item 1 (0.9) and item 4 are not among the candidates
    assert evaluate.sampled_ranks(scores, torch.tensor([0]), negatives).tolist() == [1]


def test_metrics_on_hand_computed_ranks() -> None:
    ranks = torch.tensor([0, 2, 9, 25])
    m = evaluate.ranking_metrics(ranks, ks=(5, 10, 20))
    assert m["Recall@5"] == pytest.approx(2 / 4)
    assert m["Recall@10"] == pytest.approx(3 / 4)
    assert m["Recall@20"] == pytest.approx(3 / 4)
    assert m["NDCG@5"] == pytest.approx((1 + 1 / math.log2(4)) / 4)
    assert m["NDCG@10"] == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(11)) / 4)
    assert m["MRR@5"] == pytest.approx((1 + 1 / 3) / 4)
    assert m["MRR@10"] == pytest.approx((1 + 1 / 3 + 1 / 10) / 4)
    assert m["MRR@20"] == m["MRR@10"]
    assert set(m) == {f"{name}@{k}" for name in ("NDCG", "MRR", "Recall") for k in (5, 10, 20)}


def test_metrics_of_tied_scores_from_end_to_end() -> None:
    # Three users; the second user's target ties with two other items.
    scores = torch.tensor([[3.0, 2.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    ranks = evaluate.full_ranks(scores, torch.tensor([0, 1, 0]))
    assert ranks.tolist() == [0, 2, 3]
    m = evaluate.ranking_metrics(ranks, ks=(1, 3))
    assert m["Recall@1"] == pytest.approx(1 / 3)
    assert m["Recall@3"] == pytest.approx(2 / 3)
    assert m["NDCG@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)


def test_sampled_negatives_exclude_the_target_and_are_distinct() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 150, (500,), generator=generator)
    negatives = evaluate.sample_negatives(targets, torch.ones(150), n=100, generator=generator)
    assert negatives.shape == (500, 100)
    assert not (negatives == targets[:, None]).any()
    assert all(len(set(row)) == 100 for row in negatives.tolist())


def test_popularity_negatives_follow_the_weights() -> None:
    weights = torch.tensor([0.0, 1.0, 1.0, 2.0, 4.0, 0.0])
    targets = torch.full((20_000,), 4)
    generator = torch.Generator().manual_seed(1)
    negatives = evaluate.sample_negatives(targets, weights, n=1, generator=generator)
    counts = torch.bincount(negatives[:, 0], minlength=6).double() / 20_000
    assert counts[0] == 0 and counts[5] == 0 and counts[4] == 0  # zero weight, and the target itself
    assert counts[1:4].tolist() == pytest.approx([0.25, 0.25, 0.5], abs=0.02)


def test_sampling_without_replacement_is_sequential() -> None:
    # Two draws from weights (3, 1, 1), one by one without replacement:
    # P({1, 2}) = P(1 then 2) + P(2 then 1) = 1/5 * 1/4 + 1/5 * 1/4 = 1/10.
    generator = torch.Generator().manual_seed(2)
    negatives = evaluate.sample_negatives(
        torch.full((30_000,), 3), torch.tensor([3.0, 1.0, 1.0, 0.0]), n=2, generator=generator
    )
    without_zero = (negatives != 0).all(1).double().mean()
    assert float(without_zero) == pytest.approx(1 / 10, abs=0.006)  # 3.5 standard errors


def test_too_few_items_for_the_negatives_is_an_error() -> None:
    with pytest.raises(ValueError, match="cannot draw 100"):
        evaluate.sample_negatives(torch.tensor([0]), torch.ones(50))


def test_evaluation_ranks_all_items_except_padding() -> None:
    torch.manual_seed(0)
    seq = data.make_synthetic(n_users=300, seed=3)
    model = DuoRec(seq.n_items).eval()
    samples = data.eval_samples(seq, "test")
    eval_set = evaluate.make_eval_set(samples, seq.item_counts())
    assert set(eval_set.negatives) == {"uni100", "pop100"}
    ranks = evaluate.score_ranks(model, seq.items, eval_set, torch.device("cpu"), batch_size=64)
    # Reference: one padded tensor, scores over items 1..n, computed directly.
    padded = torch.from_numpy(data.pad_inputs(seq.items, samples.end, samples.length))
    with torch.no_grad():
        scores = model(padded, torch.from_numpy(samples.length)) @ model.item_embedding.weight[1:].T
    targets = torch.from_numpy(samples.target - 1)
    assert scores.shape[1] == seq.n_items
    assert torch.equal(ranks["full"], evaluate.full_ranks(scores, targets))
    assert torch.equal(ranks["uni100"], evaluate.sampled_ranks(scores, targets, eval_set.negatives["uni100"]))
    metrics = evaluate.evaluate(model, seq.items, eval_set, torch.device("cpu"))
    assert {"NDCG@10", "MRR@10", "Recall@10", "uni100/NDCG@10", "pop100/Recall@20"} <= set(metrics)
    table = evaluate.metrics_table(metrics)
    assert "uni100" in table and "pop100" in table and "NDCG@10" in table


def test_small_catalogues_skip_the_sampled_settings() -> None:
    samples = data.Samples(np.array([1]), np.array([1]), np.array([0]), np.array([2]))
    eval_set = evaluate.make_eval_set(samples, np.array([0, 5, 5, 5]))
    assert eval_set.negatives == {}
