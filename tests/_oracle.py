"""An independent, slow, row-by-row float64 oracle of SPEC §1–4, written from the text.

Nothing here imports `adaptive_contrastive`: the loss is spelled out row by row and candidate by
candidate with float64 torch scalars and small vectors, so autograd through it gives reference
gradients. Only for tiny batches (it is O(N² D) Python-level work).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

EPS_NORM = 1e-8  # SPEC §1: ẑ = z / max(‖z‖₂, 1e-8)


def _unit(v: Tensor) -> Tensor:
    norm = torch.sqrt((v * v).sum())
    return v / torch.clamp(norm, min=EPS_NORM)


def oracle_thresholds(threshold: float | Tensor, b: int) -> list[Tensor]:
    """One float64 0-d threshold per row i of Z, following SPEC §1 (row i uses k[i mod B] for (B,))."""
    n = 2 * b
    if isinstance(threshold, (int, float)):
        return [torch.tensor(float(threshold), dtype=torch.float64) for _ in range(n)]
    t = threshold.double()
    if t.dim() == 0:
        return [t for _ in range(n)]
    if t.shape == (b,):
        return [t[i % b] for i in range(n)]
    assert t.shape == (n,), t.shape
    return [t[i] for i in range(n)]


def _log_sum_exp(terms: list[Tensor]) -> Tensor:
    """log Σ e^{t} over 0-d float64 tensors, shifted by their (detached) maximum."""
    finite = [float(t.detach()) for t in terms if float(t.detach()) != -math.inf]
    m = max(finite)
    total = torch.zeros((), dtype=torch.float64)
    for t in terms:
        total = total + torch.exp(t - m)
    return torch.log(total) + m


def oracle_rows(
    z1: Tensor,
    z2: Tensor,
    threshold: float | Tensor | None = None,
    *,
    temperature: float = 1.0,
    similarity: str = "cos",
    false_negatives: str = "attract",
    positive_weight: float = 0.5,
    mask: str = "hard",
    mask_temperature: float = 0.05,
    labels: Tensor | None = None,
    mask_gradient: str = "labels",
) -> Tensor:
    """The (N,) float64 row losses ℓ_i of SPEC §3, differentiable w.r.t. z1, z2 and the threshold.

    `labels` `(B,)` mark known positives (SPEC §8): a candidate sharing the row's label >= 0 counts
    as a false negative (φ = 1) whatever the threshold says; with `threshold` None, labels alone decide.
    Soft mask, `mask_gradient="labels"`: the threshold is a constant of the loss and the softmax
    denominator holds ν fixed (only the labels' ν(s) is differentiated); ``"full"``: the exact derivative.
    """
    b = z1.shape[0]
    n = 2 * b
    rows_z = [z1[i].double() for i in range(b)] + [z2[i].double() for i in range(b)]
    if similarity == "cos":
        rows_z = [_unit(v) for v in rows_z]
    else:
        assert similarity == "dot"
    tau = float(temperature)
    alpha = float(positive_weight)
    beta = float(mask_temperature)
    ks = None if false_negatives == "keep" or threshold is None else oracle_thresholds(threshold, b)
    seq_label = None if labels is None else [int(labels[i % b]) for i in range(n)]

    def known(i: int, j: int) -> bool:
        return seq_label is not None and seq_label[i] >= 0 and seq_label[i] == seq_label[j]

    losses = []
    for i in range(n):
        p = (i + b) % n
        cands = [j for j in range(n) if j != i and j != p]
        assert len(cands) == n - 2
        s_p = (rows_z[i] * rows_z[p]).sum()
        l_p = s_p / tau
        s = [(rows_z[i] * rows_z[j]).sum() for j in cands]
        logits = [sj / tau for sj in s]
        if false_negatives == "keep":
            losses.append(-l_p + _log_sum_exp([l_p, *logits]))
            continue
        one = torch.tensor(1.0, dtype=torch.float64)
        zero = torch.tensor(0.0, dtype=torch.float64)
        minus_inf = torch.tensor(-math.inf, dtype=torch.float64)
        nu, log_nu = [], []
        for j, sj in zip(cands, s, strict=True):
            if known(i, j):  # a known positive: never a negative, whatever k says
                nu.append(zero)
                log_nu.append(minus_inf)
            elif ks is None:  # labels alone decide: every other candidate is a negative
                nu.append(one)
                log_nu.append(zero)
            elif mask == "hard":
                # s <= k: a true negative (ν = 1); the comparison carries no gradient to k.
                below = float(sj.detach()) <= float(ks[i].detach())
                nu.append(one if below else zero)
                log_nu.append(zero if below else minus_inf)
            elif mask_gradient == "full":
                a = (ks[i] - sj) / beta
                nu.append(torch.sigmoid(a))
                log_nu.append(torch.nn.functional.logsigmoid(a))
            else:
                assert mask_gradient == "labels", mask_gradient
                a = (ks[i].detach() - sj) / beta
                nu.append(torch.sigmoid(a))  # the labels' φ = 1 - ν moves with s_ij
                log_nu.append(torch.nn.functional.logsigmoid(a).detach())  # the denominator's weight does not
        phi = [1.0 - v for v in nu]
        f_i = torch.zeros((), dtype=torch.float64)
        for v in phi:
            f_i = f_i + v
        denom = torch.clamp(f_i, min=1.0)
        y = [(1.0 - alpha) * v / denom for v in phi]
        y_p = 1.0 - sum(y, torch.zeros((), dtype=torch.float64))
        masked_terms = [l_p] + [lj + lnu for lj, lnu in zip(logits, log_nu, strict=True)]
        all_terms = [l_p, *logits]
        weighted = y_p * l_p
        for yj, lj in zip(y, logits, strict=True):
            weighted = weighted + yj * lj
        if false_negatives == "drop":
            losses.append(-l_p + _log_sum_exp(masked_terms))
        elif false_negatives == "attract":
            losses.append(_log_sum_exp(masked_terms) - weighted)
        elif false_negatives == "relabel":
            losses.append(_log_sum_exp(all_terms) - weighted)
        else:
            raise ValueError(false_negatives)
    return torch.stack(losses)


def oracle_reduce(rows: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return rows
    total = torch.zeros((), dtype=torch.float64)
    for r in rows:
        total = total + r
    return total if reduction == "sum" else total / rows.shape[0]


def oracle_loss(
    z1: Tensor, z2: Tensor, threshold: float | Tensor | None = None, *, reduction: str = "mean", **kw
) -> Tensor:
    return oracle_reduce(oracle_rows(z1, z2, threshold, **kw), reduction)


def oracle_candidate_similarities(z1: Tensor, z2: Tensor, similarity: str = "cos") -> list[float]:
    """Every s_ij with j ∈ C(i) (N(N-2) values, ordered pairs), as Python floats."""
    b = z1.shape[0]
    n = 2 * b
    rows_z = [z1[i].double() for i in range(b)] + [z2[i].double() for i in range(b)]
    if similarity == "cos":
        rows_z = [_unit(v) for v in rows_z]
    out = []
    for i in range(n):
        for j in range(n):
            if j != i and j != (i + b) % n:
                out.append(float((rows_z[i] * rows_z[j]).sum().detach()))
    return out


def oracle_false_negative_counts(
    z1: Tensor, z2: Tensor, threshold: float | Tensor, similarity: str = "cos"
) -> list[int]:
    """F_i of the hard mask: candidates with s_ij > k_i, counted one by one."""
    b = z1.shape[0]
    n = 2 * b
    rows_z = [z1[i].double() for i in range(b)] + [z2[i].double() for i in range(b)]
    if similarity == "cos":
        rows_z = [_unit(v) for v in rows_z]
    ks = oracle_thresholds(threshold, b)
    counts = []
    for i in range(n):
        c = 0
        for j in range(n):
            if j != i and j != (i + b) % n and float((rows_z[i] * rows_z[j]).sum().detach()) > float(ks[i].detach()):
                c += 1
        counts.append(c)
    return counts
