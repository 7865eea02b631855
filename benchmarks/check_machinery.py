"""GPU checks of the loss inside PyTorch's machinery: no host syncs, autocast, torch.compile.

On a CUDA device (what `benchmarks/run_gpu.sh` runs):

- **no host syncs**: after its first call, `AdaptiveInfoNCE` (learned threshold, past its warm-up,
  with and without labels) runs forward and backward under
  ``torch.cuda.set_sync_debug_mode("error")``, which raises on any device→host synchronisation;
- **autocast**: under ``torch.autocast("cuda", float16 | bfloat16)`` the loss comes back float32 and
  matches the float32 loss of the same half-precision embeddings;
- **torch.compile**: graph breaks of the module (``torch._dynamo.explain``) per backend.

Every backend that can run is checked (reference, and Triton where it is installed). Without a GPU
(``--device cpu``) the same logic runs on the CPU, where a sync cannot happen, as a dry run of the
script for CI.

Usage:
    python benchmarks/check_machinery.py --out results.json          # cuda if available
    python benchmarks/check_machinery.py --device cpu --out x.json     # the CI dry run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from adaptive_contrastive import AdaptiveInfoNCE
from adaptive_contrastive.functional import triton_unavailable_reason

B, D = 512, 128


def trained(backend: str, device: torch.device) -> AdaptiveInfoNCE:
    """A module in the state of almost every training step: past warm-up, calibrated, with a target."""
    torch.manual_seed(0)
    loss_fn = AdaptiveInfoNCE(dim=D, temperature=0.1, backend=backend).to(device)
    z1, z2 = views(device)
    loss_fn(z1, z2).backward()
    loss_fn.end_epoch()
    loss_fn(z1, z2).backward()  # first adaptive call: calibrates the ThresholdNet
    return loss_fn


def views(device: torch.device, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(B, D, generator=g)
    z2 = z1 + 0.5 * torch.randn(B, D, generator=g)
    return (z1.to(device, dtype).requires_grad_(True), z2.to(device, dtype).requires_grad_(True))


@contextlib.contextmanager
def sync_errors(device: torch.device) -> Iterator[None]:
    """Make any device→host synchronisation raise (CUDA only; CPUs have nothing to synchronise)."""
    if device.type != "cuda":
        yield
        return
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_no_sync(backend: str, device: torch.device) -> dict[str, Any]:
    loss_fn = trained(backend, device)
    labels = (torch.arange(B) // 4).to(device)
    results = {}
    for name, kwargs in (("no labels", {}), ("labels", {"labels": labels})):
        z1, z2 = views(device)
        with sync_errors(device):
            loss = loss_fn(z1, z2, **kwargs)
            loss.backward()
        results[name] = {"loss": float(loss.detach()), "mode": loss_fn.last.mode if loss_fn.last else None}
    return results


def check_autocast(backend: str, device: torch.device) -> dict[str, Any]:
    results = {}
    dtypes = (torch.float16, torch.bfloat16) if device.type == "cuda" else (torch.bfloat16,)
    for dtype in dtypes:
        z1, z2 = views(device, dtype)
        with torch.autocast(device.type, dtype=dtype):
            loss = trained(backend, device)(z1, z2)
        reference = trained(backend, device)(z1.detach().float(), z2.detach().float()).detach()
        loss = loss.detach()
        difference = abs(float(loss) - float(reference)) / max(abs(float(reference)), 1e-12)
        results[str(dtype).removeprefix("torch.")] = {
            "loss_dtype": str(loss.dtype).removeprefix("torch."),
            "relative_difference_to_float32": difference,
            "ok": loss.dtype == torch.float32 and difference < 1e-4,
        }
    return results


def check_compile(backend: str, device: torch.device) -> dict[str, Any]:
    import torch._dynamo

    torch._dynamo.reset()
    loss_fn = trained(backend, device)
    z1, z2 = views(device)
    explanation = torch._dynamo.explain(loss_fn)(z1, z2)
    return {
        "graph_breaks": explanation.graph_break_count,
        "reasons": [str(reason.reason)[:300] for reason in explanation.break_reasons],
    }


CHECKS: dict[str, Callable[[str, torch.device], dict[str, Any]]] = {
    "no_sync": check_no_sync,
    "autocast": check_autocast,
    "compile": check_compile,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, required=True, help="JSON file, rewritten after every check")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    backends = ["reference"]
    if triton_unavailable_reason(device) is None:
        backends.append("triton")
    report: dict[str, Any] = {"device": str(device), "torch": torch.__version__, "results": {}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
    failed = 0
    for backend in backends:
        for name, check in CHECKS.items():
            key = f"{backend}/{name}"
            try:
                report["results"][key] = {"status": "ok", **check(backend, device)}
            except Exception as error:  # one failed check must not hide the others' results
                failed += 1
                report["results"][key] = {"status": "failed", "error": f"{type(error).__name__}: {error}"[:2000]}
                traceback.print_exc()
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(report, indent=1))
            print(f"{key}: {json.dumps(report['results'][key])[:300]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
