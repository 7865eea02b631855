"""`gather_distributed=True` under torch.distributed: 2 CPU processes, gloo, 127.0.0.1 only.

SPEC §5: loss and gradients equal those of one process holding the concatenated batch. With W
ranks, each rank returns `sum(own rows) · W / N_global` for `mean` (W · its sum for `sum`), so the
average over ranks — what DDP applies to gradients — is the single-process loss; the gathered
rows' backward sums over ranks, so the gradient reaching a rank's embeddings is W times the
single-process gradient of those rows (for `mean`/`sum`; 1× for `none`, whose rows are not
rescaled), and after averaging parameter gradients over ranks they equal the single-process ones.

All scenarios run in one spawn of two processes (a few seconds of start-up) and every test
checks one of them; the spawn is bounded by a deadline.
"""

from __future__ import annotations

import socket
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _distributed_worker import RowwiseThreshold, local_row_index, local_rows, local_threshold, worker

from adaptive_contrastive import AdaptiveInfoNCE, ThresholdNet
from adaptive_contrastive.functional import adaptive_info_nce

pytestmark = [
    pytest.mark.distributed,
    pytest.mark.skipif(
        not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
    ),
]

WORLD = 2
D = 6
DEADLINE_S = 120.0


def _views(b: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z1 = torch.randn(b, D, dtype=torch.float64, generator=g)
    z1[1] = z1[0] + 0.2 * torch.randn(D, dtype=torch.float64, generator=g)
    z2 = z1 + 0.6 * torch.randn(b, D, dtype=torch.float64, generator=g)
    return z1, z2


def _labels(b: int, seed: int) -> torch.Tensor:
    """Groups of known positives with some unknown (-1) sequences."""
    g = torch.Generator().manual_seed(seed + 2)
    return torch.randint(-1, max(2, b // 2), (b,), generator=g)


def _functional(
    sizes: list[int], threshold_kind: str, seed: int, threshold_grad: bool = False, labelled: bool = False, **kwargs
) -> dict:
    b = sum(sizes)
    z1, z2 = _views(b, seed)
    g = torch.Generator().manual_seed(seed + 1)
    threshold = {
        "none": None,
        "float": 0.25,
        "B": 0.2 + 0.2 * torch.randn(b, dtype=torch.float64, generator=g),
        "N": 0.2 + 0.2 * torch.randn(2 * b, dtype=torch.float64, generator=g),
    }[threshold_kind]
    kwargs.setdefault("reduction", "mean")
    return {
        "api": "functional",
        "sizes": sizes,
        "z1": z1,
        "z2": z2,
        "threshold": threshold,
        "threshold_grad": threshold_grad,
        "kwargs": kwargs,
        "upstream": torch.linspace(-1.0, 2.0, 2 * b, dtype=torch.float64),
        "labels": _labels(b, seed) if labelled else None,
    }


def _module(sizes: list[int], threshold: object, seed: int, labelled: bool = False, **config) -> dict:
    """A module past its warmup with a target k̄ (so L_reg is active), weights fixed by the seed."""
    b = sum(sizes)
    z1, z2 = _views(b, seed)
    torch.manual_seed(seed)
    config = {"dim": D, "threshold": threshold, "temperature": 0.5, "reg_weight": 0.5, **config}
    ref = AdaptiveInfoNCE(**config)
    with torch.no_grad():
        ref.k_bar.fill_(0.3)
        ref.epochs_done.fill_(1)
        if isinstance(ref.threshold_net, ThresholdNet):
            ref.threshold_net.head.weight.normal_(std=0.5)  # spread k_learn so rows differ
            ref.threshold_net.head.bias.fill_(0.3)
    labels = _labels(b, seed) if labelled else None
    state = ref.state_dict()
    return {"api": "module", "sizes": sizes, "z1": z1, "z2": z2, "config": config, "state": state, "labels": labels}


SCENARIOS = {
    "fn-attract-hard-B-equal": _functional([3, 3], "B", 10, false_negatives="attract"),
    "fn-attract-soft-N-unequal": _functional(
        [2, 5],
        "N",
        11,
        threshold_grad=True,
        false_negatives="attract",
        mask="soft",
        mask_temperature=0.2,
        mask_gradient="full",
    ),
    "fn-drop-hard-float-unequal-sum": _functional([4, 2], "float", 12, false_negatives="drop", reduction="sum"),
    "fn-relabel-hard-B-equal-none": _functional([3, 3], "B", 13, false_negatives="relabel", reduction="none"),
    "fn-keep-dot-unequal": _functional([3, 2], "none", 14, false_negatives="keep", similarity="dot", temperature=2.0),
    "fn-drop-soft-B-unequal": _functional(
        [2, 4], "B", 15, threshold_grad=True, false_negatives="drop", mask="soft", mask_gradient="full"
    ),
    "fn-attract-soft-labels-B-unequal": _functional([2, 4], "B", 17, false_negatives="attract", mask="soft"),
    # A rank with a single sequence (the end of an epoch without drop_last): its negatives are remote.
    "fn-attract-hard-float-single-row": _functional([1, 4], "float", 16, false_negatives="attract"),
    "module-float-attract-equal": _module([3, 3], 0.25, 20),
    "module-float-attract-unequal": _module([2, 5], 0.25, 21),
    "module-net-attract-hard-equal": _module([4, 4], "learn", 22),
    "module-net-attract-hard-unequal": _module([2, 5], "learn", 23),
    "module-net-attract-soft-equal": _module([3, 3], "learn", 24, mask="soft"),
    "module-net-attract-soft-unequal": _module([3, 4], "learn", 25, mask="soft", mask_gradient="full"),
    "module-kbar-drop-unequal": _module([4, 3], None, 26, false_negatives="drop"),
    "module-custom-threshold-equal": _module([3, 3], RowwiseThreshold(D), 27, mask="soft"),
    "module-net-attract-single-row": _module([1, 3], "learn", 28),
    # Known positives (SPEC §8): labels are gathered with the rows.
    "fn-attract-hard-B-labels-unequal": _functional([2, 5], "B", 30, labelled=True, false_negatives="attract"),
    "fn-drop-labels-only-equal": _functional([4, 4], "none", 31, labelled=True, false_negatives="drop"),
    "fn-relabel-soft-N-labels-equal": _functional(
        [3, 3],
        "N",
        32,
        threshold_grad=True,
        labelled=True,
        false_negatives="relabel",
        mask="soft",
        mask_gradient="full",
    ),
    "module-net-attract-labels-unequal": _module([3, 5], "learn", 33, labelled=True),
    "module-labels-only-drop-equal": _module([4, 4], "labels", 34, labelled=True, false_negatives="drop"),
}


def _module_steps(sizes: list[int], seed: int, steps: int = 3) -> dict:
    """A module whose k_stat is sampled (max_pairs far below N(N-2)) over several steps."""
    b = sum(sizes)
    torch.manual_seed(seed)
    config = {"dim": D, "max_pairs": 16, "warmup_epochs": 1}
    ref = AdaptiveInfoNCE(**config)
    views = [_views(b, seed + i) for i in range(steps)]
    return {"api": "module_steps", "sizes": sizes, "config": config, "state": ref.state_dict(), "steps": views}


def _bad_inputs(kind: str) -> dict:
    """Rank 0 holds valid views; rank 1 holds views that break one rule (or disagree with rank 0)."""
    z1, z2 = _views(4, 40)
    bad1, bad2 = z1.clone(), z2.clone()
    if kind == "nan":
        bad1[0, 0] = float("nan")
    elif kind == "width":
        bad1, bad2 = z1[:, :-1].clone(), z2[:, :-1].clone()
    elif kind == "dtype":
        bad1, bad2 = z1.float(), z2.float()
    return {"api": "expect_error", "per_rank": [(z1, z2), (bad1, bad2)], "via": "functional"}


SCENARIOS.update(
    {
        "steps-sampled-k-stat-equal": _module_steps([6, 6], 50),
        "steps-sampled-k-stat-unequal": _module_steps([3, 9], 51),
        "error-nan-on-one-rank": _bad_inputs("nan"),
        "error-width-mismatch": _bad_inputs("width"),
        "error-dtype-mismatch": _bad_inputs("dtype"),
        "error-nan-on-one-rank-module": {**_bad_inputs("nan"), "via": "module"},
    }
)
FUNCTIONAL = [n for n, s in SCENARIOS.items() if s["api"] == "functional"]
MODULE = [n for n, s in SCENARIOS.items() if s["api"] == "module"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("dist")
    ctx = mp.start_processes(
        worker, args=(WORLD, _free_port(), SCENARIOS, str(out_dir)), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"distributed workers did not finish within {DEADLINE_S:.0f} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)
    return [torch.load(out_dir / f"rank{r}.pt") for r in range(WORLD)]


def _result(rank_results: list[dict], name: str) -> list[dict]:
    out = [r[name] for r in rank_results]
    for r in out:
        if "error" in r:
            pytest.fail("worker raised:\n" + r["error"])
    return out


def _single_functional(sc: dict) -> dict:
    z1 = sc["z1"].clone().requires_grad_(True)
    z2 = sc["z2"].clone().requires_grad_(True)
    k = sc["threshold"]
    if isinstance(k, torch.Tensor):
        k = k.clone().requires_grad_(sc["threshold_grad"])
    out = adaptive_info_nce(z1, z2, k, labels=sc["labels"], **sc["kwargs"])
    out.backward() if out.dim() == 0 else out.backward(sc["upstream"])
    return {"loss": out.detach(), "g1": z1.grad, "g2": z2.grad, "gk": k.grad if isinstance(k, torch.Tensor) else None}


TOL = dict(atol=1e-10, rtol=1e-9)


@pytest.mark.parametrize("name", FUNCTIONAL)
def test_functional_equals_single_process(rank_results: list[dict], name: str) -> None:
    sc = SCENARIOS[name]
    sizes = sc["sizes"]
    ranks = _result(rank_results, name)
    single = _single_functional(sc)
    reduction = sc["kwargs"]["reduction"]
    if reduction == "none":
        for r, res in enumerate(ranks):
            torch.testing.assert_close(res["loss"], single["loss"][local_row_index(sizes, r)], **TOL)
        grad_scale = 1.0
    else:
        # the average over ranks is the single-process loss
        torch.testing.assert_close(sum(res["loss"] for res in ranks) / WORLD, single["loss"], **TOL)
        # and each rank's share is the sum of its own rows, scaled by W / N (mean) or W (sum)
        rows = adaptive_info_nce(
            sc["z1"], sc["z2"], sc["threshold"], labels=sc["labels"], **{**sc["kwargs"], "reduction": "none"}
        )
        n = 2 * sum(sizes)
        for r, res in enumerate(ranks):
            own = rows[local_row_index(sizes, r)].sum() * WORLD
            torch.testing.assert_close(res["loss"], own / n if reduction == "mean" else own, **TOL)
        grad_scale = float(WORLD)
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["g1"], grad_scale * local_rows(single["g1"], sizes, r), **TOL)
        torch.testing.assert_close(res["g2"], grad_scale * local_rows(single["g2"], sizes, r), **TOL)
        if sc["threshold_grad"]:
            want_k = local_threshold(single["gk"], sizes, r)
            torch.testing.assert_close(res["gk"], grad_scale * want_k, **TOL)


def _single_module(sc: dict) -> tuple[dict, AdaptiveInfoNCE]:
    loss_fn = AdaptiveInfoNCE(**sc["config"])
    loss_fn.load_state_dict(sc["state"])
    loss_fn.zero_grad(set_to_none=True)
    z1 = sc["z1"].clone().requires_grad_(True)
    z2 = sc["z2"].clone().requires_grad_(True)
    loss = loss_fn(z1, z2, labels=sc["labels"])
    loss.backward()
    params = {n: (p.grad if p.grad is not None else torch.zeros_like(p)) for n, p in loss_fn.named_parameters()}
    return {"loss": loss.detach(), "g1": z1.grad, "g2": z2.grad, "params": params}, loss_fn


@pytest.mark.parametrize("name", MODULE)
def test_module_equals_single_process(rank_results: list[dict], name: str) -> None:
    sc = SCENARIOS[name]
    sizes = sc["sizes"]
    ranks = _result(rank_results, name)
    single, loss_fn = _single_module(sc)
    assert all(res["mode"] == loss_fn.last.mode != "keep" for res in ranks)
    for r, res in enumerate(ranks):
        # every rank computes k_stat of the whole gathered batch and records it
        torch.testing.assert_close(res["k_stat"], loss_fn.last.k_stat)
        torch.testing.assert_close(res["k_sum"], loss_fn.k_sum)
        # the thresholds of its rows are those of the single process
        torch.testing.assert_close(
            res["k"].double(), loss_fn.last.k.double()[local_row_index(sizes, r)], atol=1e-6, rtol=1e-6, equal_nan=True
        )
    if sc["labels"] is not None:
        # the shares of known positives and of all false negatives, averaged over ranks' rows
        # (weighted by their row counts), are the single process's
        for key in ("known_positive_fraction", "false_negative_fraction"):
            mixed = sum(res[key] * sizes[r] for r, res in enumerate(ranks)) / sum(sizes)
            torch.testing.assert_close(mixed.double(), getattr(loss_fn.last, key).double(), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(sum(res["loss"] for res in ranks) / WORLD, single["loss"], atol=1e-7, rtol=1e-6)
    for r, res in enumerate(ranks):
        torch.testing.assert_close(res["g1"], WORLD * local_rows(single["g1"], sizes, r), atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(res["g2"], WORLD * local_rows(single["g2"], sizes, r), atol=1e-7, rtol=1e-5)
    for pname, want in single["params"].items():
        averaged = sum(res["params"][pname] for res in ranks) / WORLD  # what DDP does
        torch.testing.assert_close(averaged, want, atol=1e-6, rtol=1e-5, msg=lambda m, p=pname: f"{p}: {m}")


def test_without_process_group_gather_is_a_no_op() -> None:
    """Outside torch.distributed, gather_distributed=True is the single-process loss."""
    sc = SCENARIOS["fn-attract-soft-N-unequal"]
    a = adaptive_info_nce(sc["z1"], sc["z2"], sc["threshold"], gather_distributed=True, **sc["kwargs"])
    b = adaptive_info_nce(sc["z1"], sc["z2"], sc["threshold"], **sc["kwargs"])
    torch.testing.assert_close(a, b, atol=0, rtol=0)


@pytest.mark.parametrize("name", ["steps-sampled-k-stat-equal", "steps-sampled-k-stat-unequal"])
def test_ranks_draw_the_single_process_k_stat_sample(rank_results: list[dict], name: str) -> None:
    """The sampled k_stat (and so k̄_stat, L_reg and the thresholds) is the same on every rank and
    equal to one process's, although the ranks' global random generators differ."""
    sc = SCENARIOS[name]
    ranks = _result(rank_results, name)
    single = AdaptiveInfoNCE(**sc["config"])
    single.load_state_dict(sc["state"])
    want = []
    for z1, z2 in sc["steps"]:
        single(z1, z2)
        want.append(single.last.k_stat.clone())
    single.end_epoch()
    for res in ranks:
        torch.testing.assert_close(res["k_stats"], torch.stack(want), atol=0, rtol=0)
        torch.testing.assert_close(res["k_bar"], single.k_bar, atol=0, rtol=0)
    assert len(set(torch.stack(want).tolist())) > 1  # the sample moves with the step


@pytest.mark.parametrize(
    "name, bad_rank_message, other_rank_message",
    [
        ("error-nan-on-one-rank", "z1 holds NaN", r"rank\(s\) \[1\] rejected their inputs"),
        ("error-nan-on-one-rank-module", "z1 holds NaN", r"rank\(s\) \[1\] rejected their inputs"),
        ("error-width-mismatch", r"ranks disagree on the embedding width D: \[6, 5\]", None),
        ("error-dtype-mismatch", r"ranks disagree on the embeddings' dtype: \['float64', 'float32'\]", None),
    ],
)
def test_bad_input_on_one_rank_raises_on_every_rank(
    rank_results: list[dict], name: str, bad_rank_message: str, other_rank_message: str | None
) -> None:
    """Nobody hangs: the rank with bad input raises its own error, the others a ValueError naming it
    (or, when the ranks merely disagree, all raise the same error)."""
    import re

    good, bad = _result(rank_results, name)
    assert bad["raised"] in ("ValueError", "TypeError") and re.search(bad_rank_message, bad["message"])
    assert good["raised"] == "ValueError"
    assert re.search(other_rank_message or bad_rank_message, good["message"])
