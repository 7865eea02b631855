#!/usr/bin/env python
"""Tables of finished runs: test metrics as mean ± std over seeds, one row per configuration.

    python examples/duorec/summarize.py examples/duorec/results/beauty          # markdown, test split
    python examples/duorec/summarize.py runs --split valid --metrics NDCG@10 Recall@10

Every ``results.json`` under the given folders is read. Runs are grouped by their whole
configuration except the seed and the output folder, so two budgets (``--epochs``) or two similarities
never share a row; runs still in progress are listed below the table, not averaged. The published
numbers the issue asks to stand beside ours are added as their own rows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = ("NDCG@5", "NDCG@10", "MRR@5", "MRR@10", "Recall@5", "Recall@10")
# Arguments that never change what a run measures: the seed is what rows average over, the rest is
# bookkeeping. Everything else (including the epoch budget) splits rows.
NOT_CONFIGURATION = {
    "seed", "out", "resume", "overwrite", "quiet", "threads", "device", "data_path", "download", "stats_only",
    "no_plots", "no_checkpoints",
}  # fmt: skip
# Settings added to train.py after runs were recorded, with the value those runs had: a run without the
# key shares its row with runs that state the default.
ADDED_LATER = {"dropout": 0.5}
LOSS_ORDER = {"none": 0, "duorec": 1, "adaptive": 2}
# CL4SRec's augmentation settings (train.py --item-crop ...): None, or absent in older runs, for the other views.
CL4SREC_SETTINGS = {"item_crop", "item_mask", "item_reorder", "aug_pairs"}
# Settings added to train.py after some runs were recorded: a run without the key had this value.
LATER_DEFAULTS: dict[str, Any] = {
    "dropout": 0.5,
    "known_positives": "none",
    "recipe": "default",
    "threshold_input": "view",
    "lr_schedule": "constant",
    "drop_last": False,
    "early_stop_metric": "NDCG@10",
    "time_budget": None,
}
# Full-ranking test NDCG@10 published for these datasets (the papers report no MRR).
PUBLISHED: dict[str, list[tuple[str, dict[str, float]]]] = {
    "beauty": [
        ("DuoRec, as reported by the AdaptiveRec paper", {"NDCG@10": 0.0421}),
        ("AdaptiveRec, as reported by the AdaptiveRec paper", {"NDCG@10": 0.0427}),
        ("DuoRec, as reported by the DuoRec paper", {"NDCG@10": 0.0443}),
    ],
    "ml-1m": [
        ("DuoRec, as reported by the AdaptiveRec paper", {"NDCG@10": 0.1348}),
        ("AdaptiveRec, as reported by the AdaptiveRec paper", {"NDCG@10": 0.1411}),
    ],
}


@dataclass
class Group:
    """Finished runs that share a configuration."""

    config: dict[str, Any]
    runs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seeds(self) -> list[int]:
        return sorted(run["config"]["seed"] for run in self.runs)

    def values(self, metric: str, split: str = "test") -> list[float]:
        return [run[split][metric] for run in self.runs if metric in run.get(split, {})]


def load_runs(folders: list[Path]) -> list[dict[str, Any]]:
    """Every ``results.json`` under `folders` (or the files themselves), with ``path`` added."""
    runs = []
    for folder in folders:
        files = [folder] if folder.is_file() else sorted(folder.rglob("results.json"))
        for path in files:
            run = json.loads(path.read_text())
            run["path"] = str(path)
            runs.append(run)
    return runs


def configuration(config: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What a run measures: its settings without the seed and bookkeeping, and without the settings
    its loss ignores (the ThresholdNet's for DuoRec, all contrastive ones for SASRec, the augmentations for
    views other than CL4SRec's)."""
    config = {**LATER_DEFAULTS, **config}
    ignored = set(NOT_CONFIGURATION)
    config = {**config, "mask_gradient": mask_gradient(config)}
    if config["dataset"] != "synthetic":  # the generator's knobs
        ignored |= {name for name in config if name.startswith("synthetic_")}
    if config["loss"] != "adaptive":
        ignored |= {"mask", "threshold_arch", "threshold_input", "warmup_epochs"}
        if config["known_positives"] == "none":
            ignored.add("false_negatives")
    if config["loss"] != "adaptive" or config.get("mask", "hard") == "hard":
        ignored.add("mask_gradient")
    if config["loss"] == "none":
        ignored |= {"contrast", "similarity", "temperature", "lmd", "known_positives", "false_negatives"}
        ignored |= CL4SREC_SETTINGS
    if config.get("contrast") != "cl4srec":
        ignored |= CL4SREC_SETTINGS
    return tuple(sorted((k, v) for k, v in config.items() if k not in ignored))


def mask_gradient(config: dict[str, Any]) -> str:
    """How a soft mask was differentiated; runs from before ``--mask-gradient`` existed used the exact derivative."""
    return config.get("mask_gradient", "full")


def label(config: dict[str, Any]) -> str:
    """A row name that says what differs: the model, then the loss settings, then the budget.

    CL4SRec's views with plain InfoNCE are "CL4SRec"; a temperature other than 1 and known positives are named.
    """
    config = {**LATER_DEFAULTS, **config}
    extra = []  # settings away from the defaults the rows above were run with
    if config["loss"] != "none" and config["temperature"] != 1.0:
        extra.append(f"τ={config['temperature']:g}")
    if config["loss"] != "none" and config["known_positives"] != "none":
        extra.append(f"{config['known_positives']} positives {config['false_negatives']}")
    if config["loss"] == "none":
        return f"SASRec, ≤{config['epochs']} epochs"
    if config["loss"] == "duorec" and config["contrast"] == "cl4srec":
        name = f"CL4SRec ({', '.join([config['similarity'], *extra])})"
    elif config["loss"] == "duorec":
        name = f"DuoRec ({', '.join([config['contrast'], config['similarity'], *extra])})"
    else:
        mask = config["mask"]
        if mask == "soft" and mask_gradient(config) == "full":
            mask = "soft with its exact gradient"
        parts = [config["false_negatives"], mask, config["threshold_arch"], config["similarity"], *extra]
        name = f"AdaptiveRec ({config['contrast']}, {', '.join(parts)})"
    if config["recipe"] != "default":
        name += f", {config['recipe']} recipe"
    return f"{name}, ≤{config['epochs']} epochs"


def group_runs(runs: list[dict[str, Any]]) -> tuple[list[Group], list[dict[str, Any]]]:
    """Finished runs grouped by configuration (SASRec, DuoRec, AdaptiveRec, then by label), and the
    runs still in progress."""
    groups: dict[tuple[tuple[str, Any], ...], Group] = {}
    unfinished = []
    for run in runs:
        if "test" not in run:
            unfinished.append(run)
            continue
        key = configuration(run["config"])
        groups.setdefault(key, Group(run["config"])).runs.append(run)
    ordered = sorted(groups.values(), key=lambda g: (LOSS_ORDER.get(g.config["loss"], 9), label(g.config)))
    return ordered, unfinished


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (NaN for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean, std = mean_std(values)
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def markdown(
    groups: list[Group], metrics: tuple[str, ...] = METRICS, split: str = "test", published: bool = True
) -> str:
    """One row per configuration: seeds, each metric as mean ± std, best epochs and seconds per epoch;
    then, with `published`, the papers' numbers for the datasets in the table."""
    selection = "valid NDCG@10"  # what chose the best epoch, beside the test numbers
    head = ["configuration", "seeds", *metrics, selection, "best epoch", "s / epoch"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group in groups:
        epochs = ", ".join(str(run["best_epoch"]) for run in sorted(group.runs, key=lambda r: r["config"]["seed"]))
        times = [run["epoch_time_s"] for run in group.runs if run.get("epoch_time_s")]
        row = [
            label(group.config),
            ", ".join(map(str, group.seeds)),
            *(cell(group.values(m, split)) for m in metrics),
            cell(group.values("NDCG@10", "valid")),
            epochs,
            f"{sum(times) / len(times):.0f}" if times else "–",
        ]
        lines.append("| " + " | ".join(row) + " |")
    datasets = {group.config["dataset"] for group in groups} if published else set()
    for dataset in sorted(datasets):
        for name, numbers in PUBLISHED.get(dataset, []):
            row = [f"*{name}*", "–", *(f"*{numbers[m]:.4f}*" if m in numbers else "–" for m in metrics)]
            row += ["–"] * 3
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot_curves(groups: list[Group], path: Path, metric: str = "NDCG@10") -> Path:
    """Validation `metric` per epoch of every run, one colour per configuration (seeds share it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.2))
    colors = plt.cm.tab10.colors
    for index, group in enumerate(groups):
        for n, run in enumerate(sorted(group.runs, key=lambda r: r["config"]["seed"])):
            epochs = [h["epoch"] for h in run["history"]]
            values = [h["valid"][metric] for h in run["history"]]
            name = f"{label(group.config)} ({len(group.runs)} seed{'s' * (len(group.runs) > 1)})"
            ax.plot(epochs, values, color=colors[index % 10], marker=".", alpha=0.8, label=None if n else name)
    ax.set(xlabel="epoch", ylabel=f"validation {metric}", title=f"validation {metric} per epoch")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", nargs="+", type=Path, help="folders holding run folders (or results.json files)")
    p.add_argument("--split", choices=("test", "valid"), default="test")
    p.add_argument("--metrics", nargs="+", default=list(METRICS))
    p.add_argument("--no-published", action="store_true", help="leave out the papers' numbers")
    p.add_argument("--plot", type=Path, default=None, help="also draw every run's validation NDCG@10 per epoch here")
    args = p.parse_args(argv)
    missing = [str(f) for f in args.folders if not f.exists()]
    if missing:
        raise SystemExit(f"error: no such folder: {', '.join(missing)}")
    groups, unfinished = group_runs(load_runs(args.folders))
    text = markdown(groups, tuple(args.metrics), args.split, published=not args.no_published)
    if args.plot is not None:
        plot_curves(groups, args.plot)
    if unfinished:
        text += "\n\nIn progress (not in the table): " + ", ".join(
            f"{run['path']} (epoch {run['epochs_done']})" for run in unfinished
        )
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
