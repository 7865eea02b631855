"""The Triton kernels, set up to run in this process: compiled on CUDA, in Triton's interpreter
(numpy, on CPU tensors) otherwise. Shared by the kernel test modules."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest
import torch

ON_CUDA = torch.cuda.is_available()


def load_kernel_module() -> ModuleType:
    """`adaptive_contrastive.kernels.masked_info_nce`, interpreted when there is no CUDA device.

    triton.jit reads TRITON_INTERPRET when a kernel is defined, i.e. when its module is first
    imported; if an earlier import defined them compiled, they are defined again here. Call it at
    collection time (module level), before any test imports Triton. The variable is restored
    afterwards (other modules test the error its absence raises).
    """
    previous = os.environ.get("TRITON_INTERPRET")
    if not ON_CUDA:
        # Before Triton's first import too: its own library functions (tl.zeros, ...) are
        # defined then, and the interpreter can only run them if they were defined for it.
        os.environ["TRITON_INTERPRET"] = "1"
    try:
        pytest.importorskip("triton")
        import adaptive_contrastive.kernels as package
        from adaptive_contrastive.kernels import _kernels, _tiles, masked_info_nce

        if not ON_CUDA and not masked_info_nce._INTERPRETED:
            for module in (_tiles, _kernels, masked_info_nce, package):
                importlib.reload(module)
        return masked_info_nce
    finally:
        if previous is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = previous


def run_interpreted_quickly(monkeypatch: pytest.MonkeyPatch) -> None:
    """TRITON_INTERPRET=1 for the test, and two costs of Triton's interpreter (3.x) cut, where
    its internals are as expected (else it just runs slower):

    - its int32 overflow checks: a quarter of the interpreted time; the kernels' index
      arithmetic is bounded on the host (`_check_inputs` limits the row counts);
    - re-patching triton.language on every call of a jit helper inside a kernel: the kernel's
      own patch is still in force then, so the nested ones change nothing, and cost 40% of the
      time. Each kernel launch still patches once and restores at its end.
    """
    if ON_CUDA:
        return
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    try:
        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - other Triton layouts
        return
    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is not None and hasattr(options, "sanitize_overflow"):
        monkeypatch.setattr(builder, "options", dataclasses.replace(options, sanitize_overflow=False))
    patch_lang = getattr(interpreter, "_patch_lang", None)
    if patch_lang is not None and not getattr(patch_lang, "patches_once", False):
        monkeypatch.setattr(interpreter, "_patch_lang", _patch_once(patch_lang))


def _patch_once(patch_lang: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """`patch_lang` that skips a nested patch whose language modules the running kernel's patches
    already cover (the first, kernel-level patch is restored at the kernel's end, as before)."""
    import inspect

    import triton.language as tl

    patched: set[int] = set()
    active = [False]

    def modules(fn: Any) -> set[int]:
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    class _KernelScope:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def restore(self) -> None:
            active[0] = False
            patched.clear()
            self.inner.restore()

    class _NothingToRestore:
        def restore(self) -> None:
            pass

    def patch(fn: Any) -> Any:
        wanted = modules(fn)
        if active[0] and wanted <= patched:
            return _NothingToRestore()
        scope = patch_lang(fn)
        patched.update(wanted)
        if active[0]:
            return scope  # a nested patch: its caller never restores it
        active[0] = True
        return _KernelScope(scope)

    patch.patches_once = True  # type: ignore[attr-defined]
    return patch
