"""CL4SRec's augmentations (examples/duorec/augment.py): each operator on hand-made sequences, the seeding,
the choice of operators, and the pair of views as an encoder batch."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import augment  # noqa: E402
import data  # noqa: E402
from model import DuoRec  # noqa: E402

MASK_ID = 999
LONG = list(range(1, 51))  # 50 items, the maximum length
SEQUENCES = ([7], [3, 4], LONG)  # lengths 1, 2 and 50


def padded(*seqs: list[int], width: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded `(R, width)` rows and their lengths."""
    out = np.zeros((len(seqs), width), dtype=np.int64)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = seq
    return out, np.array([len(seq) for seq in seqs], dtype=np.int64)


def rows_of(seqs: np.ndarray, lengths: np.ndarray) -> list[list[int]]:
    """The items of each row, after checking that only padding (0) follows them."""
    assert (seqs[np.arange(seqs.shape[1])[None, :] >= lengths[:, None]] == 0).all(), "padding changed"
    return [seqs[r, : lengths[r]].tolist() for r in range(len(lengths))]


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------------- crop


@pytest.mark.parametrize("ratio", [0.0, 0.6, 1.0])
def test_crop_keeps_a_window_of_the_expected_length(ratio: float) -> None:
    seqs, lengths = padded(*SEQUENCES)
    for seed in range(20):
        cropped, kept = augment.item_crop(seqs, lengths, ratio, generator(seed))
        assert kept.tolist() == [max(1, int(ratio * n)) for n in lengths]  # 0.6: 1, 1, 30; 0: 1 each; 1: n
        for original, view in zip(SEQUENCES, rows_of(cropped, kept), strict=True):
            starts = [i for i in range(len(original) - len(view) + 1) if original[i : i + len(view)] == view]
            assert starts, (original, view)  # consecutive items of the original, in order
    full, kept = augment.item_crop(seqs, lengths, 1.0, generator())
    assert np.array_equal(full, seqs) and np.array_equal(kept, lengths)


def test_crop_start_is_uniform() -> None:
    seqs, lengths = padded(*[LONG] * 4000)
    cropped, _ = augment.item_crop(seqs, lengths, 0.6, generator(1))
    first = Counter(cropped[:, 0].tolist())  # 30 of 50 items: the window starts at item 1 .. 21
    assert set(first) == set(range(1, 22))
    assert all(abs(count / 4000 - 1 / 21) < 0.02 for count in first.values())


# ------------------------------------------------------------------------------------------------- mask


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
def test_mask_replaces_the_expected_number_of_items(ratio: float) -> None:
    seqs, lengths = padded(*SEQUENCES)
    masked, kept = augment.item_mask(seqs, lengths, ratio, MASK_ID, generator(3))
    assert np.array_equal(kept, lengths)
    for original, view in zip(SEQUENCES, rows_of(masked, kept), strict=True):
        assert sum(item == MASK_ID for item in view) == int(ratio * len(original))  # 0.3: 0, 0, 15
        assert all(v in (o, MASK_ID) for o, v in zip(original, view, strict=True))  # the rest stays in place


def test_mask_positions_are_uniform_and_never_padding() -> None:
    seqs, lengths = padded(*[LONG[:20]] * 3000)  # 20 items in a width of 50
    masked, _ = augment.item_mask(seqs, lengths, 0.3, MASK_ID, generator(4))
    share = (masked == MASK_ID).mean(axis=0)
    assert np.allclose(share[:20], 0.3, atol=0.03) and (share[20:] == 0).all()


def test_mask_id_zero_is_refused() -> None:
    seqs, lengths = padded(LONG)
    with pytest.raises(ValueError, match="padding"):
        augment.Augmentations().views(seqs, lengths, mask_id=0, generator=generator())


# ---------------------------------------------------------------------------------------------- reorder


@pytest.mark.parametrize("ratio", [0.0, 0.6, 1.0])
def test_reorder_shuffles_one_window_only(ratio: float) -> None:
    seqs, lengths = padded(*SEQUENCES)
    changed = 0
    for seed in range(20):
        shuffled, kept = augment.item_reorder(seqs, lengths, ratio, generator(seed))
        assert np.array_equal(kept, lengths)
        for original, view in zip(SEQUENCES, rows_of(shuffled, kept), strict=True):
            assert sorted(view) == sorted(original)  # the same items
            moved = [i for i, (o, v) in enumerate(zip(original, view, strict=True)) if o != v]
            if moved:  # inside one window of int(ratio * n) consecutive positions
                assert moved[-1] - moved[0] < int(ratio * len(original))
                changed += 1
    assert changed == 0 if ratio == 0.0 else changed > 0
    if ratio == 1.0:  # both orders of a 2-item sequence occur
        views = {tuple(augment.item_reorder(*padded([3, 4]), 1.0, generator(s))[0][0, :2]) for s in range(20)}
        assert views == {(3, 4), (4, 3)}


def test_one_item_sequences_are_left_as_they_are() -> None:
    seqs, lengths = padded([7], [8])
    views = augment.Augmentations(crop=0.1, mask=0.9, reorder=1.0).views(seqs, lengths, MASK_ID, generator())
    for view, view_lengths in views:
        assert rows_of(view, view_lengths) == [[7], [8]]


# ------------------------------------------------------------------------------------- views and seeds


def test_distinct_pairs_use_two_different_operators_uniformly() -> None:
    operators = augment.choose_operators(6000, "distinct", generator(5))
    assert (operators[:, 0] != operators[:, 1]).all()
    pairs = Counter(map(tuple, operators.tolist()))
    assert len(pairs) == 6 and all(abs(c / 6000 - 1 / 6) < 0.02 for c in pairs.values())
    independent = augment.choose_operators(6000, "independent", generator(5))
    assert abs((independent[:, 0] == independent[:, 1]).mean() - 1 / 3) < 0.03


def test_views_are_a_function_of_the_seed() -> None:
    seqs, lengths = padded(*[LONG] * 8, [3, 4], [7])
    make = augment.Augmentations()
    first = make.views(seqs, lengths, MASK_ID, generator(7))
    again = make.views(seqs, lengths, MASK_ID, generator(7))
    other = make.views(seqs, lengths, MASK_ID, generator(8))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))


def test_bad_ratios_are_refused() -> None:
    with pytest.raises(ValueError, match=r"crop ratio must be a number in \[0, 1\], got 1.5"):
        augment.Augmentations(crop=1.5)
    with pytest.raises(ValueError, match="pairs must be one of"):
        augment.Augmentations(pairs="same")


def test_view_pair_batch_keeps_inputs_padding_and_length_groups() -> None:
    seq = data.make_synthetic(n_users=300, seed=4)
    samples = data.train_samples(seq)
    model = DuoRec(seq.n_items, mask_token=True)
    assert model.mask_id == seq.n_items + 1
    views = augment.CL4SRecViews(seq.items, samples, augment.Augmentations(), model.mask_id, data.BUCKET_EDGES)
    rows = np.random.default_rng(0).choice(len(samples), 64, replace=False)
    batch = views.batch(rows, generator(9))
    assert batch.size == 3 * 64
    order = torch.cat([g.rows for g in batch.groups])
    assert sorted(order.tolist()) == list(range(3 * 64))
    seqs = np.zeros((3 * 64, data.MAX_LEN), dtype=np.int64)
    lengths = np.zeros(3 * 64, dtype=np.int64)
    edges = (0, *data.BUCKET_EDGES, data.MAX_LEN)
    for group in batch.groups:
        width = group.seqs.shape[1]
        assert width == int(group.lengths.max())  # each group padded to its own longest row only
        bucket = np.searchsorted(data.BUCKET_EDGES, group.lengths.numpy(), side="left")
        assert len(set(bucket.tolist())) == 1 and edges[bucket[0]] < width <= edges[bucket[0] + 1]
        seqs[group.rows.numpy(), :width] = group.seqs.numpy()
        lengths[group.rows.numpy()] = group.lengths.numpy()
    rows_of(seqs, lengths)  # padding after every row's items
    inputs = data.pad_inputs(seq.items, samples.end[rows], samples.length[rows])
    assert np.array_equal(seqs[:64, : inputs.shape[1]], inputs)  # the first 64 rows are the samples themselves
    for view in (slice(64, 128), slice(128, 192)):
        assert (lengths[view] <= samples.length[rows]).all() and (lengths[view] >= 1).all()
    assert (seqs[:64] != model.mask_id).all() and (seqs[64:] == model.mask_id).any()
    model.eval()
    with torch.no_grad():
        z = model.encode(batch)
        flat = model.encode(augment.padded_batch([(seqs, lengths)], ()))  # one padded tensor, no groups
    assert z.shape == (3 * 64, 64) and torch.allclose(z, flat, atol=1e-5)
    only_views = views.batch(rows, generator(9), with_inputs=False)
    assert only_views.size == 2 * 64


def test_mask_token_is_an_input_never_a_candidate() -> None:
    model = DuoRec(10, mask_token=True)
    assert model.item_embedding.weight.shape == (12, 64) and model.mask_id == 11
    assert model.item_scores(torch.randn(3, 64)).shape == (3, 10)
    plain = DuoRec(10)
    assert plain.mask_id is None and plain.item_embedding.weight.shape == (11, 64)
    assert augment.needs_mask_token({"contrast": "cl4srec", "loss": "duorec"})
    assert not augment.needs_mask_token({"contrast": "cl4srec", "loss": "none"})
    assert not augment.needs_mask_token({"contrast": "us_x", "loss": "adaptive"})
