"""Worker side of tests/test_distributed.py: one process of a gloo group on 127.0.0.1.

Each scenario holds the *global* batch; rank r takes its own rows (ranks may hold different
numbers), runs the loss with ``gather_distributed=True``, backpropagates and records the loss,
the gradients of its rows (and threshold / ThresholdNet parameters). The test process compares
them with one process holding the concatenated batch.
"""

from __future__ import annotations

import os
import traceback
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


class RowwiseThreshold(torch.nn.Module):
    """A user-defined threshold module, k_i = c + 0.2·tanh(w·z_i): it takes only `z`, as a module
    mapping (B, D) to (B,) (SPEC §5) may."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1.0, 1.0, dim))
        self.c = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.c + 0.2 * torch.tanh(z.float() @ self.w)


def offset_of(sizes: list[int], rank: int) -> int:
    return sum(sizes[:rank])


def local_rows(t: torch.Tensor, sizes: list[int], rank: int) -> torch.Tensor:
    o = offset_of(sizes, rank)
    return t[o : o + sizes[rank]]


def local_threshold(k: Any, sizes: list[int], rank: int) -> Any:
    """This rank's share of a global threshold: floats and 0-d tensors as they are, (B,) sliced,
    (N,) = [z1 rows; z2 rows] sliced in both halves."""
    if not isinstance(k, torch.Tensor) or k.dim() == 0:
        return k
    b_total = sum(sizes)
    o, b = offset_of(sizes, rank), sizes[rank]
    if k.shape == (b_total,):
        return k[o : o + b]
    return torch.cat([k[o : o + b], k[b_total + o : b_total + o + b]])


def local_row_index(sizes: list[int], rank: int) -> torch.Tensor:
    """Indices into the single-process rows cat(z1, z2) of this rank's rows [own z1; own z2]."""
    b_total = sum(sizes)
    o, b = offset_of(sizes, rank), sizes[rank]
    own = torch.arange(o, o + b)
    return torch.cat([own, own + b_total])


def run_functional(sc: dict, rank: int) -> dict:
    from adaptive_contrastive.functional import adaptive_info_nce

    sizes = sc["sizes"]
    z1 = local_rows(sc["z1"], sizes, rank).clone().requires_grad_(True)
    z2 = local_rows(sc["z2"], sizes, rank).clone().requires_grad_(True)
    k = local_threshold(sc["threshold"], sizes, rank)
    if isinstance(k, torch.Tensor):
        k = k.clone().requires_grad_(sc.get("threshold_grad", False))
    labels = None if sc.get("labels") is None else local_rows(sc["labels"], sizes, rank)
    out = adaptive_info_nce(z1, z2, k, gather_distributed=True, labels=labels, **sc["kwargs"])
    if out.dim() == 0:
        out.backward()
    else:
        out.backward(sc["upstream"][local_row_index(sizes, rank)].to(out.dtype))
    return {
        "loss": out.detach(),
        "g1": z1.grad,
        "g2": z2.grad,
        "gk": k.grad if isinstance(k, torch.Tensor) else None,
    }


def run_module(sc: dict, rank: int) -> dict:
    from adaptive_contrastive import AdaptiveInfoNCE

    sizes = sc["sizes"]
    loss_fn = AdaptiveInfoNCE(**sc["config"], gather_distributed=True)
    loss_fn.load_state_dict(sc["state"])
    z1 = local_rows(sc["z1"], sizes, rank).clone().requires_grad_(True)
    z2 = local_rows(sc["z2"], sizes, rank).clone().requires_grad_(True)
    labels = None if sc.get("labels") is None else local_rows(sc["labels"], sizes, rank)
    loss = loss_fn(z1, z2, labels=labels)
    loss.backward()
    last = loss_fn.last
    return {
        "loss": loss.detach(),
        "g1": z1.grad,
        "g2": z2.grad,
        "params": {
            n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in loss_fn.named_parameters()
        },
        "k_stat": last.k_stat,
        "k": last.k,
        "loss_reg": last.loss_reg,
        "k_sum": loss_fn.k_sum.clone(),
        "mode": last.mode,
        "false_negative_fraction": last.false_negative_fraction,
        "known_positive_fraction": last.known_positive_fraction,
    }


def run_module_steps(sc: dict, rank: int) -> dict:
    """Several training steps and an epoch boundary: the sampled k_stat of every step, k̄_stat after."""
    from adaptive_contrastive import AdaptiveInfoNCE

    sizes = sc["sizes"]
    torch.manual_seed(100 + rank)  # ranks' global generators differ, as with per-rank dropout seeds
    loss_fn = AdaptiveInfoNCE(**sc["config"], gather_distributed=True)
    loss_fn.load_state_dict(sc["state"])
    k_stats = []
    for z1, z2 in sc["steps"]:
        loss_fn(local_rows(z1, sizes, rank), local_rows(z2, sizes, rank))
        k_stats.append(loss_fn.last.k_stat.clone())
    loss_fn.end_epoch()
    return {"k_stats": torch.stack(k_stats), "k_bar": loss_fn.k_bar.clone()}


def run_expect_error(sc: dict, rank: int) -> dict:
    """Per-rank inputs that some ranks get wrong: every rank must raise (no hang), and say why."""
    from adaptive_contrastive import AdaptiveInfoNCE
    from adaptive_contrastive.functional import adaptive_info_nce

    z1, z2 = sc["per_rank"][rank]
    try:
        if sc["via"] == "module":
            AdaptiveInfoNCE(dim=z1.shape[1], gather_distributed=True, warmup_epochs=0)(z1, z2)
        else:
            adaptive_info_nce(z1, z2, 0.2, gather_distributed=True)
    except (TypeError, ValueError) as error:
        return {"raised": type(error).__name__, "message": str(error)}
    return {"raised": None, "message": ""}


RUNNERS = {
    "functional": run_functional,
    "module": run_module,
    "module_steps": run_module_steps,
    "expect_error": run_expect_error,
}


def worker(rank: int, world: int, port: int, scenarios: dict, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=30)
    )
    results: dict = {}
    try:
        for name, sc in scenarios.items():
            try:
                results[name] = RUNNERS[sc["api"]](sc, rank)
            except Exception:  # recorded so that one broken scenario fails only its own test
                results[name] = {"error": traceback.format_exc()}
            dist.barrier()
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()
