"""The example's ``--recipe``s: one step of ``authors`` against a direct transcription of the authors'
released code, their learning-rate schedule, and what each recipe sets."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import recipes  # noqa: E402
import train  # noqa: E402

B, D = 6, 8


def authors_step(
    h: Tensor, z1: Tensor, z2: Tensor, g: list[Tensor], k_bar: float, tau: float, lmd: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The contrastive part of the authors' training loss for one batch, written out in plain torch.

    g: Linear(B·D, B·D/8) then Linear(B·D/8, B), no activation, k = 2.1·(sigmoid − 1/2), on the flattened
    next-item representations `h`; cosine logits s/τ of the two views; a candidate whose logit is >= the
    row's k (row i and its second view i + B share sequence i's k) is a false negative; soft labels
    [1, φ/max(F, 1)]/2 over [positive, the N − 2 candidates] in a cross-entropy averaged over the N rows;
    plus 0.1·‖k − k̄_stat‖₂ outside λ_cl.

    Returns the loss λ·L_cl + 0.1·‖k − k̄‖₂, the per-row cross-entropy of the positive alone, the number
    of suspects per row and k.
    """
    w1, b1, w2, b2 = g
    k = (2.1 * (torch.sigmoid((h.reshape(1, -1) @ w1.T + b1) @ w2.T + b2) - 0.5)).squeeze(0)
    z = torch.cat([z1, z2])
    n = z.shape[0]
    logits_all = F.cosine_similarity(z.unsqueeze(1), z.unsqueeze(0), dim=2) / tau
    positives = torch.cat([torch.diag(logits_all, B), torch.diag(logits_all, -B)])
    keep = torch.ones(n, n, dtype=torch.bool)
    keep.fill_diagonal_(False)
    for i in range(B):
        keep[i, B + i] = keep[B + i, i] = False
    negatives = logits_all[keep].reshape(n, n - 2)
    suspects = (negatives >= torch.cat([k, k])[:, None].detach()).to(h.dtype)
    count = suspects.sum(1)
    labels = torch.cat([torch.ones(n, 1, dtype=h.dtype), suspects / count.clamp(min=1)[:, None]], 1) / 2
    log_p = torch.log_softmax(torch.cat([positives[:, None], negatives], 1), 1)
    l_cl = -(labels * log_p).sum(1).mean()
    loss = lmd * l_cl + 0.1 * torch.linalg.vector_norm(k - k_bar)
    return loss, -log_p[:, 0], count, k


def recipe_loss(tau: float, lmd: float, k_bar: float) -> torch.nn.Module:
    """The example's loss under ``--recipe authors`` (τ and λ_cl overridden), in float64, with k̄_stat set
    as after a first epoch."""
    args = train.parse_args(
        ["--recipe", "authors", "--batch-size", str(B), "--temperature", str(tau), "--lmd", str(lmd)]
    )
    loss_fn = train.build_loss(args, dim=D)
    assert loss_fn is not None
    loss_fn.double()
    state = loss_fn.state_dict()
    state["k_bar"] = torch.tensor(k_bar, dtype=torch.float64)
    state["epochs_done"] = torch.tensor(1)
    loss_fn.load_state_dict(state)
    return loss_fn


def inputs(seed: int) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    h, z1, z2 = (torch.randn(B, D, generator=generator, dtype=torch.float64) for _ in range(3))
    z2 = z2 * 0.5 + z1  # partners somewhat aligned, as two views are
    return h.requires_grad_(), z1.requires_grad_(), z2.detach().requires_grad_()


def g_weights(loss_fn: torch.nn.Module, seed: int, bias: float = 0.0) -> list[Tensor]:
    """Give g random weights large enough that k varies across rows, and return them."""
    net = loss_fn.threshold_net
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (net.body[0], net.head):
            layer.weight.copy_(0.4 * torch.randn(layer.weight.shape, generator=generator, dtype=torch.float64))
            layer.bias.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator, dtype=torch.float64))
        net.head.bias.add_(bias)
    return [net.body[0].weight, net.body[0].bias, net.head.weight, net.head.bias]


def test_one_step_of_the_authors_recipe_matches_their_code() -> None:
    """Loss and every gradient (encoder outputs and g's weights) agree in float64 on a batch where every
    row has suspects and most also non-suspects; τ = 0.5 so that logit units differ from similarity units."""
    tau, lmd, k_bar = 0.5, 0.3, 0.2
    loss_fn = recipe_loss(tau, lmd, k_bar)
    assert loss_fn.settings.false_negatives == "relabel" and loss_fn.reg_weight == pytest.approx(0.1 / lmd)
    weights = g_weights(loss_fn, seed=1)
    h, z1, z2 = inputs(seed=2)
    ours = lmd * loss_fn(z1, z2, threshold_input=h)  # the trainer's total is CE + λ_cl·L_cl
    grads = torch.autograd.grad(ours, [h, z1, z2, *weights])

    theirs, _, count, k = authors_step(h, z1, z2, weights, k_bar, tau, lmd)
    assert bool((count >= 1).all()), "every row needs a suspect (the label-mass difference must not enter)"
    assert int((count < 2 * B - 2).sum()) >= B  # and most rows keep some candidates in the softmax
    assert float(k.detach().std()) > 0.05  # the thresholds differ per row
    expected = torch.autograd.grad(theirs, [h, z1, z2, *weights])
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-12, abs=1e-12)
    for name, a, b in zip(["h", "z1", "z2", "W1", "b1", "W2", "b2"], grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    assert float(grads[0].abs().sum()) > 0  # L_reg's gradient reaches the encoder through g's input
    assert float(loss_fn.last.loss_reg) == pytest.approx(float(torch.linalg.vector_norm(k.detach() - k_bar)), rel=1e-12)


def test_a_row_without_suspects_keeps_all_its_label_mass_unlike_their_code() -> None:
    """The one difference kept on purpose: the authors' labels [1, φ/max(F, 1)]/2 leave a row with no
    suspects a total label mass of 1/2; here its partner gets all of it. The losses differ by exactly
    λ·(1/N)·Σ over such rows of ½·(−log p_partner)."""
    tau, lmd, k_bar = 1.0, 0.1, 0.0
    loss_fn = recipe_loss(tau, lmd, k_bar)
    weights = g_weights(loss_fn, seed=3)
    with torch.no_grad():
        weights[3][0] = 40.0  # k_0 = 1.05 > every cosine logit: sequence 0's two rows flag nothing
    h, z1, z2 = inputs(seed=4)
    ours = lmd * loss_fn(z1, z2, threshold_input=h)
    theirs, positive_ce, count, _ = authors_step(h, z1, z2, weights, k_bar, tau, lmd)
    empty = count == 0
    assert bool(empty[0]) and bool(empty[B]) and int(empty.sum()) < 2 * B
    gap = lmd * (0.5 * positive_ce[empty]).sum() / (2 * B)
    assert float((ours - theirs).detach()) == pytest.approx(float(gap.detach()), rel=1e-10)
    assert float(gap.detach()) > 1e-3


def test_cosine_schedule_follows_timm() -> None:
    """timm's CosineLRScheduler(t_initial=100, lr_min=1e-4, warmup_t=5, warmup_lr_init=1e-4), stepped with
    the epoch index: linear warm-up, then the cosine of the epoch index itself (no warm-up prefix)."""
    lr = [recipes.cosine_lr(epoch, 1e-3, 100) for epoch in range(110)]
    assert lr[0] == pytest.approx(1e-4) and lr[1] == pytest.approx(2.8e-4) and lr[4] == pytest.approx(8.2e-4)
    assert lr[5] == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi * 5 / 100)))
    assert lr[50] == pytest.approx(5.5e-4)
    assert lr[100] == lr[109] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(lr[5:-1], lr[6:], strict=True))  # decays after the warm-up


def test_recipes_fill_in_what_the_command_line_leaves_out() -> None:
    authors = train.parse_args(["--recipe", "authors"])
    assert (authors.batch_size, authors.epochs, authors.lr_schedule, authors.drop_last) == (1024, 100, "cosine", True)
    assert (authors.similarity, authors.temperature, authors.false_negatives) == ("cos", 1.0, "relabel")
    assert (authors.threshold_arch, authors.threshold_input, authors.warmup_epochs) == ("authors", "next-item", 0)
    assert train.parse_args(["--recipe", "authors", "--batch-size", "64", "--epochs", "7"]).batch_size == 64
    baseline = train.parse_args(["--recipe", "authors", "--loss", "duorec"])
    assert baseline.similarity == "cos" and baseline.batch_size == 1024  # their DuoRec: the same set-up
    known = train.parse_args(["--recipe", "authors", "--loss", "duorec", "--known-positives", "same-target"])
    assert known.false_negatives == "drop"  # relabel is AdaptiveRec's mode, not the recipe's DuoRec
    duorec = train.parse_args(["--recipe", "duorec"])
    assert (duorec.loss, duorec.similarity, duorec.epochs, duorec.early_stop_metric) == ("duorec", "dot", 50, "MRR@10")
    assert duorec.lr_schedule == "constant" and duorec.batch_size == 256
    default = train.parse_args([])
    assert (default.recipe, default.batch_size, default.lr_schedule, default.early_stop_metric) == (
        "default",
        256,
        "constant",
        "NDCG@10",
    )


def test_duorec_recipe_stops_on_mrr_and_a_time_budget_stops_training(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tiny = ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "2", "--quiet", "--device", "cpu"]
    run = train.main([*tiny, "--recipe", "duorec", "--epochs", "2", "--out", str(tmp_path / "d")])
    assert run["config"]["early_stop_metric"] == "MRR@10" and run["status"] == "finished"
    best = max(run["history"], key=lambda e: e["valid"]["MRR@10"])
    assert run["best_epoch"] == best["epoch"]
    # A budget already spent: the first epoch stops after one step, is validated, and the best checkpoint is
    # evaluated and written.
    cut = train.main([*tiny, "--epochs", "5", "--time-budget", "0", "--out", str(tmp_path / "t")])
    saved = json.loads((tmp_path / "t" / "results.json").read_text())
    assert cut["status"] == saved["status"] == "time budget"
    assert saved["epochs_done"] == 1 and saved["history"][0]["partial"] is True and "NDCG@10" in saved["test"]


def test_authors_recipe_trains(tmp_path: Path) -> None:
    """The whole recipe runs: g reads the next-item representations, the adaptive loss from the first
    step (no warm-up), L_reg from the second epoch, the warm-up learning rates."""
    torch.set_num_threads(1)
    tiny = ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "2", "--quiet", "--device", "cpu"]
    run = train.main([*tiny, "--recipe", "authors", "--epochs", "2", "--out", str(tmp_path)])
    first, second = run["history"]
    assert first["mode"] == "relabel" and first["train"]["loss_reg"] == 0.0 and second["train"]["loss_reg"] > 0.0
    assert first["train"]["lr"] == pytest.approx(1e-4) and second["train"]["lr"] == pytest.approx(2.8e-4)
