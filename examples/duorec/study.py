#!/usr/bin/env python
"""Regime study on synthetic data: when does handling false negatives make a recommender better?

    python examples/duorec/study.py                 # every missing run (2 at a time), then the table and figure
    python examples/duorec/study.py --report-only   # the table and figure from the results already there
    python examples/duorec/study.py --runner "nice -n 5" --jobs 2      # each run behind a command prefix

SASRec (no contrastive term), DuoRec's plain InfoNCE (``keep``), AdaptiveRec's three ways of handling the
suspected false negatives (``drop``, ``attract``, ``relabel``, learned threshold) and the oracle (the true
intents as known positives: the ceiling of any threshold) over the temperature grid and two false-negative
rates (the number of latent intents), with the same seeds for every method, so that every difference is
paired. Each finished run leaves a small ``results.json`` under ``--results`` (configuration, best-epoch
metrics, a lean per-epoch history and the per-user test ranks that the paired bootstrap resamples); the
checkpoints stay in ``--scratch``. Runs already in ``--results`` are skipped, so the study resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import numpy as np  # noqa: E402

# isort: split
import compare  # noqa: E402

RESULTS = HERE / "results" / "synthetic_study"

# The generator's design, shared by both regimes (the README's "Regime study" says how it was chosen): short
# sequences (5-10 items) of 1000 users over about 600 items kept by a 3-core filter, half the steps following the
# intent's Markov chain and half drawn from the intent's popularity, so that the next item depends on the intent
# and not only on the last item.
DATA = [
    "--synthetic-users", "1000", "--synthetic-max-len", "10", "--synthetic-core", "3", "--synthetic-markov", "0.5",
]  # fmt: skip
# Two false-negative rates at the same catalogue size (640 items before filtering): with n intents about 1/n of
# the in-batch candidates share the row's intent.
REGIMES: dict[str, list[str]] = {
    "4-intents": ["--synthetic-intents", "4", "--synthetic-items-per-intent", "160"],
    "32-intents": ["--synthetic-intents", "32", "--synthetic-items-per-intent", "20"],
}
TAUS = (0.1, 0.2, 0.5, 1.0)
SEEDS = (0, 1, 2)
# Every run: cosine similarity, DuoRec's us_x views, the training budget (early stopping on validation NDCG@10).
COMMON = ["--similarity", "cos", "--contrast", "us_x", "--epochs", "20", "--patience", "5"]
METHODS: dict[str, list[str]] = {
    "sasrec": ["--loss", "none"],
    "keep": ["--loss", "duorec"],
    "drop": ["--loss", "adaptive", "--false-negatives", "drop"],
    "attract": ["--loss", "adaptive", "--false-negatives", "attract"],
    "relabel": ["--loss", "adaptive", "--false-negatives", "relabel"],
    "oracle": ["--loss", "duorec", "--known-positives", "intent", "--false-negatives", "attract"],
}
BASELINE = "keep"
METRIC = "NDCG@10"
# What of each epoch the table and figure need (the rest of the trainer's history is left out).
EPOCH_KEYS = ("cl", "suspected_fraction", "fn_precision", "fn_recall", "fn_base_rate", "k_stat", "k_learn")


@dataclass(frozen=True)
class Run:
    """One training run of the study."""

    regime: str
    method: str
    tau: float | None  # None for SASRec, which has no contrastive term
    seed: int

    @property
    def name(self) -> str:
        tau = "" if self.tau is None else f"-t{self.tau:g}"
        return f"{self.regime}/{self.method}{tau}-s{self.seed}"

    def argv(self) -> list[str]:
        """train.py's arguments (without ``--out``)."""
        tau = [] if self.tau is None else ["--temperature", f"{self.tau:g}"]
        return [*DATA, *REGIMES[self.regime], *COMMON, *METHODS[self.method], *tau, "--seed", str(self.seed)]


def all_runs() -> list[Run]:
    """The whole grid, SASRec once per regime and seed; seeds outermost so that a partial study is balanced."""
    runs = []
    for seed in SEEDS:
        for regime in REGIMES:
            runs.append(Run(regime, "sasrec", None, seed))
            for tau in TAUS:
                for method in METHODS:
                    if method != "sasrec":
                        runs.append(Run(regime, method, tau, seed))
    return runs


# ------------------------------------------------------------------------------------------ running


def compact(full: dict[str, Any], ranks: np.ndarray, cpu_s: float, wall_s: float) -> dict[str, Any]:
    """The parts of a run's results.json that the study reads, plus its per-user test ranks."""
    history = [
        {
            "epoch": h["epoch"],
            "valid": {METRIC: h["valid"][METRIC]},
            "train": {k: h["train"].get(k) for k in EPOCH_KEYS},
        }
        for h in full["history"]
    ]
    keep = ("config", "dataset", "train_samples", "epochs_done", "best_epoch", "epoch_time_s", "status")
    out = {key: full[key] for key in keep}
    full_ranking = lambda metrics: {k: v for k, v in metrics.items() if "/" not in k}  # noqa: E731
    out |= {"valid": full_ranking(full["valid"]), "test": full_ranking(full["test"]), "history": history}
    out |= {"cpu_s": round(cpu_s, 1), "wall_s": round(wall_s, 1), "test_ranks": [int(r) for r in ranks]}
    return out


def execute(run: Run, results: Path, scratch: Path, runner: list[str]) -> tuple[Run, float]:
    """Train `run` in a subprocess (one thread), re-score its best checkpoint user by user, write the
    compact results. Returns the run and its wall time."""
    import torch

    out = scratch / run.name
    argv = [*runner, sys.executable, str(HERE / "train.py"), *run.argv()]
    argv += ["--out", str(out), "--threads", "1", "--quiet", "--no-plots", "--device", "cpu"]
    if (out / "last.pt").is_file():
        argv.append("--resume")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"{run.name} failed ({shlex.join(argv)}):\n{done.stderr[-2000:]}")
    full = json.loads((out / "results.json").read_text())
    torch.set_num_threads(1)
    _, ranks = compare.run_ranks(out, "test", torch.device("cpu"))
    # RUSAGE_CHILDREN is process-wide: with several runs at a time this also counts the others' CPU time.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    target = results / run.name / "results.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(compact(full, ranks, cpu, wall)))
    os.replace(tmp, target)
    return run, wall


def run_missing(results: Path, scratch: Path, jobs: int, runner: list[str]) -> None:
    missing = [run for run in all_runs() if not (results / run.name / "results.json").is_file()]
    print(f"{len(all_runs()) - len(missing)} runs done, {len(missing)} to run, {jobs} at a time", flush=True)
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(execute, run, results, scratch, runner) for run in missing]
        for n, future in enumerate(as_completed(futures), 1):
            run, wall = future.result()
            print(f"[{n}/{len(missing)}] {run.name}: {wall:.0f}s ({time.perf_counter() - start:.0f}s)", flush=True)


# ------------------------------------------------------------------------------------------ report


def load(results: Path) -> dict[Run, dict[str, Any]]:
    found = {}
    for run in all_runs():
        path = results / run.name / "results.json"
        if path.is_file():
            found[run] = json.loads(path.read_text())
    return found


def per_user(result: dict[str, Any]) -> np.ndarray:
    return compare.per_user(np.asarray(result["test_ranks"]), METRIC)


def mean_sd(values: list[float]) -> tuple[float, float]:
    mean = float(np.mean(values))
    return mean, float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def best_epoch_value(result: dict[str, Any], key: str) -> float | None:
    """A training diagnostic of the best epoch (NaN-free), or None."""
    value = result["history"][result["best_epoch"] - 1]["train"].get(key)
    return None if value is None else float(value)


def cell_stats(found: dict[Run, dict[str, Any]], regime: str, method: str, tau: float | None) -> dict[str, Any]:
    """Seeds, metric per seed, and the paired comparisons of one cell against keep and SASRec."""
    seeds = [s for s in SEEDS if Run(regime, method, tau, s) in found]
    mine = {s: found[Run(regime, method, tau, s)] for s in seeds}
    stats: dict[str, Any] = {"seeds": seeds, "values": [mine[s]["test"][METRIC] for s in seeds]}
    for key in ("fn_precision", "fn_recall", "suspected_fraction", "fn_base_rate"):
        values = [v for v in (best_epoch_value(mine[s], key) for s in seeds) if v is not None]
        stats[key] = float(np.mean(values)) if values else None
    references = {"keep": (BASELINE, tau), "sasrec": ("sasrec", None)}
    for name, (ref_method, ref_tau) in references.items():
        paired = [s for s in seeds if Run(regime, ref_method, ref_tau, s) in found]
        if not paired or (ref_method == method and ref_tau == tau):
            continue
        ref = {s: found[Run(regime, ref_method, ref_tau, s)] for s in paired}
        gaps = [mine[s]["test"][METRIC] - ref[s]["test"][METRIC] for s in paired]
        # Users resampled on the seed-averaged per-user metric: the interval of the mean gap over users.
        a = np.mean([per_user(mine[s]) for s in paired], axis=0)
        b = np.mean([per_user(ref[s]) for s in paired], axis=0)
        boot = compare.paired_bootstrap(a, b, resamples=2000, seed=0)
        ref_sd = mean_sd([ref[s]["test"][METRIC] for s in paired])[1]
        stats[f"vs_{name}"] = {
            "seeds": paired,
            "gaps": gaps,
            "gap": float(np.mean(gaps)),
            "gap_sd": mean_sd(gaps)[1],
            "ci95": [boot["ci95_low"], boot["ci95_high"]],
            "seeds_ahead": sum(g > 0 for g in gaps),
            # Ahead beyond both noises: the whole user-bootstrap interval above 0, and the mean gap larger
            # than either configuration's standard deviation over seeds.
            "clear": bool(
                boot["ci95_low"] > 0 and np.mean(gaps) > np.nanmax([mean_sd(stats["values"])[1], ref_sd, 0.0])
            ),
        }
    return stats


def fmt(value: float | None, digits: int = 4, sign: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def comparison(stats: dict[str, Any], name: str) -> list[str]:
    versus = stats.get(f"vs_{name}")
    if versus is None:
        return ["–", "–"]
    gap = f"{fmt(versus['gap'], sign=True)} ± {fmt(versus['gap_sd'])}"
    ci = f"{fmt(versus['ci95'][0], sign=True)} to {fmt(versus['ci95'][1], sign=True)}"
    mark = " **✓**" if versus["clear"] else ""
    return [gap + mark, f"{ci} ({versus['seeds_ahead']}/{len(versus['seeds'])})"]


def table(found: dict[Run, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    """Markdown: one table per regime, a row per (τ, method); and the same numbers as a dict."""
    lines, summary = [], {}
    head = [
        "τ", "method", "seeds", f"test {METRIC}", "Δ vs keep (± sd over seeds)", "95% CI (seeds ahead)",
        "Δ vs SASRec", "95% CI (seeds ahead)", "FN precision", "FN recall", "flagged",
    ]  # fmt: skip
    for regime in REGIMES:
        cells = [("–", "sasrec", None)] + [(f"{t:g}", m, t) for t in TAUS for m in METHODS if m != "sasrec"]
        rows = []
        for label, method, tau in cells:
            stats = cell_stats(found, regime, method, tau)
            if not stats["seeds"]:
                continue
            summary[f"{regime}/{method}" + ("" if tau is None else f"/{tau:g}")] = stats
            mean, sd = mean_sd(stats["values"])
            rows.append(
                [
                    label,
                    method,
                    ",".join(map(str, stats["seeds"])),
                    f"{fmt(mean)} ± {fmt(sd)}",
                    *comparison(stats, "keep"),
                    *comparison(stats, "sasrec"),
                    fmt(stats["fn_precision"], 2),
                    fmt(stats["fn_recall"], 2),
                    fmt(stats["suspected_fraction"], 3),
                ]
            )
        base = [stats["fn_base_rate"] for key, stats in summary.items() if key.startswith(regime + "/")]
        base = [b for b in base if b is not None]
        lines += [f"### {regime}" + (f" (same-intent share of candidates {np.mean(base):.3f})" if base else ""), ""]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        lines.append("")
    return "\n".join(lines), summary


def figure(found: dict[Run, dict[str, Any]], path: Path) -> Path:
    """Test metric against τ, one panel per regime, one line per method (mean ± sd over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(REGIMES), figsize=(5.2 * len(REGIMES), 4.0), sharey=False)
    colors = dict(zip(METHODS, plt.cm.tab10.colors, strict=False))
    for ax, regime in zip(np.atleast_1d(axes), REGIMES, strict=True):
        for method in METHODS:
            if method == "sasrec":
                values = cell_stats(found, regime, method, None)["values"]
                if values:
                    mean, sd = mean_sd(values)
                    ax.axhline(mean, color=colors[method], ls="--", label="SASRec")
                    if not math.isnan(sd):
                        ax.axhspan(mean - sd, mean + sd, color=colors[method], alpha=0.15)
                continue
            points = [(tau, cell_stats(found, regime, method, tau)["values"]) for tau in TAUS]
            points = [(tau, mean_sd(v)) for tau, v in points if v]
            if points:
                taus = [p[0] for p in points]
                means = [p[1][0] for p in points]
                sds = [0.0 if math.isnan(p[1][1]) else p[1][1] for p in points]
                ax.errorbar(taus, means, yerr=sds, marker="o", capsize=3, color=colors[method], label=method)
        ax.set_xscale("log")
        ax.set_xticks(TAUS, [f"{t:g}" for t in TAUS])
        ax.set(title=regime, xlabel="τ", ylabel=f"test {METRIC}")
    np.atleast_1d(axes)[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(f"synthetic regime study: test {METRIC} (mean ± sd over seeds)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(results: Path) -> str:
    found = load(results)
    text, summary = table(found)
    results.mkdir(parents=True, exist_ok=True)
    (results / "table.md").write_text(text)
    (results / "summary.json").write_text(json.dumps(summary, indent=1))
    if found:
        figure(found, results / "study.png")
    walls = sorted(r.get("wall_s", 0.0) for r in found.values())
    print(text)
    if walls:
        # The median, not the sum: runs that waited for a CPU slot or shared the machine took longer.
        median = walls[len(walls) // 2]
        print(
            f"{len(found)} of {len(all_runs())} runs; median {median:.0f} s per run, two at a time: about "
            f"{median * len(all_runs()) / 120:.0f} minutes for the whole study on 2 cores"
        )
    return text


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS, help="where the compact results, table and figure go")
    p.add_argument("--scratch", type=Path, default=Path("runs") / "synthetic_study", help="run folders")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time (each on one thread)")
    p.add_argument("--runner", default="", help="a command prefix for every run, e.g. a CPU-slot wrapper")
    p.add_argument("--report-only", action="store_true", help="only build the table and figure")
    args = p.parse_args(argv)
    if not args.report_only:
        run_missing(args.results, args.scratch, args.jobs, shlex.split(args.runner))
    return report(args.results)


if __name__ == "__main__":
    main()
