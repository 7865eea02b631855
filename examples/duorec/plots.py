"""PNG figures of a run's per-epoch history (the AdaptiveRec paper's diagnostics).

- ``training.png``: losses and validation NDCG@10 / Recall@10;
- ``thresholds.png``: k_learn (mean ± std over rows), k_stat and the target k̄_stat per epoch (paper Fig. 4);
- ``similarities.png``: histograms of candidate ("negative") similarities at a few epochs (Fig. 2);
- ``alignment_uniformity.png``: alignment and uniformity per epoch and as a trajectory (Figs. 3, 5);
- ``false_negatives.png``: precision and recall of the suspected false negatives against the true
  intents (synthetic data only).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _series(history: list[dict[str, Any]], section: str, key: str) -> tuple[list[int], list[float]]:
    """Epochs and values of `history[i][section][key]`, skipping missing, None and NaN values."""
    epochs, values = [], []
    for entry in history:
        value = entry.get(section, {}).get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            epochs.append(entry["epoch"])
            values.append(float(value))
    return epochs, values


def _save(fig: plt.Figure, path: Path) -> Path:
    for ax in fig.axes:
        if ax.get_xlabel() == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_training(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for key, label in (("loss", "total"), ("ce", "next-item CE"), ("cl", "L_cl")):
        epochs, values = _series(history, "train", key)
        if values:
            left.plot(epochs, values, marker=".", label=label)
    left.set(xlabel="epoch", ylabel="training loss", title="losses")
    left.legend()
    for key in ("NDCG@10", "Recall@10"):
        epochs, values = _series(history, "valid", key)
        right.plot(epochs, values, marker=".", label=key)
    right.set(xlabel="epoch", ylabel="validation (full ranking)", title="validation")
    right.legend()
    fig.suptitle(title)
    return _save(fig, path)


def plot_thresholds(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    epochs, mean = _series(history, "train", "k_learn")
    if mean:
        _, std = _series(history, "train", "k_learn_std")
        ax.plot(epochs, mean, marker=".", label="k_learn (mean over rows)")
        if len(std) == len(mean):
            ax.fill_between(
                epochs,
                [m - s for m, s in zip(mean, std, strict=True)],
                [m + s for m, s in zip(mean, std, strict=True)],
                alpha=0.25,
            )
    for key, label, style in (("k_stat", "k_stat (batch 0.9-quantile)", "-"), ("k_bar", "target k̄_stat", "--")):
        e, v = _series(history, "train", key)
        if v:
            ax.plot(e, v, style, marker=".", label=label)
    e, v = _series(history, "probe", "k_stat")
    ax.plot(e, v, ":", label="k_stat of the probe batch")
    warmup = [entry["epoch"] for entry in history if entry.get("mode") == "keep"]
    if warmup and mean:
        ax.axvspan(min(warmup) - 0.5, max(warmup) + 0.5, color="grey", alpha=0.15, label="warm-up (plain InfoNCE)")
    ax.set(xlabel="epoch", ylabel="threshold (similarity units)", title="thresholds (paper Fig. 4)")
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_similarities(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.8))
    n = len(history)
    picks = sorted({0, n // 3, (2 * n) // 3, n - 1}) if n else []
    colors = plt.cm.viridis([i / max(len(picks) - 1, 1) for i in range(len(picks))])
    drew_k = False
    for color, index in zip(colors, picks, strict=True):
        entry = history[index]
        edges, counts = entry["probe"]["hist_edges"], entry["probe"]["hist_counts"]
        total = sum(counts) or 1
        width = edges[1] - edges[0]
        density = [c / total / width for c in counts]
        ax.stairs(density, edges, color=color, label=f"epoch {entry['epoch']}")
        k = entry["train"].get("k_learn") if entry.get("mode") not in (None, "keep") else None
        if k is not None:
            ax.axvline(k, color=color, linestyle="--", linewidth=1)
            drew_k = True
    heading = "negative similarities (paper Fig. 2)" + ("; dashed: mean k_learn" if drew_k else "")
    ax.set(xlabel="similarity of candidate (negative) pairs", ylabel="density", title=heading)
    ax.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def plot_alignment_uniformity(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs, align = _series(history, "probe", "alignment")
    _, unif = _series(history, "probe", "uniformity")
    left.plot(epochs, align, marker=".", label="alignment")
    left.plot(epochs, unif, marker=".", label="uniformity")
    left.set(xlabel="epoch", title="alignment and uniformity (lower is better)")
    left.legend()
    points = right.scatter(unif, align, c=epochs, cmap="viridis")
    right.plot(unif, align, color="grey", linewidth=0.5)
    right.set(xlabel="uniformity", ylabel="alignment", title="trajectory (paper Figs. 3, 5)")
    fig.colorbar(points, ax=right, label="epoch")
    fig.suptitle(title)
    return _save(fig, path)


def plot_false_negatives(history: list[dict[str, Any]], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    for key, label in (
        ("fn_precision", "precision"),
        ("fn_recall", "recall"),
        ("fn_base_rate", "same-intent share of candidates"),
        ("fn_suspected_fraction", "suspected share of candidates"),
    ):
        epochs, values = _series(history, "train", key)
        if values:
            ax.plot(epochs, values, marker=".", label=label)
    ax.set(xlabel="epoch", ylim=(0, 1), title="suspected false negatives vs. true intents")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.suptitle(title)
    return _save(fig, path)


def plot_all(history: list[dict[str, Any]], folder: str | Path, title: str = "") -> list[Path]:
    """Write every figure that the history has data for; returns their paths."""
    folder = Path(folder)
    if not history:
        return []
    paths = [
        plot_training(history, folder / "training.png", title),
        plot_thresholds(history, folder / "thresholds.png", title),
        plot_similarities(history, folder / "similarities.png", title),
        plot_alignment_uniformity(history, folder / "alignment_uniformity.png", title),
    ]
    if _series(history, "train", "fn_precision")[1] or _series(history, "train", "fn_recall")[1]:
        paths.append(plot_false_negatives(history, folder / "false_negatives.png", title))
    return paths
