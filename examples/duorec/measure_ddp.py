#!/usr/bin/env python
"""What training under torchrun gives and costs on CPU (gloo): one process against two.

    python examples/duorec/measure_ddp.py     # about 6 min on 2 cores; writes results/distributed/measurements.json

1. equivalence: ``--synthetic-users 300 --batch-size 64 --epochs 2 --dropout 0`` in one process and in
   two; the per-epoch losses and validation metrics side by side, and their largest differences;
2. speed: training seconds per epoch (``train_time_s`` of results.json, evaluation excluded), one
   process with 1 and with 2 threads against two processes of 1 thread each, on synthetic data (1000
   users, batch 256, 3 epochs) and on Beauty (batch 256, one epoch cut at 40 steps);
3. communication: the bytes each training step passes through torch.distributed in the two-process
   runs, by source: the loss's all-gather of the two views (forward) and all-reduce of their gradients
   (backward), DDP's all-reduce of the parameter gradients, and the trainer's own collectives
   (whole-batch diagnostics, the ThresholdNet's gradients). Counted by wrapping the collectives in
   the worker processes (``--count-bytes``, the mode in which this script starts them under torchrun).

Sizes are those of the tensors handed to each collective on one rank (an all-gather's output: every
rank's rows); how gloo moves them over the wire (ring, tree) is its own business.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train.py, which the workers import after torch

HERE = Path(__file__).resolve().parent
TRAIN = HERE / "train.py"
DEFAULT_OUT = HERE / "results" / "distributed" / "measurements.json"
DEFAULT_BEAUTY = HERE.parents[2] / "shared" / "data" / "beauty" / "Beauty.txt"
COMMON = ["--quiet", "--device", "cpu", "--loss", "adaptive", "--contrast", "us_x"]
EQUIVALENCE = ["--synthetic-users", "300", "--batch-size", "64", "--epochs", "2", "--dropout", "0"]
SYNTHETIC = ["--synthetic-users", "1000", "--batch-size", "256", "--epochs", "3", "--warmup-epochs", "1"]
BEAUTY = ["--dataset", "beauty", "--batch-size", "256", "--epochs", "1", "--max-steps", "40", "--warmup-epochs", "0"]
COMPARED = ("loss", "ce", "cl", "k_stat", "k_learn", "suspected_fraction")


# ----------------------------------------------------------------------------- worker: count the bytes


def count_bytes(out: Path, argv: list[str]) -> None:
    """Run train.main(argv) under torchrun with every collective of the training steps counted; rank 0
    writes the counts per step to `out`."""
    sys.path.insert(0, str(HERE))
    import torch
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    # isort: split
    import parallel
    import train

    counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    state = {"training": False, "steps": 0}

    def size(tensor: torch.Tensor) -> int:
        return tensor.numel() * tensor.element_size()

    def source() -> str | None:
        """Who called the collective: the loss (the library) or the trainer (parallel.py), and in which
        function; None for torch itself (DDP's hook, counted by `bucket_hook`)."""
        code = sys._getframe(2).f_code
        caller = Path(code.co_filename)
        if caller.parent.name == "adaptive_contrastive":
            return f"loss {code.co_name}"
        return f"trainer {code.co_name}" if caller.name == "parallel.py" else None

    def wrap(name: str, payload: Any) -> None:
        original = getattr(dist, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            who = source() if state["training"] else None
            if who is not None:
                entry = counts[f"{who}: {name}"]
                entry["calls"] += 1
                entry["bytes"] += payload(*args)
            return original(*args, **kwargs)

        setattr(dist, name, counted)

    wrap("all_gather", lambda parts, tensor, *rest: sum(size(p) for p in parts))  # every rank's rows
    wrap("all_reduce", lambda tensor, *rest: size(tensor))
    wrap("broadcast", lambda tensor, *rest: size(tensor))

    # DDP checks a hook's annotations against the classes themselves; postponed (string) annotations fail.
    def bucket_hook(process_group, bucket):  # type: ignore[no-untyped-def]
        if state["training"]:
            counts["DDP gradient all_reduce"]["calls"] += 1
            counts["DDP gradient all_reduce"]["bytes"] += size(bucket.buffer())
        return default_hooks.allreduce_hook(process_group, bucket)

    wrap_model = parallel.Ranks.wrap

    def wrap_with_hook(self: parallel.Ranks, model: Any) -> Any:
        ddp = wrap_model(self, model)
        ddp.register_comm_hook(dist.group.WORLD, bucket_hook)
        return ddp

    parallel.Ranks.wrap = wrap_with_hook  # type: ignore[method-assign]
    train_epoch, epoch_batches = train.Trainer.train_epoch, train.Trainer._epoch_batches

    def counted_epoch(self: train.Trainer) -> Any:
        state["training"] = True
        try:
            return train_epoch(self)
        finally:
            state["training"] = False

    def counted_batches(self: train.Trainer, generator: Any) -> Any:
        batches = epoch_batches(self, generator)
        state["steps"] += len(batches)
        return batches

    train.Trainer.train_epoch = counted_epoch  # type: ignore[method-assign]
    train.Trainer._epoch_batches = counted_batches  # type: ignore[method-assign]
    results = train.main(argv)
    if int(os.environ.get("RANK", "0")) == 0:
        steps = state["steps"]
        per_step = {key: {k: v / steps for k, v in entry.items()} for key, entry in sorted(counts.items())}
        out.write_text(json.dumps({"steps": steps, "per_step": per_step, "world_size": results["world_size"]}))


# --------------------------------------------------------------------------------- the measurements


def run(command: list[str]) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def one_process(args: list[str], out: Path, threads: int) -> dict[str, Any]:
    run([sys.executable, str(TRAIN), *COMMON, *args, "--threads", str(threads), "--out", str(out)])
    return json.loads((out / "results.json").read_text())


def two_processes(args: list[str], out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """A two-process run with its collectives counted (1 thread per process, as torchrun sets)."""
    counts = out.with_suffix(".bytes.json")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    worker = [str(Path(__file__).resolve()), "--count-bytes", str(counts), "--"]
    run([*command, *worker, *COMMON, *args, "--out", str(out)])
    return json.loads((out / "results.json").read_text()), json.loads(counts.read_text())


def epoch_times(results: dict[str, Any]) -> list[float]:
    return [h["train_time_s"] for h in results["history"]]


def equivalence(folder: Path) -> dict[str, Any]:
    one = one_process(EQUIVALENCE, folder / "eq-one", threads=1)
    two, _ = two_processes(EQUIVALENCE, folder / "eq-two")
    epochs = []
    worst_loss, worst_metric = 0.0, 0.0
    for a, b in zip(one["history"], two["history"], strict=True):
        row: dict[str, Any] = {"epoch": a["epoch"]}
        for key in COMPARED:
            if a["train"].get(key) is not None:
                x, y = a["train"][key], b["train"][key]
                row[key] = [x, y]
                worst_loss = max(worst_loss, abs(x - y) / abs(x) if x else abs(y))
        for key in ("NDCG@10", "Recall@10", "MRR@10"):
            row[f"valid {key}"] = [a["valid"][key], b["valid"][key]]
        worst_metric = max(worst_metric, max(abs(a["valid"][k] - b["valid"][k]) for k in a["valid"]))
        epochs.append(row)
    return {
        "command": EQUIVALENCE,
        "epochs (one process, two processes)": epochs,
        "max relative difference of the training values": worst_loss,
        "max absolute difference of the validation metrics": worst_metric,
        "test NDCG@10 (one, two)": [one["test"]["NDCG@10"], two["test"]["NDCG@10"]],
    }


def speed(name: str, args: list[str], folder: Path) -> dict[str, Any]:
    single_1 = one_process(args, folder / f"{name}-one-1", threads=1)
    single_2 = one_process(args, folder / f"{name}-one-2", threads=2)
    double, counted = two_processes(args, folder / f"{name}-two")
    return {
        "command": args,
        "train_samples": single_1["train_samples"],
        "seconds per epoch, one process, 1 thread": epoch_times(single_1),
        "seconds per epoch, one process, 2 threads": epoch_times(single_2),
        "seconds per epoch, two processes, 1 thread each": epoch_times(double),
        "bytes per training step, two processes": counted,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--count-bytes"]:
        rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        count_bytes(Path(argv[1]), rest)
        return {}
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--beauty", type=Path, default=DEFAULT_BEAUTY, help="Beauty.txt (skipped if absent)")
    args = p.parse_args(argv)
    import torch

    report: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "load average at start": os.getloadavg(),
        }
    }
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        report["equivalence"] = equivalence(folder)
        report["synthetic"] = speed("synthetic", SYNTHETIC, folder)
        if args.beauty.is_file():
            report["beauty"] = speed("beauty", [*BEAUTY, "--data-path", str(args.beauty)], folder)
    report["machine"]["load average at end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
