"""Contrastive losses to benchmark against, each as a callable ``(z1, z2) -> scalar loss``.

Every builder returns None when its package is missing, so a benchmark can list what it
measured and what it skipped. ``z1, z2`` are the two views `(B, D)`; N = 2B rows in all.

What each baseline scores (the work differs, so tables should say which):

| name | loss | pairs scored |
|---|---|---|
| ``pml`` | pytorch-metric-learning ``NTXentLoss`` on cat(z1, z2), labels arange(B) twice | N×N |
| ``lightly`` | lightly ``NTXentLoss(out0=z1, out1=z2)`` | N×N |
| ``info_nce`` | info-nce-pytorch ``InfoNCE(query=z1, positive_key=z2)``, in-batch negatives | B×B = N²/4 |
| ``inf_cl`` | inf-cl ``cal_inf_loss(cat(z1, z2), cat(z2, z1))`` (CUDA only) | N×N |
| ``adaptive_*`` | this library's ``adaptive_info_nce`` (mode, backend, ``_labels``: 4 sequences per label) | N×N |

inf-cl scores row i of Z = cat(z1, z2) against every row of cat(z2, z1) with the partner as its
label: the same N×N work and positive as NT-Xent, but its denominator also holds the row's own
similarity (inf-cl has no self mask). It is a timing baseline, not a numerical oracle.

lightly imports torchvision at import time even for its losses; where torchvision is not
installable, `import_lightly_ntxent` puts a stub on ``sys.meta_path`` first (see there).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor], Tensor]

# One temperature for every method so that the numbers compare like with like.
TEMPERATURE = 0.1
# Threshold of the adaptive modes, in cosine units. Random embeddings of width D have cosine
# similarities of spread ~1/sqrt(D), so 0.1 marks a few percent to ~20% of candidates as suspected
# false negatives at D = 64..256: the masked branches of the kernel really run.
THRESHOLD = 0.1
# Sequences per label in the labelled variants (known positives, SPEC §8).
LABEL_GROUP = 4


class _DummyAttr:
    """Stands in for any torchvision class or function; fails loudly only if actually called."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("torchvision is not installed; this benchmark only uses lightly's losses")


class _StubModule(types.ModuleType):
    """A torchvision(.*) module whose every public attribute is a dummy class."""

    __path__: list[str] = []  # a package, so `import torchvision.ops.boxes` also resolves here

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        dummy = type(name, (_DummyAttr,), {})
        setattr(self, name, dummy)
        return dummy


class _TorchvisionStubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Meta-path finder that answers every ``torchvision`` import with a `_StubModule`."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _StubModule(spec.name)
        module.__version__ = "0.0.0+stub"  # type: ignore[attr-defined]
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install_torchvision_stub() -> bool:
    """Stub out torchvision, only if it cannot be imported. Returns True when the stub is in place."""
    if any(isinstance(f, _TorchvisionStubFinder) for f in sys.meta_path):
        return True
    try:
        import torchvision  # noqa: F401
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _TorchvisionStubFinder())
        return True
    return False


def import_lightly_ntxent() -> type | None:
    """lightly's ``NTXentLoss`` class, with torchvision stubbed if it is broken; None without lightly."""
    try:
        import lightly  # noqa: F401
    except Exception:
        return None
    install_torchvision_stub()
    try:
        from lightly.loss import NTXentLoss
    except Exception:  # lightly's import chain needs more than torchvision here
        return None
    return NTXentLoss  # type: ignore[no-any-return]


def pml_ntxent(temperature: float = TEMPERATURE) -> LossFn | None:
    """pytorch-metric-learning ``NTXentLoss`` on cat(z1, z2); row b of each view shares label b."""
    try:
        from pytorch_metric_learning.losses import NTXentLoss
    except Exception:  # missing, or one of its own imports broken
        return None
    loss_fn = NTXentLoss(temperature=temperature)

    def call(z1: Tensor, z2: Tensor) -> Tensor:
        labels = torch.arange(z1.shape[0], device=z1.device).repeat(2)
        return loss_fn(torch.cat([z1, z2]), labels)  # type: ignore[no-any-return]

    return call


def lightly_ntxent(temperature: float = TEMPERATURE) -> LossFn | None:
    """lightly ``NTXentLoss`` (SimCLR's NT-Xent over both views, no memory bank)."""
    cls = import_lightly_ntxent()
    if cls is None:
        return None
    loss_fn = cls(temperature=temperature, memory_bank_size=0)

    def call(z1: Tensor, z2: Tensor) -> Tensor:
        return loss_fn(z1, z2)  # type: ignore[no-any-return]

    return call


def info_nce(temperature: float = TEMPERATURE) -> LossFn | None:
    """info-nce-pytorch ``InfoNCE``: query z1, positive key z2, the other rows of z2 as negatives."""
    try:
        from info_nce import InfoNCE
    except Exception:
        return None
    loss_fn = InfoNCE(temperature=temperature)

    def call(z1: Tensor, z2: Tensor) -> Tensor:
        return loss_fn(z1, z2)  # type: ignore[no-any-return]

    return call


def inf_cl(temperature: float = TEMPERATURE) -> LossFn | None:
    """inf-cl's ``cal_inf_loss`` (Triton, CUDA only): plain InfoNCE of cat(z1, z2) against cat(z2, z1).

    inf-cl takes raw dot products, so rows are normalised here and the queries divided by τ, as
    the other baselines do internally (its ``scale=`` argument all-reduces its gradient, which
    needs torch.distributed). ``head_dim`` must divide D and be one of 16..256. Its kernels use
    Triton's default tl.dot precision, TF32 for float32 inputs.
    """
    if not torch.cuda.is_available():
        return None
    try:
        from inf_cl import cal_inf_loss
    except Exception:  # missing, or broken against this torch/triton
        return None

    def call(z1: Tensor, z2: Tensor) -> Tensor:
        d = z1.shape[1]
        head_dim = next((h for h in (256, 128, 64, 32, 16) if d % h == 0), None)
        if head_dim is None:
            raise ValueError(f"inf-cl needs D to be a multiple of 16, got D={d}")
        z = F.normalize(torch.cat([z1, z2]), dim=-1)
        swapped = F.normalize(torch.cat([z2, z1]), dim=-1)
        return cal_inf_loss(z / temperature, swapped, head_dim=head_dim)  # type: ignore[no-any-return]

    return call


def make_adaptive(
    false_negatives: str = "attract",
    backend: str = "reference",
    temperature: float = TEMPERATURE,
    threshold: float = THRESHOLD,
    mask: str = "hard",
    similarity: str = "cos",
    labels: bool = False,
) -> LossFn:
    """This library's functional loss with fixed settings (``keep`` ignores the threshold).

    labels: also pass known positives, one label per group of `LABEL_GROUP` consecutive sequences.
    """
    from adaptive_contrastive.functional import adaptive_info_nce

    def call(z1: Tensor, z2: Tensor) -> Tensor:
        extra = {"labels": torch.arange(z1.shape[0], device=z1.device) // LABEL_GROUP} if labels else {}
        return adaptive_info_nce(
            z1,
            z2,
            None if false_negatives == "keep" else threshold,
            temperature=temperature,
            similarity=similarity,
            false_negatives=false_negatives,
            mask=mask,
            backend=backend,
            **extra,
        )

    return call


# name -> builder; a builder returns None when the method cannot run here.
BASELINES: dict[str, Callable[[], LossFn | None]] = {
    "pml": pml_ntxent,
    "lightly": lightly_ntxent,
    "info_nce": info_nce,
    "inf_cl": inf_cl,
}


def available() -> dict[str, LossFn]:
    """Every third-party baseline that can run in this environment."""
    built = {name: build() for name, build in BASELINES.items()}
    return {name: fn for name, fn in built.items() if fn is not None}


if __name__ == "__main__":
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    for name, fn in {**available(), "adaptive_keep": make_adaptive("keep")}.items():
        print(f"{name:>14}: {float(fn(z1, z2)):.5f}")
