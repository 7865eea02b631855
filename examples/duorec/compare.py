#!/usr/bin/env python
"""Is the gap between two runs larger than the noise of evaluating on a finite set of users?

    python examples/duorec/compare.py runs/beauty-adaptive-0 runs/beauty-duorec-0 --json gap.json

Both runs' best checkpoints are re-scored on the same split, user by user, and the users are
resampled with replacement (a paired bootstrap): the interval says how much the gap would move with
another draw of users of the same population. It says nothing about the spread between training
seeds, which only more seeds measure.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see train.py

import numpy as np  # noqa: E402
import torch  # noqa: E402

# isort: split
import augment  # noqa: E402
import checkpoint  # noqa: E402
import data as datasets  # noqa: E402
from evaluate import EvalSet, score_ranks, user_values  # noqa: E402
from model import DuoRec  # noqa: E402

METRICS = ("NDCG@10", "Recall@10", "MRR@10")


def per_user(ranks: np.ndarray, metric: str) -> np.ndarray:
    """Each user's value of `metric` (``NDCG@k``, ``Recall@k`` or ``MRR@k``) from 0-based ranks."""
    name, k = metric.split("@")
    return user_values(torch.as_tensor(ranks), name, int(k)).numpy()


@functools.lru_cache(maxsize=2)
def _load(dataset: str, data_path: str | None, synthetic: tuple[tuple[str, object], ...]) -> datasets.SequenceData:
    """Two runs on the same data read and filter it once."""
    return datasets.load_dataset(dataset, data_path, **dict(synthetic))


def run_config(run: Path) -> dict[str, Any]:
    """The configuration in a run's results.json; a damaged file is a one-line error."""
    path = run / "results.json"
    try:
        config = json.loads(path.read_text())["config"]
        keys = ("dataset", "data_path", "synthetic_users", "max_len")
        if not isinstance(config, dict) or any(key not in config for key in keys):
            raise KeyError("config")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise SystemExit(f"error: {path} is not a results.json of the trainer ({error}): train the run again") from None
    return config


def run_ranks(run: Path, split: str, device: torch.device) -> tuple[dict[str, Any], np.ndarray]:
    """The run's configuration and the full-ranking 0-based ranks of its best checkpoint on `split`."""
    config = run_config(run)
    try:
        data = _load(config["dataset"], config["data_path"], tuple(datasets.synthetic_options(config).items()))
    except (OSError, ValueError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from error
    samples = datasets.eval_samples(data, split, config["max_len"])
    eval_set = EvalSet(samples, negatives={})  # full ranking only
    model = DuoRec(data.n_items, max_len=config["max_len"], mask_token=augment.needs_mask_token(config)).to(device)
    state = checkpoint.load(run / "best.pt", device, required=("model",))  # tensors and plain values only
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, ValueError) as error:
        reason = checkpoint.first_line(error)
        path = run / "best.pt"
        raise SystemExit(f"error: {path} does not fit the run's data ({reason}): train the run again") from None
    edges = () if config.get("no_bucketing") else datasets.BUCKET_EDGES
    ranks = score_ranks(model, data.items, eval_set, device, bucket_edges=edges)["full"]
    return config, ranks.numpy()


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = 2000, seed: int = 0, chunk: int = 100
) -> dict[str, float]:
    """Mean of ``a - b`` over users, its 95% percentile interval under resampling users, and the share of
    resamples in which ``a`` is not ahead."""
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"need two equal, non-empty 1-D arrays of per-user values, got {a.shape} and {b.shape}")
    diff = a - b
    rng = np.random.default_rng(seed)
    means = []
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        counts = rng.multinomial(len(diff), np.full(len(diff), 1.0 / len(diff)), size=n)
        means.append(counts @ diff / len(diff))
    boot = np.concatenate(means)
    low, high = np.percentile(boot, [2.5, 97.5])
    return {
        "a": float(a.mean()),
        "b": float(b.mean()),
        "gap": float(diff.mean()),
        "ci95_low": float(low),
        "ci95_high": float(high),
        "p_not_ahead": float((boot <= 0).mean()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False
    )
    p.add_argument("run_a", type=Path, help="run folder with results.json and best.pt")
    p.add_argument("run_b", type=Path)
    p.add_argument("--split", choices=("test", "valid"), default="test")
    p.add_argument("--resamples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    for run in (args.run_a, args.run_b):
        for name in ("results.json", "best.pt"):
            if not (run / name).is_file():
                raise SystemExit(f"error: {run / name} not found (compare needs a run folder with its checkpoint)")
    device = torch.device(args.device)
    config_a, ranks_a = run_ranks(args.run_a, args.split, device)
    config_b, ranks_b = run_ranks(args.run_b, args.split, device)
    if len(ranks_a) != len(ranks_b) or config_a["dataset"] != config_b["dataset"]:
        raise SystemExit("error: the two runs were evaluated on different data")
    result: dict[str, Any] = {
        "a": str(args.run_a),
        "b": str(args.run_b),
        "split": args.split,
        "users": len(ranks_a),
        "resamples": args.resamples,
    }
    for metric in METRICS:
        stats = paired_bootstrap(per_user(ranks_a, metric), per_user(ranks_b, metric), args.resamples, args.seed)
        result[metric] = stats
        print(
            f"{metric:>10}: a {stats['a']:.4f}  b {stats['b']:.4f}  gap {stats['gap']:+.4f} "
            f"(95% CI {stats['ci95_low']:+.4f} .. {stats['ci95_high']:+.4f}; a not ahead in "
            f"{100 * stats['p_not_ahead']:.1f}% of resamples)"
        )
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
