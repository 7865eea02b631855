#!/usr/bin/env python
"""Where the soft mask's collapse pressure comes from: ∂L_learn/∂k split into its parts, per mode, against L_reg.

    python examples/duorec/soft_mask_analysis.py --dataset synthetic
    python examples/duorec/soft_mask_analysis.py --dataset beauty --data-path ../shared/data/beauty/Beauty.txt \\
        --warmup-steps 300 --steps 300 --threads 1

One job: train DuoRec's warm-up (plain InfoNCE, as ``AdaptiveInfoNCE`` runs its first epoch), then

1. on a fixed probe batch, sweep one threshold k = k̄ + δ shared by every row and record, per mode, the mean of
   the denominator part den and the label part lab of ∂ℓ_i/∂k_i (see `threshold_pull`), the soft and hard flagged
   shares, and where L_reg's pull 2λδ cancels the loss's (the threshold's resting points at λ = 0.1);
2. continue training from the same warm-up state in each mode with each soft-mask formulation, and record both
   parts, L_reg's pull and the flagged share at every step.

Writes ``<out>/pull-<dataset>.json`` and regenerates ``<out>/pull.md`` from every ``pull-*.json`` there.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# isort: split
import data as datasets  # noqa: E402
import train  # noqa: E402
from threshold_pull import oracle_thresholds, pull_terms, regulariser_pull  # noqa: E402

MODES = ("drop", "attract", "relabel")
HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "soft_mask"
# Offsets δ = k − k̄ of the sweep (cosine units).
SWEEP = np.round(np.arange(-1.0, 0.61, 0.05), 3)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("synthetic", "beauty"), default="synthetic")
    p.add_argument("--data-path", default=None)
    p.add_argument("--warmup-steps", type=int, default=None, help="steps of the warm-up epoch (default: all)")
    p.add_argument("--steps", type=int, default=None, help="steps per adaptive epoch (default: all)")
    p.add_argument("--epochs", type=int, default=3, help="adaptive epochs after the warm-up")
    p.add_argument(
        "--hard-epochs", type=int, default=10, help="epochs of the hard-mask run whose states are probed (intents only)"
    )
    p.add_argument("--formulations", nargs="+", default=list(FORMULATIONS))
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    return p.parse_args(argv)


def trainer_args(args: argparse.Namespace, mode: str, steps: int | None, formulation: str) -> argparse.Namespace:
    """The example trainer's arguments: AdaptiveRec with the soft mask, as e6-soft-0 otherwise."""
    argv = ["--dataset", args.dataset, "--loss", "adaptive", "--false-negatives", mode]
    argv += ["--seed", str(args.seed), "--quiet", "--out", str(Path(args.scratch) / f"{mode}-{formulation}")]
    argv += ["--mask", "hard"] if formulation == "hard" else ["--mask", "soft", *FORMULATIONS[formulation]]
    if args.data_path:
        argv += ["--data-path", args.data_path]
    if steps:
        argv += ["--max-steps", str(steps)]
    return train.parse_args(argv)


# Trainer arguments of each soft-mask formulation compared here.
FORMULATIONS: dict[str, list[str]] = {"full": []}


def probe_views(trainer: train.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The two contrastive views `(B, D)` of the trainer's fixed probe batch (training mode, fixed dropout)."""
    rows, partners = trainer.probe_rows, trainer.probe_partners
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(trainer.args.seed)
        trainer.model.train()
        batch = trainer._batch(np.concatenate([rows, rows, partners]))
        views = trainer.model.encode(batch).split(len(rows))
    return views[1], views[2]


def probe_rows(trainer: train.Trainer) -> torch.Tensor:
    """Normalised rows cat(z1, z2) `(N, D)` of the probe batch."""
    return F.normalize(torch.cat(probe_views(trainer)).double(), dim=-1)


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two `(N,)` tensors."""
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-30))


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman correlation (Pearson on ranks; ties broken by order)."""
    return correlation(x.argsort().argsort().double(), y.argsort().argsort().double())


def informativeness(trainer: train.Trainer, beta: float) -> dict[str, Any]:
    """Does the pull point each row's threshold where its false negatives are? On the probe batch: the per-row
    best threshold k* against the true intents (`oracle_thresholds`), the rows' learned thresholds k, and the
    correlation over rows between each part's push −∂ℓ_i/∂k_i and the move k* − k that row needs."""
    z1, z2 = probe_views(trainer)
    u = F.normalize(torch.cat([z1, z2]).double(), dim=-1)
    data, samples = trainer.data, trainer.train_set
    assert data.intents is not None
    users = np.concatenate([samples.user[trainer.probe_rows], samples.user[trainer.probe_partners]])
    intents = torch.as_tensor(data.intents[users])
    loss_fn = trainer.loss_fn
    with torch.no_grad():
        k = loss_fn.threshold_net(z1).double().repeat(2)
    best = oracle_thresholds(u, intents)
    wanted = best - k
    out: dict[str, Any] = {
        "k": float(k.mean()),
        "k_bar": float(loss_fn.k_bar),
        "oracle_k": float(best.mean()),
        "oracle_k_median": float(best.median()),
        "rows_needing_higher_k": float((wanted > 0).double().mean()),
    }
    for mode in MODES:
        terms = pull_terms(u, k, mode, mask_temperature=beta)
        out[mode] = {
            part: {
                "mean": float(value.mean()),
                "pearson": correlation(-value, wanted),
                "spearman": rank_correlation(-value, wanted),
            }
            for part, value in (("denominator", terms.denominator), ("labels", terms.labels), ("total", terms.total))
            if bool(value.abs().sum() > 0)
        }
    return out


def hard_trajectory(args: argparse.Namespace, state: dict[str, Any]) -> list[dict[str, Any]]:
    """`informativeness` at the end of every epoch of a hard-mask (attract) run from the warm-up state."""
    trainer = restore(train.Trainer(trainer_args(args, "attract", args.steps, "hard"), args.data), state)
    out = []
    for _ in range(args.hard_epochs):
        trainer.train_epoch()
        trainer.epoch += 1
        out.append({"epoch": trainer.epoch, **informativeness(trainer, trainer.loss_fn.settings.mask_temperature)})
    return out


def sweep(u: torch.Tensor, k_bar: float, reg_weight: float, beta: float) -> dict[str, Any]:
    """Mean parts of the pull over the rows, per mode, for every δ of `SWEEP`, and the resting points."""
    out: dict[str, Any] = {"delta": SWEEP.tolist(), "k_bar": k_bar}
    for mode in MODES:
        den, lab, share, hard = [], [], [], []
        for delta in SWEEP:
            terms = pull_terms(u, torch.tensor(k_bar + float(delta)), mode, mask_temperature=beta)
            den.append(float(terms.denominator.mean()))
            lab.append(float(terms.labels.mean()))
            share.append(float(terms.share.mean()))
            hard.append(float(terms.hard_share.mean()))
        net = np.array(den) + np.array(lab) + 2 * reg_weight * SWEEP
        out[mode] = {
            "denominator": den,
            "labels": lab,
            "share": share,
            "hard_share": hard,
            "resting": resting_points(net, share),
        }
    return out


def resting_points(net: np.ndarray, share: list[float]) -> list[dict[str, float]]:
    """Stable zeros of the net pull f(δ) = den + lab + 2λδ (gradient descent on k settles where f rises
    through 0), linearly interpolated; the ends of the sweep count when f pushes towards them."""
    points = []
    if net[0] > 0:
        points.append({"delta": float(SWEEP[0]), "share": share[0], "edge": True})
    for i in range(len(net) - 1):
        if net[i] < 0 <= net[i + 1]:
            t = -net[i] / (net[i + 1] - net[i])
            points.append(
                {
                    "delta": float(SWEEP[i] + t * (SWEEP[i + 1] - SWEEP[i])),
                    "share": float(share[i] + t * (share[i + 1] - share[i])),
                    "edge": False,
                }
            )
    if net[-1] < 0:
        points.append({"delta": float(SWEEP[-1]), "share": share[-1], "edge": True})
    return points


class PullRecorder:
    """A forward hook on the loss that records the pull's parts at every training step."""

    def __init__(self, reg_weight: float) -> None:
        self.reg_weight = reg_weight
        self.steps: list[dict[str, float]] = []

    def __call__(self, module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
        last = module.last
        if not module.training or last is None or last.mode == "keep":
            return
        z1, z2 = inputs[:2]
        u = F.normalize(torch.cat([z1, z2]).detach().double(), dim=-1)
        terms = pull_terms(
            u,
            last.k.detach(),
            last.mode,
            temperature=module.settings.temperature,
            mask_temperature=module.settings.mask_temperature,
            positive_weight=module.settings.positive_weight,
        )
        k_bar = float(module.k_bar)
        self.steps.append(
            {
                "k": float(last.k.mean()),
                "k_bar": k_bar,
                "k_stat": float(last.k_stat),
                "denominator": float(terms.denominator.mean()),
                "labels": float(terms.labels.mean()),
                "regulariser": float(regulariser_pull(last.k, k_bar, self.reg_weight).mean()),
                "share": float(terms.share.mean()),
                "hard_share": float(terms.hard_share.mean()),
                "loss_learn": float(last.loss_learn),
                "loss_reg": float(last.loss_reg),
            }
        )


def windows(steps: list[dict[str, float]], count: int = 4) -> list[dict[str, float]]:
    """Means of every recorded value over `count` consecutive windows of steps."""
    if not steps:
        return []
    edges = np.linspace(0, len(steps), count + 1).round().astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi <= lo:
            continue
        chunk = steps[lo:hi]
        row = {name: float(np.mean([s[name] for s in chunk])) for name in chunk[0]}
        out.append({"steps": f"{lo + 1}-{hi}", **row})
    return out


def warm_up(args: argparse.Namespace) -> tuple[train.Trainer, dict[str, Any]]:
    """The shared warm-up epoch; returns the trainer and a copy of its state."""
    trainer = train.Trainer(trainer_args(args, "attract", args.warmup_steps, "full"), args.data)
    trainer.train_epoch()
    trainer.epoch += 1
    state = {
        "model": copy.deepcopy(trainer.model.state_dict()),
        "loss_fn": copy.deepcopy(trainer.loss_fn.state_dict()),
        "optimizer": copy.deepcopy(trainer.optimizer.state_dict()),
        "rng": torch.get_rng_state(),
    }
    return trainer, state


def restore(trainer: train.Trainer, state: dict[str, Any]) -> train.Trainer:
    """`trainer` put back to the end of the shared warm-up epoch."""
    trainer.model.load_state_dict(state["model"])
    trainer.loss_fn.load_state_dict(state["loss_fn"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng"])
    trainer.epoch = 1
    return trainer


def continue_training(args: argparse.Namespace, state: dict[str, Any], mode: str, formulation: str) -> dict[str, Any]:
    """Adaptive epochs from the warm-up state, recording the pull at every step."""
    trainer = restore(train.Trainer(trainer_args(args, mode, args.steps, formulation), args.data), state)
    recorder = PullRecorder(trainer.loss_fn.reg_weight)
    trainer.loss_fn.register_forward_hook(recorder)
    epochs = []
    for _ in range(args.epochs):
        summary = trainer.train_epoch()
        trainer.epoch += 1
        epochs.append({key: summary.get(key) for key in EPOCH_KEYS})
    return {"epochs": epochs, "windows": windows(recorder.steps), "steps": recorder.steps}


EPOCH_KEYS = ("k_stat", "k_bar", "k_learn", "suspected_fraction", "loss_learn", "loss_reg", "fn_precision", "fn_recall")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    args.scratch = str(Path("runs") / "soft_mask_analysis" / args.dataset)
    args.data = datasets.load_dataset(args.dataset, args.data_path)
    start = time.perf_counter()
    trainer, state = warm_up(args)
    loss_fn = trainer.loss_fn
    u = probe_rows(trainer)
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "epochs": args.epochs,
        "seed": args.seed,
        "reg_weight": loss_fn.reg_weight,
        "mask_temperature": loss_fn.settings.mask_temperature,
        "sweep": sweep(u, float(loss_fn.k_bar), loss_fn.reg_weight, loss_fn.settings.mask_temperature),
        "training": {},
    }
    if args.data.intents is not None:
        result["informativeness"] = [
            {"epoch": 1, **informativeness(trainer, loss_fn.settings.mask_temperature)},
            *hard_trajectory(args, state),
        ]
        print(f"hard trajectory done after {time.perf_counter() - start:.0f}s", flush=True)
    for formulation in args.formulations:
        for mode in args.modes:
            result["training"][f"{mode}/{formulation}"] = continue_training(args, state, mode, formulation)
            print(f"{mode}/{formulation} done after {time.perf_counter() - start:.0f}s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    (out / f"pull-{args.dataset}.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
