"""The fused Triton backend against the reference backend and float64 (SPEC §3, §5).

Without CUDA the kernels run in Triton's interpreter (numpy), so every size here stays tiny;
tests marked ``gpu`` repeat the comparison at realistic sizes on a CUDA device. The
interpreter's 16-wide tiles make a few dozen rows enough to cross tile boundaries and to run
both tile loops of each kernel: the fast tiles and the ones that may hold a self or partner column.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _interpreted import ON_CUDA, load_kernel_module, run_interpreted_quickly

kernel_module = load_kernel_module()
triton_masked_info_nce_rows = kernel_module.triton_masked_info_nce_rows

from adaptive_contrastive import AdaptiveInfoNCE  # noqa: E402
from adaptive_contrastive.functional import adaptive_info_nce, embed, resolve_backend  # noqa: E402
from adaptive_contrastive.reference import LossSettings, masked_info_nce_rows  # noqa: E402

MODES = ("keep", "drop", "attract", "relabel")
MASKS = ("hard", "soft")
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    run_interpreted_quickly(monkeypatch)
    monkeypatch.delenv("ADAPTIVE_CONTRASTIVE_FP32_PRECISION", raising=False)
    previous = kernel_module.set_fp32_precision(None)
    yield
    kernel_module.set_fp32_precision(previous)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_CUDA else "cpu")


def settings_for(
    mode: str, mask: str = "hard", temperature: float = 0.3, beta: float = 0.1, mask_gradient: str = "full"
) -> LossSettings:
    return LossSettings(
        temperature=temperature,
        false_negatives=mode,
        positive_weight=0.5,
        mask=mask,
        mask_temperature=beta,
        mask_gradient=mask_gradient,
    )


def single_process_layout(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """partner and self_index of Z = cat(z1, z2) with N = n rows: p(i) = (i + n/2) mod n."""
    rows = torch.arange(n, device=device)
    return (rows + n // 2) % n, rows


def run_backend(fn, q, k, thr, partner, self_index, settings, upstream, labels=None):
    """Rows, counts and the gradients of Σ upstream·rows w.r.t. fresh leaves q, k and thr."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    soft = settings.mask == "soft" and settings.uses_threshold and thr is not None
    if thr is not None:
        thr = thr.detach().clone().requires_grad_(soft)
    extra = {} if labels is None else {"row_labels": labels[0], "column_labels": labels[1]}
    rows, counts = fn(q, k, thr if settings.uses_threshold else None, partner, self_index, settings, **extra)
    (rows * upstream.to(rows.dtype)).sum().backward()
    return rows.detach(), counts, q.grad, k.grad, thr.grad if soft else None


NAMES = ("rows", "false_negatives", "dq", "dk", "dthr")


def assert_matches_reference(
    q, k, thr, partner, self_index, settings, *, atol=2e-5, rtol=2e-4, ref_dtype=None, labels=None
):
    """Triton vs reference: row losses, F, dq, dk and (soft mask) dthr, with a non-unit upstream gradient.

    dthr is None on both sides where the reference gives the thresholds no gradient."""
    upstream = torch.randn(q.shape[0], device=q.device)
    ref_dtype = ref_dtype or q.dtype
    ref = run_backend(
        masked_info_nce_rows,
        q.to(ref_dtype),
        k.to(ref_dtype),
        None if thr is None else thr.to(ref_dtype),
        partner,
        self_index,
        settings,
        upstream,
        labels,
    )
    got = run_backend(triton_masked_info_nce_rows, q, k, thr, partner, self_index, settings, upstream, labels)
    for name, r, g in zip(NAMES, ref, got, strict=True):
        if r is None:
            assert g is None, name
            continue
        assert g is not None, name
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.to(r.dtype), r, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    return got


def relative_errors(got, want) -> dict[str, float]:
    """‖got - want‖ / ‖want‖ of each output (the norm-relative error)."""
    return {
        name: float((g.double() - w.double()).norm() / w.double().norm().clamp_min(1e-300))
        for name, g, w in zip(NAMES, got, want, strict=True)
        if w is not None and name != "false_negatives"
    }


def embeddings(n: int, d: int, device: torch.device, similarity: str = "cos") -> torch.Tensor:
    z = torch.randn(n, d, device=device)
    return embed(z, "cos") if similarity == "cos" else 0.5 * z


def thresholds_for(n: int, device: torch.device, similarity: str = "cos") -> torch.Tensor:
    # Spread over the bulk of the similarities, so that both masks have members in most rows.
    scale = 0.3 if similarity == "cos" else 0.8
    return (torch.rand(n, device=device) * 2 - 1) * scale


def thresholds_in_gaps(q: torch.Tensor, k: torch.Tensor, quantile: float) -> torch.Tensor:
    """Per-row thresholds near the `quantile` of the row's similarities, each in the midst of the
    widest gap between neighbouring similarities nearby. With millions of pairs some similarity
    would otherwise lie within round-off of a threshold, and the two backends, whose dot products
    round differently, would disagree on its hard mask."""
    s = torch.sort(q.double() @ k.double().T, dim=1).values
    centre = int(quantile * (s.shape[1] - 1))
    lo, hi = max(centre - 20, 0), min(centre + 20, s.shape[1] - 1)
    gaps = s[:, lo + 1 : hi + 1] - s[:, lo:hi]
    j = lo + gaps.argmax(dim=1, keepdim=True)
    return ((s.gather(1, j) + s.gather(1, j + 1)) / 2).squeeze(1).float()


# ---------------------------------------------------------------------------------------------
# Every mode against the reference backend


@pytest.mark.parametrize("similarity", ("cos", "dot"))
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode: str, mask: str, similarity: str, device: torch.device) -> None:
    kernel_module.set_fp32_precision("ieee")  # both backends in float32 FMAs: agree to round-off
    n, d = 22, 5  # neither a multiple of the 16-wide tiles
    z = embeddings(n, d, device, similarity)
    k = z + 0.01 * torch.randn_like(z)  # q and k distinct, so dq and dk are checked separately
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device, similarity)
    rows, counts, *_ = assert_matches_reference(z, k, thr, partner, self_index, settings_for(mode, mask))
    if mode != "keep" and mask == "hard":
        assert 0 < float(counts.sum()) < n * (n - 2)  # the mask really splits the candidates


@pytest.mark.parametrize("labelled", (False, True))
@pytest.mark.parametrize("mask_gradient", ("labels", "full"))
@pytest.mark.parametrize("mode", ("drop", "attract", "relabel"))
def test_soft_mask_gradients(mode: str, mask_gradient: str, labelled: bool, device: torch.device) -> None:
    # Both ways of differentiating the soft mask: "labels" (the public default) holds ν fixed in the
    # denominator and gives the thresholds no gradient (None, as on the reference backend); "full" is the
    # exact derivative, dthr included. 48 rows: three 16-wide tiles per sweep, one of them "fast" for
    # the first row block. Default precision (3xTF32, emulated here).
    n, d = 48, 6
    z = embeddings(n, d, device)
    k = embed(z + 0.3 * torch.randn_like(z), "cos")
    partner, self_index = single_process_layout(n, device)
    settings = settings_for(mode, "soft", beta=0.2, mask_gradient=mask_gradient)
    labels = None
    if labelled:  # groups of three rows share a label (both views alike)
        groups = (torch.arange(n, device=device) % (n // 2)) // 3
        labels = (groups, groups)
    got = assert_matches_reference(z, k, thresholds_in_gaps(z, k, 0.7), partner, self_index, settings, labels=labels)
    assert (got[4] is None) == (mask_gradient == "labels")


@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("drop", "hard")])
@pytest.mark.parametrize(("b", "d"), [(2, 1), (5, 65), (20, 3), (8, 16), (32, 4)])
def test_odd_sizes(b: int, d: int, mode: str, mask: str, device: torch.device) -> None:
    # b = 32: 64 rows, four 16-wide tiles per sweep, two of them "fast" (no self or partner column).
    z = embeddings(2 * b, d, device)
    partner, self_index = single_process_layout(2 * b, device)
    assert_matches_reference(z, z, thresholds_for(2 * b, device), partner, self_index, settings_for(mode, mask))


@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("relabel", "hard")])
def test_scattered_partners(mode: str, mask: str, device: torch.device) -> None:
    # Self and partner columns anywhere (random permutations, some rows their own partner's
    # neighbour): the kernels' special tiles then cover most of each sweep, and stay correct.
    n, d = 40, 6
    gen = torch.Generator().manual_seed(3)
    self_index = torch.randperm(n, generator=gen).to(device)
    partner = (self_index + 1 + torch.randint(0, n - 1, (n,), generator=gen).to(device)) % n
    z = embeddings(n, d, device)
    assert bool((partner != self_index).all())
    assert_matches_reference(z, z.flip(0), thresholds_for(n, device), partner, self_index, settings_for(mode, mask))


def test_widest_rows(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    # 4096 features in chunks (1024 wide here: the interpreter pays per chunk, not per element).
    monkeypatch.setitem(kernel_module.CHUNK_DIM, "3xtf32", 1024)
    n, d = 6, kernel_module.MAX_DIM
    assert kernel_module.make_plan(torch.float32, d, "3xtf32").num_chunks == 4
    z = embeddings(n, d, device)
    partner, self_index = single_process_layout(n, device)
    thr = torch.full((n,), 0.01, device=device)  # cosines of random 4096-wide rows are ~±0.016
    assert_matches_reference(z, z.flip(0), thr, partner, self_index, settings_for("relabel", "soft", beta=0.01))


@pytest.mark.parametrize(("dtype", "precision"), [(torch.float32, "3xtf32"), (torch.float16, "native")])
@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("drop", "hard")])
def test_rows_in_chunks(
    dtype: torch.dtype, precision: str, mode: str, mask: str, device: torch.device, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows wider than what stays on chip run in BLOCK_D-wide chunks; shrink both limits so that
    # D = 40 takes that path here (three chunks of 16, the last one padded).
    monkeypatch.setitem(kernel_module.RESIDENT_DIM, "16bit", 16)
    monkeypatch.setitem(kernel_module.RESIDENT_DIM, "3xtf32", 16)
    monkeypatch.setitem(kernel_module.CHUNK_DIM, "16bit", 16)
    monkeypatch.setitem(kernel_module.CHUNK_DIM, "3xtf32", 16)
    kind = "16bit" if dtype == torch.float16 else "3xtf32"
    plan = kernel_module.make_plan(dtype, 40, precision, interpreted=True)
    assert (plan.num_chunks, plan.block_d) == (3, 16), kind
    n = 34
    z = embeddings(n, 40, device).to(dtype)
    partner, self_index = single_process_layout(n, device)
    tol = {"atol": 2e-5, "rtol": 2e-4} if dtype == torch.float32 else {"atol": 5e-3, "rtol": 5e-3}
    assert_matches_reference(
        z, z.roll(3, 0), thresholds_for(n, device), partner, self_index, settings_for(mode, mask),
        ref_dtype=torch.float32, **tol,
    )  # fmt: skip


@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("relabel", "hard")])
def test_backward_output_in_slices(mode: str, mask: str, device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows kept on chip for the scores, dQ and dK written in 16-wide slices by separate programs
    # (TileConfig.out_d: how the float32 3xTF32 dQ kernel stays within its registers at D = 128).
    make_plan = kernel_module.make_plan

    def sliced(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        plan = make_plan(*args, **kwargs)
        dq = dataclasses.replace(plan.dq, out_d=16)
        dk = dataclasses.replace(plan.dk, out_d=16)
        return dataclasses.replace(plan, dq=dq, dk=dk)

    monkeypatch.setattr(kernel_module, "make_plan", sliced)
    kernel_module.set_fp32_precision("3xtf32")
    n, d = 34, 40  # padded to 64: four slices
    z = embeddings(n, d, device)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device)
    assert_matches_reference(z, z.roll(2, 0), thr, partner, self_index, settings_for(mode, mask))


@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", ("drop", "attract", "relabel"))
def test_infinite_thresholds(mode: str, mask: str, device: torch.device) -> None:
    n = 14
    z = embeddings(n, 4, device)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device)
    thr[0::3] = math.inf  # every candidate a true negative
    thr[1::3] = -math.inf  # every candidate a suspected false negative
    rows, counts, *_ = assert_matches_reference(z, z, thr, partner, self_index, settings_for(mode, mask))
    assert torch.all(counts[0::3] == 0)
    assert torch.all(counts[1::3] == n - 2)
    if mode == "drop":
        # Everything masked: only the partner is left in the softmax, whose loss is then 0.
        torch.testing.assert_close(rows[1::3], torch.zeros_like(rows[1::3]), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("mode", "mask"), [(m, "hard") for m in MODES] + [("attract", "soft")])
def test_duplicate_rows(mode: str, mask: str, device: torch.device) -> None:
    # Repeated sequences: exact copies are candidates with similarity 1, far above the threshold.
    base = embeddings(5, 6, device)
    z1 = base[torch.tensor([0, 1, 1, 2, 3, 3, 3, 4], device=device)]
    z = torch.cat([z1, z1 + 0.05 * torch.randn_like(z1)])
    z = embed(z, "cos")
    partner, self_index = single_process_layout(z.shape[0], device)
    thr = torch.full((z.shape[0],), 0.5, device=device)
    assert_matches_reference(z, z, thr, partner, self_index, settings_for(mode, mask))


@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("relabel", "hard"), ("keep", "hard")])
def test_rows_against_columns(mode: str, mask: str, device: torch.device) -> None:
    # The distributed layout: rank 1 of 3 holds b = 3 of the B = 9 sequences and scores its
    # 2b rows against all 2B gathered columns.
    b, world, rank, d = 3, 3, 1, 7
    total = b * world
    columns = embeddings(2 * total, d, device)
    own = torch.arange(b, device=device) + rank * b
    rows_idx = torch.cat([own, own + total])
    q = columns[rows_idx]
    self_index = rows_idx
    partner = torch.cat([own + total, own])
    thr = thresholds_for(2 * b, device)
    assert q.shape[0] != columns.shape[0]
    assert_matches_reference(q, columns, thr, partner, self_index, settings_for(mode, mask))


def test_non_contiguous_inputs(device: torch.device) -> None:
    n, d = 18, 5
    wide = embeddings(n, 2 * d, device)
    q = wide[:, ::2]  # stride 2 along D
    k = embeddings(n, d, device).T.contiguous().T  # column-major
    thr = torch.tensor(0.1, device=device).expand(n)  # stride 0, as a 0-d threshold arrives
    partner, self_index = single_process_layout(n, device)
    assert not q.is_contiguous() and not k.is_contiguous()
    assert_matches_reference(q, k, thr, partner, self_index, settings_for("attract", "soft"))


# ---------------------------------------------------------------------------------------------
# Precision: float32 on tensor cores, 16-bit inputs, float64 round trips


@pytest.mark.parametrize(
    ("precision", "lowest", "highest"),
    # Stated accuracy (norm-relative, against float64) of each float32 mode. TF32 products are
    # emulated in the interpreter exactly as the tensor cores read their operands (the top 19
    # bits); "lowest" shows that the emulation is on, "highest" is the claim.
    [("ieee", 0.0, 1e-6), ("3xtf32", 0.0, 2e-6), ("tf32", 1e-5, 3e-3)],
)
@pytest.mark.parametrize(("mode", "mask"), [("attract", "hard"), ("attract", "soft")])
def test_fp32_precision_against_float64(
    precision: str, lowest: float, highest: float, mode: str, mask: str, device: torch.device
) -> None:
    kernel_module.set_fp32_precision(precision)
    assert kernel_module.fp32_precision() == precision
    n, d = 36, 24
    z = embeddings(n, d, device)
    k = embed(z + 0.3 * torch.randn_like(z), "cos")
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_in_gaps(z, k, 0.8)
    settings = settings_for(mode, mask, temperature=0.1, beta=0.1)
    upstream = torch.randn(n, device=device)
    want = run_backend(
        masked_info_nce_rows, z.double(), k.double(), thr.double(), partner, self_index, settings, upstream
    )
    got = run_backend(triton_masked_info_nce_rows, z, k, thr, partner, self_index, settings, upstream)
    errors = relative_errors(got, want)
    if mask == "hard":
        assert torch.equal(got[1].double(), want[1])  # the same false negatives
    else:
        errors["false_negatives"] = float((got[1].double() - want[1]).norm() / want[1].norm())
    assert all(lowest <= e <= highest for e in errors.values()), errors


def test_fp32_precision_default_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kernel_module.fp32_precision() == ("tf32" if torch.backends.cuda.matmul.allow_tf32 else "3xtf32")
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    assert kernel_module.fp32_precision() == "tf32"  # the user accepted TF32 for matmuls
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_FP32_PRECISION", "ieee")
    assert kernel_module.fp32_precision() == "ieee"
    assert kernel_module.set_fp32_precision("3xtf32") is None
    assert kernel_module.fp32_precision() == "3xtf32"
    with pytest.raises(ValueError, match="precision"):
        kernel_module.set_fp32_precision("fp64")
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_FP32_PRECISION", "fast")
    kernel_module.set_fp32_precision(None)
    with pytest.raises(ValueError, match="ADAPTIVE_CONTRASTIVE_FP32_PRECISION"):
        kernel_module.fp32_precision()


@pytest.mark.parametrize(
    ("mode", "mask", "mask_gradient"),
    [("attract", "soft", "full"), ("drop", "soft", "labels"), ("keep", "hard", "full"), ("drop", "hard", "full")],
)
@pytest.mark.parametrize(("dtype", "atol", "rtol"), [(torch.bfloat16, 3e-2, 3e-2), (torch.float16, 5e-3, 5e-3)])
def test_low_precision_inputs(
    dtype: torch.dtype, atol: float, rtol: float, mode: str, mask: str, mask_gradient: str, device: torch.device
) -> None:
    # The reference runs in float32 on the very same (rounded) values: the scores then agree to
    # float32 round-off and only the gradients carry the 16-bit rounding of ∂ℓ/∂s and of the output.
    n = 20
    z = embeddings(n, 6, device).to(dtype)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device)
    rows, counts, dq, dk, _ = assert_matches_reference(
        z, z.flip(0), thr, partner, self_index, settings_for(mode, mask, mask_gradient=mask_gradient),
        atol=atol, rtol=rtol, ref_dtype=torch.float32,
    )  # fmt: skip
    assert rows.dtype == torch.float32  # accumulated and returned in float32
    assert dq.dtype == dtype and dk.dtype == dtype


@pytest.mark.parametrize("mask", MASKS)
def test_fp16_gradients_do_not_underflow_under_mean(mask: str, device: torch.device) -> None:
    # The gradient of a mean is g_i = 1/N; with τ = 50 the entries g (P - y)/τ of the gradient
    # tile are ~1/(N² τ) ≈ 5e-6, float16 subnormals with ~1% rounding (and zero below 3e-8, which
    # larger N reaches at ordinary τ). The kernels scale the tile into float16's normal range
    # before its product: the float16 gradients carry float16's own rounding only.
    n, d = 44, 8
    z = embeddings(n, d, device)
    k = embed(z + 0.5 * torch.randn_like(z), "cos")
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_in_gaps(z, k, 0.7)
    settings = settings_for("attract", mask, temperature=50.0, beta=0.5)
    upstream = torch.full((n,), 1.0 / n, device=device)  # what reduction="mean" sends back
    want = run_backend(masked_info_nce_rows, z.half().double(), k.half().double(), thr.double(), partner, self_index,
                       settings, upstream)  # fmt: skip
    got = run_backend(triton_masked_info_nce_rows, z.half(), k.half(), thr, partner, self_index, settings, upstream)
    errors = relative_errors(got, want)
    assert got[2].dtype == torch.float16 and bool((got[2] != 0).all())
    assert errors["dq"] < 2e-3 and errors["dk"] < 2e-3, errors


def test_float64_inputs_round_trip(device: torch.device) -> None:
    n = 12
    z = embeddings(n, 3, device).double()
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device).double()
    rows, counts, dq, dk, dthr = assert_matches_reference(
        z, z.flip(0), thr, partner, self_index, settings_for("attract", "soft"), atol=1e-5, rtol=1e-5
    )
    assert rows.dtype == counts.dtype == dq.dtype == dk.dtype == dthr.dtype == torch.float64


# ---------------------------------------------------------------------------------------------
# Numerical edge cases


@pytest.mark.parametrize("mask", MASKS)
def test_tiny_temperature_stays_finite(mask: str, device: torch.device) -> None:
    n = 16
    z = embeddings(n, 4, device)
    partner, self_index = single_process_layout(n, device)
    settings = settings_for("attract", mask, temperature=0.01, beta=0.01)
    # Against float64: the float32 reference loses e^{l + log ν} terms where ν underflows to 0
    # (ν < 1e-45, l ~ 100), the kernel's weight 2^{x + min(a, 0)}·r keeps them.
    rows, *_ = assert_matches_reference(
        z, z, thresholds_for(n, device), partner, self_index, settings, atol=1e-3, ref_dtype=torch.float64
    )
    assert torch.isfinite(rows).all()


@pytest.mark.parametrize("mode", ("drop", "attract", "relabel"))
def test_masked_columns_far_above_the_softmax(mode: str, device: torch.device) -> None:
    # Partners are antipodes (s = -1), so with τ = 0.01 the left-out self logit and every masked
    # column sit ~100 above the row's log-sum-exp: e^{l - lse} alone overflows float32 there. The
    # kernel never forms it, so the result stays finite and equals float64's.
    eye = torch.eye(4, device=device)
    z = torch.cat([eye, -eye])
    partner, self_index = single_process_layout(8, device)
    thr = torch.full((8,), 0.5, device=device)
    settings = settings_for(mode, "soft", temperature=0.01, beta=0.05)
    assert_matches_reference(z, z, thr, partner, self_index, settings, atol=1e-4, ref_dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Through the public API


@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_functional_api(reduction: str, device: torch.device) -> None:
    kernel_module.set_fp32_precision("ieee")
    b, d = 9, 6
    z1, z2 = torch.randn(b, d, device=device), torch.randn(b, d, device=device)
    thr = torch.rand(b, device=device) * 0.4 - 0.1
    results = {}
    for backend in ("reference", "triton"):
        leaves = [t.clone().requires_grad_() for t in (z1, z2, thr)]
        loss = adaptive_info_nce(
            *leaves, temperature=0.2, mask="soft", mask_temperature=0.1, reduction=reduction, backend=backend
        )
        (loss if reduction == "mean" else loss * torch.linspace(0.5, 2.0, 2 * b, device=device)).sum().backward()
        results[backend] = (loss.detach(), *(t.grad for t in leaves))
    for r, g in zip(results["reference"], results["triton"], strict=True):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=2e-4)


def test_soft_mask_default_gradient_runs_the_kernel(device: torch.device, monkeypatch: pytest.MonkeyPatch) -> None:
    # mask="soft" with the default mask_gradient="labels" runs on the fused kernel, not on the dense
    # reference path; the threshold gets no gradient, as on the reference backend.
    import adaptive_contrastive.functional as functional

    b, d = 9, 6
    z1, z2 = torch.randn(b, d, device=device), torch.randn(b, d, device=device)
    thr = torch.rand(b, device=device) * 0.4 - 0.1
    kw = dict(temperature=0.2, mask="soft", mask_temperature=0.1, false_negatives="attract")
    results = {}
    for backend in ("reference", "triton"):
        if backend == "triton":

            def dense_path(*_args, **_kwargs):  # noqa: ANN002, ANN003, ANN202
                raise AssertionError("the soft mask ran on the reference backend")

            monkeypatch.setattr(functional, "masked_info_nce_rows", dense_path)
        leaves = [t.clone().requires_grad_() for t in (z1, z2, thr)]
        loss = adaptive_info_nce(*leaves, backend=backend, **kw)
        loss.backward()
        assert leaves[2].grad is None
        results[backend] = (loss.detach(), leaves[0].grad, leaves[1].grad)
    for r, g in zip(results["reference"], results["triton"], strict=True):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=2e-4)


def test_module_api(device: torch.device) -> None:
    kernel_module.set_fp32_precision("ieee")
    b, d = 7, 8
    z1, z2 = torch.randn(b, d, device=device), torch.randn(b, d, device=device)
    results = {}
    for backend in ("reference", "triton"):
        torch.manual_seed(1)  # the same ThresholdNet weights for both backends
        loss_fn = AdaptiveInfoNCE(dim=d, warmup_epochs=0, mask="soft", temperature=0.5, backend=backend).to(device)
        leaves = [z1.clone().requires_grad_(), z2.clone().requires_grad_()]
        loss = loss_fn(*leaves)
        loss.backward()
        grads = [t.grad for t in leaves] + [p.grad for p in loss_fn.parameters()]
        results[backend] = (loss.detach(), *grads)
    for r, g in zip(results["reference"], results["triton"], strict=True):
        torch.testing.assert_close(g, r, atol=2e-5, rtol=2e-4)


def test_launch_falls_back_to_smaller_tiles_when_shared_memory_runs_out() -> None:
    # Triton 3.0 needs more shared memory than a block may have for some float32 kernels at their
    # default tiles; the launch then retries with smaller ones and remembers them.
    from triton.runtime.errors import OutOfResources

    launched: list[tuple[tuple[int, ...], int, int, int]] = []

    class Kernel:
        def __getitem__(self, grid):  # noqa: ANN001, ANN204
            def run(**kwargs):  # noqa: ANN003, ANN202
                if kwargs["num_stages"] > 1 or kwargs["BLOCK_N"] > 32:
                    raise OutOfResources(240_000, 232_448, "shared memory")
                launched.append((grid, kwargs["BLOCK_M"], kwargs["BLOCK_N"], kwargs["num_stages"]))

            return run

    kernel = Kernel()
    config = kernel_module.TileConfig(128, 64, 8, 2)
    launch = kernel_module.Launch("dq", kernel, 1000, "block_m", 2, {}, {"FLAG": True}, config)
    launch.run()
    launch.run()
    assert launched == [((8, 2), 128, 32, 1)] * 2  # one stage, then half the streamed columns
    assert kernel_module.smaller_tiles(kernel_module.TileConfig(16, 128, 8, 1), "block_n").block_n == 64
    assert kernel_module.smaller_tiles(kernel_module.TileConfig(16, 16, 4, 1)) is None


@pytest.mark.skipif(ON_CUDA, reason="checks the CPU switch of the interpreter")
def test_backend_resolution_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_backend("triton", torch.device("cpu")) == "triton"
    assert resolve_backend("auto", torch.device("cpu")) == "reference"
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="TRITON_INTERPRET"):
        resolve_backend("triton", torch.device("cpu"))


def test_bad_inputs_raise(device: torch.device) -> None:
    n = 8
    partner, self_index = single_process_layout(n, device)
    settings = settings_for("attract")
    thr = torch.zeros(n, device=device)
    wide = torch.randn(n, kernel_module.MAX_DIM + 1, device=device)
    with pytest.raises(ValueError, match="D <="):
        triton_masked_info_nce_rows(wide, wide, thr, partner, self_index, settings)
    z = torch.randn(n, 4, device=device)
    with pytest.raises(ValueError, match="partner"):
        triton_masked_info_nce_rows(z, z, thr, partner.int(), self_index, settings)
    with pytest.raises(ValueError, match="thresholds"):
        triton_masked_info_nce_rows(z, z, None, partner, self_index, settings)
    with pytest.raises(TypeError, match="dtype"):
        triton_masked_info_nce_rows(z, z.half(), thr, partner, self_index, settings)
    labels = torch.zeros(n, dtype=torch.int64, device=device)
    with pytest.raises(ValueError, match="together"):
        triton_masked_info_nce_rows(z, z, thr, partner, self_index, settings, row_labels=labels)
    with pytest.raises(ValueError, match="keep"):
        triton_masked_info_nce_rows(z, z, None, partner, self_index, settings_for("keep"), labels, labels)
    with pytest.raises(ValueError, match="column_labels"):
        triton_masked_info_nce_rows(z, z, thr, partner, self_index, settings, labels, labels.int())


# ---------------------------------------------------------------------------------------------
# CUDA only: realistic sizes, compiled kernels (benchmarks/run_gpu.sh runs these).


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    ("dtype", "precision", "tolerance"),
    [
        (torch.float32, "3xtf32", 1e-5),
        (torch.float32, "tf32", 1e-2),
        (torch.float32, "ieee", 1e-5),
        (torch.bfloat16, "native", 3e-2),
        (torch.float16, "native", 5e-3),
    ],
)
@pytest.mark.parametrize("mask", MASKS)
def test_gpu_against_float64_at_scale(dtype: torch.dtype, precision: str, tolerance: float, mask: str) -> None:
    """Norm-relative error of rows, dq, dk (and dthr) against the float64 reference at N = 4096
    (the shapes of benchmarks/gpu_check.py: its compiled kernels serve this test from Triton's cache)."""
    if precision != "native":
        kernel_module.set_fp32_precision(precision)
    device = torch.device("cuda")
    n, d = 4096, 128
    z = embeddings(n, d, device).to(dtype)
    k = z.roll(1, 0)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_in_gaps(z.float(), k.float(), 0.9)
    settings = settings_for("attract", mask, 0.1)
    upstream = torch.full((n,), 1.0 / n, device=device)  # the real gradient of a mean
    want = run_backend(masked_info_nce_rows, z.double(), k.double(), thr.double(), partner, self_index, settings,
                       upstream.double())  # fmt: skip
    got = run_backend(triton_masked_info_nce_rows, z, k, thr, partner, self_index, settings, upstream)
    errors = relative_errors(got, want)
    assert all(e <= tolerance for e in errors.values()), errors


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("d", (65, 300))
def test_gpu_any_width(d: int) -> None:
    # 65: padded to 128 and kept on chip; 300: five 64-wide chunks, the last one padded.
    device = torch.device("cuda")
    n = 1000
    z = embeddings(n, d, device)
    partner, self_index = single_process_layout(n, device)
    thr = torch.full((n,), 0.5 / math.sqrt(d), device=device)
    assert_matches_reference(z, z, thr, partner, self_index, settings_for("attract", "soft"), atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_memory_is_linear_in_rows() -> None:
    # N = 65536 rows: an N×N float32 matrix would be 16 GiB; the kernels need O(N·D).
    device = torch.device("cuda")
    n, d = 65536, 128
    z = embeddings(n, d, device).requires_grad_()
    partner, self_index = single_process_layout(n, device)
    thr = torch.full((n,), 0.1, device=device)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    rows, _ = triton_masked_info_nce_rows(z, z, thr, partner, self_index, settings_for("attract"))
    rows.mean().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < 12 * n * d * 4  # a few (N, D) buffers (3xTF32 splits, float32 gradients), never N×N
    assert torch.isfinite(z.grad).all()
