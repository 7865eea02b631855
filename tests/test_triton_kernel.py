"""The fused Triton backend against the reference backend (SPEC §3, §5).

Without CUDA the kernels run in Triton's interpreter (numpy), so every size here stays tiny;
tests marked ``gpu`` repeat the comparison at realistic sizes on a CUDA device.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
from collections.abc import Iterator

import pytest
import torch

_PREVIOUS_INTERPRET = os.environ.get("TRITON_INTERPRET")
if not torch.cuda.is_available():
    # triton.jit reads this when the kernels are defined, so it must precede their first import.
    os.environ["TRITON_INTERPRET"] = "1"

pytest.importorskip("triton")

import adaptive_contrastive.kernels as kernels_package  # noqa: E402
import adaptive_contrastive.kernels.masked_info_nce as kernel_module  # noqa: E402
from adaptive_contrastive import AdaptiveInfoNCE  # noqa: E402
from adaptive_contrastive.functional import adaptive_info_nce, embed, resolve_backend  # noqa: E402
from adaptive_contrastive.reference import LossSettings, masked_info_nce_rows  # noqa: E402

ON_CUDA = torch.cuda.is_available()
if not ON_CUDA and not kernel_module._INTERPRETED:
    # Some earlier import defined the kernels without the interpreter: define them again.
    kernel_module = importlib.reload(kernel_module)
    kernels_package = importlib.reload(kernels_package)
triton_masked_info_nce_rows = kernels_package.triton_masked_info_nce_rows

# Restore the variable for the rest of the session (other modules test the error it switches
# off); `interpreter_env` sets it again around each test of this module.
if _PREVIOUS_INTERPRET is None:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = _PREVIOUS_INTERPRET

MODES = ("keep", "drop", "attract", "relabel")
MASKS = ("hard", "soft")
gpu = pytest.mark.skipif(not ON_CUDA, reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch: pytest.MonkeyPatch) -> None:
    if not ON_CUDA:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    # One compiled config per mode/width/dtype instead of a tuning sweep each: this file visits
    # dozens of combinations. `test_gpu_autotuned` covers the tuned path.
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_AUTOTUNE", "0")


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return torch.device("cuda" if ON_CUDA else "cpu")


@contextlib.contextmanager
def ieee_matmuls() -> Iterator[None]:
    """Both backends in IEEE float32 (torch's default; the kernel follows the same switch)."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def settings_for(mode: str, mask: str = "hard", temperature: float = 0.3, beta: float = 0.1) -> LossSettings:
    return LossSettings(
        temperature=temperature, false_negatives=mode, positive_weight=0.5, mask=mask, mask_temperature=beta
    )


def single_process_layout(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """partner and self_index of Z = cat(z1, z2) with N = n rows: p(i) = (i + n/2) mod n."""
    rows = torch.arange(n, device=device)
    return (rows + n // 2) % n, rows


def run_backend(fn, q, k, thr, partner, self_index, settings, upstream):
    """Rows, counts and the gradients of Σ upstream·rows w.r.t. fresh leaves q, k and thr."""
    q = q.detach().clone().requires_grad_()
    k = k.detach().clone().requires_grad_()
    soft = settings.mask == "soft" and settings.uses_threshold
    if thr is not None:
        thr = thr.detach().clone().requires_grad_(soft)
    rows, counts = fn(q, k, thr if settings.uses_threshold else None, partner, self_index, settings)
    (rows * upstream.to(rows.dtype)).sum().backward()
    return rows.detach(), counts, q.grad, k.grad, thr.grad if soft else None


def assert_matches_reference(q, k, thr, partner, self_index, settings, *, atol=2e-5, rtol=2e-4, ref_dtype=None):
    """Triton vs reference: row losses, F, dq, dk and (soft mask) dthr, with a non-unit upstream gradient."""
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
    )
    got = run_backend(triton_masked_info_nce_rows, q, k, thr, partner, self_index, settings, upstream)
    for name, r, g in zip(("rows", "false_negatives", "dq", "dk", "dthr"), ref, got, strict=True):
        if r is None:
            assert g is None, name
            continue
        assert g is not None, name
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g.to(r.dtype), r, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    return got


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
    would otherwise lie within float32 round-off of a threshold, and the two backends, whose
    dot products round differently, would disagree on its hard mask."""
    s = torch.sort(q.double() @ k.double().T, dim=1).values
    centre = int(quantile * (s.shape[1] - 1))
    lo, hi = max(centre - 20, 0), min(centre + 20, s.shape[1] - 1)
    gaps = s[:, lo + 1 : hi + 1] - s[:, lo:hi]
    j = lo + gaps.argmax(dim=1, keepdim=True)
    return ((s.gather(1, j) + s.gather(1, j + 1)) / 2).squeeze(1).float()


@pytest.mark.parametrize("similarity", ("cos", "dot"))
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", MODES)
def test_matches_reference(mode: str, mask: str, similarity: str, device: torch.device) -> None:
    n, d = 22, 5  # neither a multiple of the 16-wide tiles
    z = embeddings(n, d, device, similarity)
    k = z + 0.01 * torch.randn_like(z)  # q and k distinct, so dq and dk are checked separately
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device, similarity)
    rows, counts, *_ = assert_matches_reference(z, k, thr, partner, self_index, settings_for(mode, mask))
    if mode != "keep" and mask == "hard":
        assert 0 < float(counts.sum()) < n * (n - 2)  # the mask really splits the candidates


@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("drop", "hard")])
@pytest.mark.parametrize(("b", "d"), [(2, 1), (5, 65), (20, 3), (8, 16)])
def test_odd_sizes(b: int, d: int, mode: str, mask: str, device: torch.device) -> None:
    z = embeddings(2 * b, d, device)
    partner, self_index = single_process_layout(2 * b, device)
    assert_matches_reference(z, z, thresholds_for(2 * b, device), partner, self_index, settings_for(mode, mask))


def test_widest_rows(device: torch.device) -> None:
    n, d = 6, kernel_module.MAX_DIM
    z = embeddings(n, d, device)
    partner, self_index = single_process_layout(n, device)
    thr = torch.full((n,), 0.02, device=device)  # cosines of random 1024-wide rows are ~±0.03
    assert_matches_reference(z, z.flip(0), thr, partner, self_index, settings_for("relabel", "soft", beta=0.01))


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


@pytest.mark.parametrize(("mode", "mask"), [("attract", "soft"), ("keep", "hard"), ("drop", "hard")])
@pytest.mark.parametrize(("dtype", "atol", "rtol"), [(torch.bfloat16, 3e-2, 3e-2), (torch.float16, 5e-3, 5e-3)])
def test_low_precision_inputs(
    dtype: torch.dtype, atol: float, rtol: float, mode: str, mask: str, device: torch.device
) -> None:
    # The reference runs in float32 on the very same (rounded) values: the scores then agree to
    # float32 round-off and only the gradients carry the 16-bit rounding of ∂ℓ/∂s and of the output.
    n = 20
    z = embeddings(n, 6, device).to(dtype)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device)
    rows, counts, dq, dk, _ = assert_matches_reference(
        z,
        z.flip(0),
        thr,
        partner,
        self_index,
        settings_for(mode, mask),
        atol=atol,
        rtol=rtol,
        ref_dtype=torch.float32,
    )
    assert rows.dtype == torch.float32  # accumulated and returned in float32
    assert dq.dtype == dtype and dk.dtype == dtype


def test_float64_inputs_round_trip(device: torch.device) -> None:
    n = 12
    z = embeddings(n, 3, device).double()
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_for(n, device).double()
    rows, counts, dq, dk, dthr = assert_matches_reference(
        z, z.flip(0), thr, partner, self_index, settings_for("attract", "soft"), atol=1e-5, rtol=1e-5
    )
    assert rows.dtype == counts.dtype == dq.dtype == dk.dtype == dthr.dtype == torch.float64


@pytest.mark.parametrize("mask", MASKS)
def test_tiny_temperature_stays_finite(mask: str, device: torch.device) -> None:
    n = 16
    z = embeddings(n, 4, device)
    partner, self_index = single_process_layout(n, device)
    settings = settings_for("attract", mask, temperature=0.01, beta=0.01)
    # Against float64: the float32 reference loses e^{l + log ν} terms where ν underflows to 0
    # (ν < 1e-45, l ~ 100), the kernel's log-sigmoid keeps them.
    rows, *_ = assert_matches_reference(
        z, z, thresholds_for(n, device), partner, self_index, settings, atol=1e-3, ref_dtype=torch.float64
    )
    assert torch.isfinite(rows).all()


@pytest.mark.parametrize("mode", ("drop", "attract", "relabel"))
def test_masked_columns_far_above_the_softmax(mode: str, device: torch.device) -> None:
    # Partners are antipodes (s = -1), so with τ = 0.01 the left-out self logit and every masked
    # column sit ~100 above the row's log-sum-exp: e^{l - lse} alone overflows float32 there. The
    # kernel never forms it (P φ instead), so the result stays finite and equals float64's.
    eye = torch.eye(4, device=device)
    z = torch.cat([eye, -eye])
    partner, self_index = single_process_layout(8, device)
    thr = torch.full((8,), 0.5, device=device)
    settings = settings_for(mode, "soft", temperature=0.01, beta=0.05)
    assert_matches_reference(z, z, thr, partner, self_index, settings, atol=1e-4, ref_dtype=torch.float64)


@pytest.mark.parametrize("reduction", ("mean", "none"))
def test_functional_api(reduction: str, device: torch.device) -> None:
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


def test_module_api(device: torch.device) -> None:
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


# ---------------------------------------------------------------------------------------------
# CUDA only: realistic sizes, compiled kernels.


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("mask", MASKS)
@pytest.mark.parametrize("mode", MODES)
def test_gpu_matches_reference_at_scale(mode: str, mask: str) -> None:
    device = torch.device("cuda")
    n, d = 3000, 128
    z = embeddings(n, d, device)
    k = z.roll(1, 0)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_in_gaps(z, k, 0.9)
    with ieee_matmuls():
        assert_matches_reference(z, k, thr, partner, self_index, settings_for(mode, mask, 0.1), atol=1e-4)


@pytest.mark.gpu
@gpu
def test_gpu_autotuned(monkeypatch: pytest.MonkeyPatch) -> None:
    # The benchmark's shape class (D = 128, N a multiple of 16): its compiled configs are cached
    # on disk for benchmarks/run_gpu.sh's later steps.
    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_AUTOTUNE", "1")
    device = torch.device("cuda")
    n, d = 4096, 128
    z = embeddings(n, d, device)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_in_gaps(z, z, 0.8)
    with ieee_matmuls():
        assert_matches_reference(z, z, thr, partner, self_index, settings_for("attract", "hard", 0.1), atol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("d", (1, 65, 300, 1024))
def test_gpu_any_width(d: int) -> None:
    device = torch.device("cuda")
    n = 1000
    z = embeddings(n, d, device)
    partner, self_index = single_process_layout(n, device)
    thr = torch.full((n,), 0.5 / math.sqrt(d), device=device)
    with ieee_matmuls():
        assert_matches_reference(z, z, thr, partner, self_index, settings_for("attract", "soft"), atol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_gpu_low_precision(dtype: torch.dtype) -> None:
    device = torch.device("cuda")
    n = 4096
    z = embeddings(n, 64, device).to(dtype)
    partner, self_index = single_process_layout(n, device)
    thr = thresholds_in_gaps(z.float(), z.float(), 0.8)
    with ieee_matmuls():
        assert_matches_reference(
            z,
            z,
            thr,
            partner,
            self_index,
            settings_for("attract", "hard", 0.1),
            atol=5e-2,
            rtol=5e-2,
            ref_dtype=torch.float32,
        )


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
    assert extra < 8 * n * d * 4  # a few (N, D) buffers, never N×N
    assert torch.isfinite(z.grad).all()
