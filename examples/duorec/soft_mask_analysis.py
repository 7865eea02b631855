#!/usr/bin/env python
"""Where the soft mask's collapse pressure comes from: ∂L_learn/∂k split into its parts, per mode, against L_reg.

    python examples/duorec/soft_mask_analysis.py --dataset synthetic --threads 1
    python examples/duorec/soft_mask_analysis.py --dataset beauty --data-path ../shared/data/beauty/Beauty.txt \\
        --warmup-steps 300 --steps 300 --epochs 1 --threads 1

One job: train the example's DuoRec through its warm-up (plain InfoNCE, as ``AdaptiveInfoNCE`` runs its first
epoch), then from that one state

1. sweep a threshold k = k̄ + δ shared by every row of a fixed probe batch and record, per mode, the mean of the
   denominator part and the label part of ∂ℓ_i/∂k_i (see `threshold_pull`), the soft and hard flagged shares, and
   the resting points where L_reg's pull 2λδ cancels the loss's;
2. (synthetic data, where the true intents are known) follow a hard-mask run and, after every epoch, correlate
   each part's per-row push −∂ℓ_i/∂k_i with the move k*_i − k_i that row's threshold needs to best separate its
   same-intent candidates (`oracle_thresholds`): is the gradient informative row by row?
3. continue training with the soft mask in each mode, under both of its derivatives (``--mask-gradient full``,
   the exact one, and ``labels``, the library's), recording both parts, L_reg's pull and the flagged share at
   every step. Under ``labels`` the parts are what the exact derivative would apply; none of them reaches k.

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
FORMULATIONS = ("full", "labels")
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "soft_mask"
# Offsets δ = k − k̄ of the sweep (cosine units).
SWEEP = np.round(np.arange(-1.0, 0.61, 0.05), 3)
# Per-epoch values kept from the trainer's own summary.
EPOCH_KEYS = ("k_stat", "k_bar", "k_learn", "suspected_fraction", "loss_learn", "loss_reg", "fn_precision", "fn_recall")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=("synthetic", "beauty"), default="synthetic")
    p.add_argument("--data-path", default=None)
    p.add_argument("--warmup-steps", type=int, default=None, help="steps of the warm-up epoch (default: all)")
    p.add_argument("--steps", type=int, default=None, help="steps per later epoch (default: all)")
    p.add_argument("--epochs", type=int, default=3, help="soft-mask epochs after the warm-up, per mode and derivative")
    p.add_argument("--hard-epochs", type=int, default=10, help="epochs of the probed hard-mask run (intents only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(DEFAULT_OUT))
    p.add_argument("--report-only", action="store_true", help="only rewrite pull.md from the JSON files in --out")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------ trainers


def trainer_for(args: argparse.Namespace, mode: str, steps: int | None, formulation: str) -> train.Trainer:
    """The example's trainer: AdaptiveRec as in e6-soft-0 (us_x, cos, τ = 1, λ_reg = 0.1), mask and derivative
    from `formulation` (``hard``, or a soft mask's ``--mask-gradient``)."""
    argv = ["--dataset", args.dataset, "--loss", "adaptive", "--false-negatives", mode, "--seed", str(args.seed)]
    argv += ["--quiet", "--out", str(Path("runs") / "soft_mask_analysis" / args.dataset / f"{mode}-{formulation}")]
    argv += ["--mask", "hard"] if formulation == "hard" else ["--mask", "soft", "--mask-gradient", formulation]
    if args.data_path:
        argv += ["--data-path", args.data_path]
    if steps:
        argv += ["--max-steps", str(steps)]
    return train.Trainer(train.parse_args(argv), args.data)


def warm_up(args: argparse.Namespace) -> tuple[train.Trainer, dict[str, Any]]:
    """The shared warm-up epoch; returns its trainer and a copy of its state."""
    trainer = trainer_for(args, "attract", args.warmup_steps, "full")
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


def probe_views(trainer: train.Trainer) -> tuple[torch.Tensor, torch.Tensor]:
    """The two contrastive views `(B, D)` of the trainer's fixed probe batch (training mode, fixed dropout)."""
    rows, partners = trainer.probe_rows, trainer.probe_partners
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(trainer.args.seed)
        trainer.model.train()
        views = trainer.model.encode(trainer._batch(np.concatenate([rows, rows, partners]))).split(len(rows))
    return views[1], views[2]


def unit_rows(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([z1, z2]).detach().double(), dim=-1)


# ------------------------------------------------------------------------------------------ 1. sweep


def sweep(u: torch.Tensor, k_bar: float, reg_weight: float, beta: float) -> dict[str, Any]:
    """Mean parts of the pull over the rows, per mode, for every δ of `SWEEP`, and the resting points."""
    out: dict[str, Any] = {"delta": SWEEP.tolist(), "k_bar": k_bar}
    for mode in MODES:
        parts: dict[str, list[float]] = {"denominator": [], "labels": [], "share": [], "hard_share": []}
        for delta in SWEEP:
            terms = pull_terms(u, torch.tensor(k_bar + float(delta)), mode, mask_temperature=beta)
            for name in parts:
                parts[name].append(float(getattr(terms, name).mean()))
        net = np.array(parts["denominator"]) + np.array(parts["labels"]) + 2 * reg_weight * SWEEP
        out[mode] = {**parts, "resting": resting_points(net, parts["share"])}
    return out


def resting_points(net: np.ndarray, share: list[float]) -> list[dict[str, float]]:
    """Stable zeros of the net pull f(δ) = den + lab + 2λδ (gradient descent on k settles where f rises
    through 0), linearly interpolated; an end of the sweep counts when f pushes towards it."""
    points = []
    if net[0] > 0:
        points.append({"delta": float(SWEEP[0]), "share": share[0], "edge": True})
    for i in range(len(net) - 1):
        if net[i] < 0 <= net[i + 1]:
            t = -net[i] / (net[i + 1] - net[i])
            delta = float(SWEEP[i] + t * (SWEEP[i + 1] - SWEEP[i]))
            points.append({"delta": delta, "share": float(share[i] + t * (share[i + 1] - share[i])), "edge": False})
    if net[-1] < 0:
        points.append({"delta": float(SWEEP[-1]), "share": share[-1], "edge": True})
    return points


# ------------------------------------------------------------------------------------------ 2. informativeness


def correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation of two `(N,)` tensors."""
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / (x.norm() * y.norm()).clamp_min(1e-30))


def rank_correlation(x: torch.Tensor, y: torch.Tensor) -> float:
    """Spearman correlation (Pearson on ranks; ties broken by order)."""
    return correlation(x.argsort().argsort().double(), y.argsort().argsort().double())


def informativeness(trainer: train.Trainer) -> dict[str, Any]:
    """Per-row correlation, on the probe batch, between each part's push −∂ℓ_i/∂k_i at the rows' thresholds and
    the move k*_i − k_i their best thresholds against the true intents ask for."""
    z1, z2 = probe_views(trainer)
    u = unit_rows(z1, z2)
    samples, loss_fn = trainer.train_set, trainer.loss_fn
    users = np.concatenate([samples.user[trainer.probe_rows], samples.user[trainer.probe_partners]])
    intents = torch.as_tensor(trainer.data.intents[users])
    with torch.no_grad():
        # Before its first use the ThresholdNet is not calibrated yet: the loss would then start it at k̄.
        k = (
            loss_fn.threshold_net(z1).double().repeat(2)
            if loss_fn._calibrated
            else loss_fn.k_bar.double().expand(u.shape[0])
        )
    wanted = oracle_thresholds(u, intents) - k
    out: dict[str, Any] = {
        "k": float(k.mean()),
        "k_bar": float(loss_fn.k_bar),
        "oracle_k_mean": float((wanted + k).mean()),
        "oracle_k_median": float((wanted + k).median()),
        "rows_wanting_higher_k": float((wanted > 0).double().mean()),
    }
    for mode in MODES:
        terms = pull_terms(u, k, mode, mask_temperature=loss_fn.settings.mask_temperature)
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


def hard_trajectory(args: argparse.Namespace, state: dict[str, Any], warm: train.Trainer) -> list[dict[str, Any]]:
    """`informativeness` after the warm-up and after every epoch of a hard-mask (attract) run from it."""
    out = [{"epoch": 1, **informativeness(warm)}]
    trainer = restore(trainer_for(args, "attract", args.steps, "hard"), state)
    for _ in range(args.hard_epochs):
        trainer.train_epoch()
        trainer.epoch += 1
        out.append({"epoch": trainer.epoch, **informativeness(trainer)})
    return out


# ------------------------------------------------------------------------------------------ 3. soft-mask training


class PullRecorder:
    """A forward hook on the loss that records the pull's parts at every training step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []

    def __call__(self, module: Any, inputs: tuple[Any, ...], _output: Any) -> None:
        last = module.last
        if not module.training or last is None or last.mode == "keep":
            return
        s = module.settings
        terms = pull_terms(
            unit_rows(*inputs[:2]),
            last.k.detach(),
            last.mode,
            temperature=s.temperature,
            mask_temperature=s.mask_temperature,
            positive_weight=s.positive_weight,
        )
        k_bar = float(module.k_bar)
        self.steps.append(
            {
                "k": float(last.k.mean()),
                "k_bar": k_bar,
                "k_stat": float(last.k_stat),
                "denominator": float(terms.denominator.mean()),
                "labels": float(terms.labels.mean()),
                "regulariser": float(regulariser_pull(last.k, k_bar, module.reg_weight).mean()),
                "share": float(terms.share.mean()),
                "hard_share": float(terms.hard_share.mean()),
                "loss_learn": float(last.loss_learn),
                "loss_reg": float(last.loss_reg),
            }
        )


def windows(steps: list[dict[str, float]], count: int = 4) -> list[dict[str, Any]]:
    """Means of every recorded value over `count` consecutive windows of steps."""
    edges = np.linspace(0, len(steps), count + 1).round().astype(int)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        if hi > lo:
            chunk = steps[lo:hi]
            out.append(
                {"steps": f"{lo + 1}-{hi}", **{name: float(np.mean([s[name] for s in chunk])) for name in chunk[0]}}
            )
    return out


def columns(steps: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-step records stored column by column (one list per value)."""
    return {name: [s[name] for s in steps] for name in steps[0]} if steps else {}


def soft_training(args: argparse.Namespace, state: dict[str, Any], mode: str, formulation: str) -> dict[str, Any]:
    """Soft-mask epochs from the warm-up state, recording the pull at every step."""
    trainer = restore(trainer_for(args, mode, args.steps, formulation), state)
    recorder = PullRecorder()
    trainer.loss_fn.register_forward_hook(recorder)
    epochs = []
    for _ in range(args.epochs):
        summary = trainer.train_epoch()
        trainer.epoch += 1
        epochs.append({key: summary.get(key) for key in EPOCH_KEYS} | {"warnings": summary.get("warnings", [])})
    return {"epochs": epochs, "windows": windows(recorder.steps), "steps": columns(recorder.steps)}


# ------------------------------------------------------------------------------------------ report


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def report(results: list[dict[str, Any]]) -> str:
    """pull.md: the tables of every dataset's JSON."""
    lines = [
        "# The soft mask's pull on the threshold",
        "",
        "Written by `examples/duorec/soft_mask_analysis.py` from the `pull-*.json` files beside this one. Units: the",
        "pull on a row's threshold, ∂ℓ_i/∂k_i (positive = gradient descent lowers k, flagging more candidates), split",
        "into the softmax denominator's part (drop, attract) and the soft labels' part (attract, relabel); L_reg's",
        "pull on the same scale is 2λ(k − k̄) with λ = 0.1.",
    ]
    for r in results:
        sw = r["sweep"]
        lines += ["", f"## {r['dataset']}", ""]
        lines += [
            f"Warm-up: {r['warmup_steps'] or 'one epoch of'} steps; k̄ = {sw['k_bar']:.3f}. "
            f"Soft-mask training: {r['epochs']} epoch(s) of {r['steps'] or 'all'} steps per mode and derivative.",
            "",
            "### 1. The pull at a shared threshold k = k̄ + δ (probe batch after the warm-up)",
            "",
            "| δ | hard share | soft share | den (drop, attract) | lab (attract, relabel) | 2λδ |",
            "|---|---|---|---|---|---|",
        ]
        for i, delta in enumerate(sw["delta"]):
            if round(delta * 20) % 4 and abs(delta) > 0.21:  # every 0.2, and every 0.05 near k̄
                continue
            att = sw["attract"]
            lines.append(
                f"| {delta:+.2f} | {att['hard_share'][i]:.3f} | {att['share'][i]:.3f} | {att['denominator'][i]:.3f} "
                f"| {att['labels'][i]:+.3f} | {2 * r['reg_weight'] * delta:+.3f} |"
            )
        lines += [
            "",
            "Resting points (the net pull den + lab + 2λδ crosses zero upwards; *edge*: none inside the sweep):",
            "",
        ]
        lines += ["| mode | δ | k | soft share |", "|---|---|---|---|"]
        for mode in MODES:
            for p in sw[mode]["resting"]:
                edge = " (edge)" if p["edge"] else ""
                lines.append(
                    f"| {mode} | {p['delta']:+.3f}{edge} | {sw['k_bar'] + p['delta']:.3f} | {p['share']:.3f} |"
                )
        if "informativeness" in r:
            lines += [
                "",
                "### 2. Is the pull informative row by row? (hard-mask attract run; Spearman over the probe rows)",
                "",
                "Correlation between a part's push −∂ℓ_i/∂k_i and the move k*_i − k_i towards each row's best "
                "threshold against the true intents (positive = the part pushes the right way).",
                "",
                "| epoch | k | k* mean | k* median | rows wanting a higher k | den | lab (attract) | lab (relabel) "
                "| den + lab (attract) |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for e in r["informativeness"]:
                att, rel = e["attract"], e["relabel"]
                lines.append(
                    f"| {e['epoch']} | {e['k']:.3f} | {e['oracle_k_mean']:.3f} | {e['oracle_k_median']:.3f} "
                    f"| {e['rows_wanting_higher_k']:.2f} | {att['denominator']['spearman']:+.2f} "
                    f"| {att['labels']['spearman']:+.2f} | {rel['labels']['spearman']:+.2f} "
                    f"| {att['total']['spearman']:+.2f} |"
                )
        lines += [
            "",
            "### 3. Soft-mask training from the warm-up state (means over windows of steps)",
            "",
            "| mode | derivative | steps | k | k̄ | soft share | den | lab | 2λ(k − k̄) | L_learn | L_reg |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, run in r["training"].items():
            mode, formulation = key.split("/")
            for w in run["windows"]:
                lines.append(
                    f"| {mode} | {formulation} | {w['steps']} | {w['k']:.3f} | {w['k_bar']:.3f} | {w['share']:.3f} "
                    f"| {w['denominator']:.3f} | {w['labels']:+.3f} | {w['regulariser']:+.3f} | {w['loss_learn']:.3f} "
                    f"| {fmt(w['loss_reg'])} |"
                )
    return "\n".join(lines) + "\n"


def rounded(value: Any, digits: int = 4) -> Any:
    """`value` with every float rounded to `digits` decimals (the per-step records are long)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v, digits) for v in value]
    return value


def write_json(result: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(rounded(result), separators=(",", ":")) + "\n")


def write_report(out: Path) -> None:
    results = [json.loads(p.read_text()) for p in sorted(out.glob("pull-*.json"))]
    results.sort(key=lambda r: r["dataset"] != "synthetic")
    (out / "pull.md").write_text(report(results))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        write_report(out)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    args.data = datasets.load_dataset(args.dataset, args.data_path)
    start = time.perf_counter()
    warm, state = warm_up(args)
    loss_fn = warm.loss_fn
    result: dict[str, Any] = {
        "dataset": args.dataset,
        "warmup_steps": args.warmup_steps,
        "steps": args.steps,
        "epochs": args.epochs,
        "seed": args.seed,
        "reg_weight": loss_fn.reg_weight,
        "mask_temperature": loss_fn.settings.mask_temperature,
        "sweep": sweep(
            unit_rows(*probe_views(warm)), float(loss_fn.k_bar), loss_fn.reg_weight, loss_fn.settings.mask_temperature
        ),
        "training": {},
    }
    if args.data.intents is not None:
        result["informativeness"] = hard_trajectory(args, state, warm)
        print(f"hard-mask trajectory done after {time.perf_counter() - start:.0f}s", flush=True)
    for formulation in FORMULATIONS:
        for mode in MODES:
            result["training"][f"{mode}/{formulation}"] = soft_training(args, state, mode, formulation)
            print(f"{mode}/{formulation} done after {time.perf_counter() - start:.0f}s", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    write_json(result, out / f"pull-{args.dataset}.json")
    write_report(out)


if __name__ == "__main__":
    main()
