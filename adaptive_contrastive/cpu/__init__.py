"""The hard-mask forward's elementwise passes as one compiled CPU loop (``hard_rows.c``), for the reference backend.

PyTorch's CPU ops each stream the whole similarity block through memory, and the thresholded modes need about a
dozen of them per block; `hard_rows` makes three passes over one row at a time while it sits in the L1 cache.
It is built on first use with the system's C compiler (as Triton builds its launchers), cached on disk and called
through ctypes, so the package stays pure Python. Without a compiler, or with ``ADAPTIVE_CONTRASTIVE_CPU_KERNEL=0``,
the reference backend runs its PyTorch ops instead; results agree to float32 rounding either way.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import warnings
from typing import Any

import torch
from torch import Tensor

from . import build

__all__ = ["hard_rows", "usable", "unavailable_reason"]

# Flags of hard_rows.c: which terms a mode has.
MASKS_DENOMINATOR, SOFT_LABELS, USES_PHI = 1, 2, 4
# Below this many elements a block is one call: splitting it over threads costs more than it saves.
_MIN_ELEMENTS_PER_THREAD = 1 << 16

_function: Any = None  # the library's hard_rows, with its argument types set
_reason: str | None = None
_loaded = False
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_size = 0


def _disabled_by_environment() -> bool:
    return os.environ.get("ADAPTIVE_CONTRASTIVE_CPU_KERNEL", "1").strip().lower() in ("0", "false", "no", "off")


def _load() -> None:
    """Build (or find in the cache) and load the library once per process; remember why not if it fails."""
    global _function, _reason, _loaded
    _loaded = True
    try:
        library = ctypes.CDLL(str(build.shared_library()))
    except (build.BuildError, OSError) as error:
        _reason = str(error)
        warnings.warn(
            f"adaptive_contrastive: the compiled CPU kernel is unavailable ({error}); the reference backend uses "
            "PyTorch ops instead, which is slower but gives the same results. Set ADAPTIVE_CONTRASTIVE_CPU_KERNEL=0 "
            "to skip the build and this warning.",
            RuntimeWarning,
            stacklevel=4,
        )
        return
    function = library.hard_rows
    pointer, int64, c_float, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float, ctypes.c_int
    function.argtypes = [
        pointer, int64, int64, int64, int64,  # sims, its row stride, columns, rows [begin, end)
        pointer, pointer, pointer,  # thresholds, row labels, column labels
        pointer, pointer, c_float, c_int, c_float,  # partner, self index, 1/τ, flags, α
        pointer, int64, pointer, pointer, pointer, pointer,  # grad, its row stride, lse, partner logit, F, Σφl
    ]  # fmt: skip
    function.restype = None
    _function = function


def unavailable_reason() -> str | None:
    """Why `hard_rows` cannot run in this process (builds the kernel on the first call), or None when it can."""
    if _disabled_by_environment():
        return "disabled by ADAPTIVE_CONTRASTIVE_CPU_KERNEL"
    if not _loaded:
        _load()
    return _reason


def usable(block: Tensor) -> bool:
    """Whether a block like `block` can go through the kernel: float32 on the CPU, in eager mode (a compiled graph
    fuses the PyTorch ops itself, and functorch's wrapped tensors have no memory of their own)."""
    if block.device.type != "cpu" or block.dtype != torch.float32:
        return False
    if torch.compiler.is_compiling() or _is_wrapped(block):
        return False
    return unavailable_reason() is None


def _is_wrapped(t: Tensor) -> bool:
    functorch = getattr(torch._C, "_functorch", None)
    return functorch is not None and bool(functorch.is_functorch_wrapped_tensor(t))


def _pointer(t: Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def hard_rows(
    sims: Tensor,
    thresholds: Tensor | None,
    row_labels: Tensor | None,
    column_labels: Tensor | None,
    partner: Tensor,
    self_index: Tensor,
    temperature: float,
    flags: int,
    positive_weight: float,
    grad: Tensor,
    lse: Tensor,
    partner_logit: Tensor,
    fn_count: Tensor,
    phi_logit_sum: Tensor,
) -> None:
    """Fill `grad` (P - y), `lse`, `partner_logit`, `fn_count` and `phi_logit_sum` for the rows of `sims`.

    `sims` and `grad` are float32 blocks with unit column stride, and may be the same tensor (the loop then overwrites
    the similarities); the per-row tensors are contiguous, float32
    (labels: comparable floats) or int64 (`partner`, `self_index`). Rows are split over PyTorch's intra-op threads.
    """
    assert _function is not None, "call usable() first"
    n_rows, n_cols = sims.shape
    for block in (sims, grad):
        assert block.dtype == torch.float32 and block.stride(1) == 1
    vectors = (thresholds, row_labels, column_labels, partner, self_index, lse, partner_logit, fn_count, phi_logit_sum)
    assert all(v is None or v.is_contiguous() for v in vectors)
    assert partner.dtype == self_index.dtype == torch.int64
    function = _function
    fixed = (
        _pointer(thresholds), _pointer(row_labels), _pointer(column_labels), partner.data_ptr(),
        self_index.data_ptr(), 1.0 / temperature, flags, positive_weight, grad.data_ptr(), grad.stride(0),
        lse.data_ptr(), partner_logit.data_ptr(), fn_count.data_ptr(), phi_logit_sum.data_ptr(),
    )  # fmt: skip

    def run(begin: int, end: int) -> None:
        function(sims.data_ptr(), sims.stride(0), n_cols, begin, end, *fixed)

    threads = min(torch.get_num_threads(), max(1, n_rows * n_cols // _MIN_ELEMENTS_PER_THREAD), n_rows)
    if threads <= 1:
        run(0, n_rows)
        return
    # ctypes releases the GIL for the call, so plain threads run the row ranges in parallel; this thread takes the
    # first range itself.
    global _pool, _pool_size
    if _pool is None or _pool_size < threads - 1:
        _pool_size = threads - 1
        _pool = concurrent.futures.ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="adaptive_contrastive")
    bounds = [n_rows * t // threads for t in range(threads + 1)]
    others = [_pool.submit(run, a, b) for a, b in zip(bounds[1:-1], bounds[2:], strict=True)]
    run(bounds[0], bounds[1])
    for future in others:
        future.result()
