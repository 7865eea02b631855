#!/usr/bin/env python
"""The soft-mask formulations compared on the synthetic data: one table from the runs' results.json files.

    python examples/duorec/soft_mask_candidates.py RUN_FOLDER... [--out examples/duorec/results/soft_mask]

Every run is ``examples/duorec/train.py`` with its defaults (synthetic data, 20 epochs, us_x, cos, τ = 1,
λ_reg = 0.1, seed 0) and ``--false-negatives MODE`` plus the mask of its row (``COMMANDS``). The rejected
formulations only exist at commit 57b3ced (``--soft-gradient NAME``); the hard mask and the chosen one
(``--mask soft``, whose default is ``--mask-gradient labels``) run at any later commit. Writes
``candidates.json`` (per run: the command, the per-epoch diagnostics and the summary) and ``candidates.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "soft_mask"
MODES = ("drop", "attract", "relabel")
TRAIN = "python examples/duorec/train.py"
# Epochs averaged in the summary: the last five of the 20.
LAST = 5
# name: (how the mask is differentiated, what the threshold gets from the loss, the command's mask flags)
CANDIDATES: dict[str, tuple[str, str, str]] = {
    "hard": ("no mask gradient (hard mask)", "nothing", "--mask hard"),
    "exact": ("exact derivative (the old soft mask)", "den + lab", "--mask soft --mask-gradient full"),
    "denominator": ("labels' ν held fixed", "den", "--mask soft --soft-gradient denominator  # at 57b3ced"),
    "labels-raw": ("denominator's ν held fixed", "lab", "--mask soft --soft-gradient labels  # at 57b3ced"),
    "labels-centred": (
        "denominator's ν held fixed",
        "lab − its batch mean",
        "--mask soft --soft-gradient labels-centred  # at 57b3ced",
    ),
    "exact-centred": (
        "exact derivative",
        "den + lab − their batch mean",
        "--mask soft --soft-gradient centred  # at 57b3ced",
    ),
    "exact-detached": (
        "exact derivative, into s only",
        "nothing",
        "--mask soft --soft-gradient detached  # at 57b3ced",
    ),
    "labels": ("denominator's ν held fixed, k constant (chosen)", "nothing", "--mask soft"),
}
# The experimental flag of 57b3ced (--soft-gradient) → candidate name.
EXPERIMENTAL = {
    "full": "exact",
    "denominator": "denominator",
    "labels": "labels-raw",
    "labels-centred": "labels-centred",
    "centred": "exact-centred",
    "detached": "exact-detached",
    "labels-detached": "labels",
}
EPOCH_KEYS = ("suspected_fraction", "fn_precision", "fn_recall", "k_learn", "k_bar", "k_stat", "loss_learn", "loss_reg")


# Flags that coincide with another candidate in a mode: drop has no soft labels, relabel no masked denominator.
SAME_IN_MODE = {
    ("drop", "labels-raw"): "labels",
    ("drop", "labels-centred"): "labels",
    ("drop", "denominator"): "exact",
    ("relabel", "exact-detached"): "labels",
    ("relabel", "exact-centred"): "labels-centred",
}


def candidate(config: dict[str, Any]) -> str:
    """The candidate a run's configuration is."""
    if config["mask"] == "hard":
        return "hard"
    if "soft_gradient" in config:
        name = EXPERIMENTAL[config["soft_gradient"]]
        return SAME_IN_MODE.get((config["false_negatives"], name), name)
    return "labels" if config.get("mask_gradient", "full") == "labels" else "exact"


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def summarise(path: Path) -> dict[str, Any]:
    run = json.loads(path.read_text())
    config, history = run["config"], run["history"]
    name = candidate(config)
    tail = [h["train"] for h in history[-LAST:]]
    return {
        "mode": config["false_negatives"],
        "candidate": name,
        "commit": "57b3ced" if "soft_gradient" in config else "any",
        "command": f"{TRAIN} --false-negatives {config['false_negatives']} {CANDIDATES[name][2]}",
        "epochs": [{"epoch": h["epoch"], **{k: h["train"].get(k) for k in EPOCH_KEYS}} for h in history],
        "share": mean([t.get("suspected_fraction") for t in tail]),
        "precision": mean([t.get("fn_precision") for t in tail]),
        "recall": mean([t.get("fn_recall") for t in tail]),
        "k_learn": history[-1]["train"].get("k_learn"),
        "k_bar": history[-1]["train"].get("k_bar"),
        "test_ndcg10": run["test"]["NDCG@10"],
        "valid_ndcg10": max(h["valid"]["NDCG@10"] for h in history),
    }


def judge(rows: list[dict[str, Any]]) -> None:
    """Add each soft row's share relative to its mode's hard mask and whether it meets the issue's bar:
    share within 0.5×–2× of the hard mask's and FN precision at least the hard mask's."""
    hard = {r["mode"]: r for r in rows if r["candidate"] == "hard"}
    for r in rows:
        h = hard.get(r["mode"])
        if h is None or r["candidate"] == "hard":
            r["share_vs_hard"], r["meets_bar"] = (1.0, None) if h is r else (None, None)
            continue
        r["share_vs_hard"] = r["share"] / h["share"]
        r["meets_bar"] = bool(0.5 <= r["share_vs_hard"] <= 2.0 and r["precision"] >= h["precision"] - 0.005)


def fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "# Soft-mask formulations on the synthetic data",
        "",
        f"Written by `examples/duorec/soft_mask_candidates.py`. Share, precision and recall are means over epochs "
        f"{21 - LAST}–20; k_learn and k̄ at epoch 20; NDCG@10 of the best validation epoch, on test. *Bar*: share "
        "within 0.5×–2× of the hard mask's and FN precision at least the hard mask's (to 0.005).",
        "",
        "| mode | candidate | mask gradient | k gets | share | × hard | FN precision | FN recall | k_learn | k̄ "
        "| test NDCG@10 | bar |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = list(CANDIDATES)
    for r in sorted(rows, key=lambda r: (MODES.index(r["mode"]), order.index(r["candidate"]))):
        how, gets, _ = CANDIDATES[r["candidate"]]
        bar = {None: "–", True: "yes", False: "no"}[r["meets_bar"]]
        lines.append(
            f"| {r['mode']} | {r['candidate']} | {how} | {gets} | {fmt(r['share'])} | {fmt(r['share_vs_hard'], 2)} "
            f"| {fmt(r['precision'])} | {fmt(r['recall'])} | {fmt(r['k_learn'])} | {fmt(r['k_bar'])} "
            f"| {fmt(r['test_ndcg10'], 4)} | {bar} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run folders (each with a finished results.json)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    finished = [f / "results.json" for f in args.runs if (f / "results.json").is_file()]
    rows = [summarise(path) for path in finished if "test" in json.loads(path.read_text())]
    judge(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "candidates.json").write_text(json.dumps(rows, indent=1))
    (args.out / "candidates.md").write_text(table(rows))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
