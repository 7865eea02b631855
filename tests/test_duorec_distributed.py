"""The DuoRec trainer under torchrun: two CPU processes (gloo) train like one process on the same global batch.

The comparison runs with ``--dropout 0``: every rank draws its own dropout masks (a rank cannot draw the
masks one process would draw for its rows without the whole batch), so with dropout on the two runs see
different masks and only agree in distribution. Without dropout the one remaining difference is float32
summation order (the CE and contrastive sums are split into per-rank sums, the encoder runs on smaller
batches), which moves the losses by a few 1e-7 relative per step; after two epochs of Adam they agree to
1e-5 relative. A metric counts ranks: such a difference could move an item that ties the target to
float32 precision past it for one user, which changes a metric by at most 1 / users, so metrics are
compared with that tolerance (in practice they come out identical). The global batch of 64 rows keeps
k_stat exact (N(N-2) <= 65,536 pairs), hence identical on every rank, and the last batch of each epoch
(17 rows) splits unevenly (9 + 8).

The equivalence test launches torchrun itself, as a user would. The other multi-process tests start two
processes with torchrun's environment through torch.multiprocessing and run several commands in them,
which spares a torchrun launch (and three imports of torch) per command.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _duorec_ddp_worker import run_commands

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import parallel  # noqa: E402
import train  # noqa: E402

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed with gloo"
)
# 300 synthetic users: 193 after the 5-core, 977 training sequences = 15 batches of 64 and one of 17.
SMALL = ["--synthetic-users", "300", "--batch-size", "64", "--quiet", "--device", "cpu"]
LOSS_KEYS = ("loss", "ce", "cl", "loss_learn", "loss_reg", "k_stat", "k_bar", "k_learn", "suspected_fraction")
DEADLINE_S = 240


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun gives each of its processes
    yield
    torch.set_num_threads(threads)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(commands: list[list[str]], processes: int = 2) -> None:
    """Run train.main(argv) for each command in turn in the same `processes` gloo processes, set up as
    torchrun sets them up (without a torchrun launch per command)."""
    ports = [free_port() for _ in commands]
    context = mp.start_processes(
        run_commands,
        args=(processes, ports, commands, str(EXAMPLE)),
        nprocs=processes,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the training processes did not finish within {DEADLINE_S} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
                process.join(5)


def torchrun(*args: str, processes: int = 2) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node=N train.py ARGS``, with this checkout's library."""
    import adaptive_contrastive

    library = str(Path(adaptive_contrastive.__file__).resolve().parents[1])
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1"}  # loopback, as tests/_distributed_worker
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    return subprocess.run(
        [*command, str(EXAMPLE / "train.py"), *args], capture_output=True, text=True, timeout=DEADLINE_S, env=env
    )


# ------------------------------------------------------------------------------- splitting the batch


# Batches of at least one row per rank (the trainer drops a smaller last batch), even and uneven splits.
SPLITS = [(world, n) for world in (1, 2, 3, 8) for n in (2, 8, 17, 64, 65) if n >= world]


@pytest.mark.parametrize("world, n", SPLITS)
def test_ranks_split_a_batch_into_contiguous_slices_whose_weights_average_to_one(world: int, n: int) -> None:
    rows = np.arange(100, 100 + n)
    ranks = [parallel.Ranks(torch.device("cpu"), rank=r, world=world) for r in range(world)]
    slices = [r.shard(rows) for r in ranks]
    assert np.array_equal(np.concatenate(slices), rows)  # the union, in order, is the global batch
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    # A rank's mean times its weight, averaged over ranks (what DDP does), is the mean over all rows.
    values = np.linspace(-1.0, 3.0, n)
    means = [values[slice(*r.bounds(n))].mean() * r.row_weight(len(r.shard(rows)), n) for r in ranks]
    assert np.mean(means) == pytest.approx(values.mean(), rel=1e-12)
    assert ranks[0].min_rows() == max(2, world)


def test_one_process_is_a_world_of_one() -> None:
    alone = parallel.Ranks(torch.device("cpu"))
    rows = np.arange(5)
    x = torch.randn(5, 3)
    assert alone.main and not alone.distributed and alone.row_weight(5, 5) == 1.0
    assert alone.shard(rows) is rows and alone.gather_rows(x, 5) is x and alone.gather_halves(x, 5) is x
    assert alone.agree(True) and alone.main_first(lambda: 7) == 7


# ----------------------------------------------------------------------------------- under torchrun


@needs_gloo
@pytest.mark.distributed
def test_two_processes_train_like_one_and_resume(tmp_path: Path) -> None:
    """torchrun with 2 gloo processes for 1 epoch, then --resume for the 2nd, against one process for 2 epochs:
    the same per-epoch losses and diagnostics (rel 1e-5) and validation/test metrics (1 / users)."""
    one = train.main([*SMALL, "--dropout", "0", "--epochs", "2", "--out", str(tmp_path / "one")])
    two = tmp_path / "two"
    first = torchrun(*SMALL, "--dropout", "0", "--epochs", "1", "--out", str(two))
    assert first.returncode == 0, first.stderr[-3000:]
    second = torchrun(*SMALL, "--dropout", "0", "--epochs", "2", "--resume", "--out", str(two))
    assert second.returncode == 0, second.stderr[-3000:]
    results = json.loads((two / "results.json").read_text())
    assert results["world_size"] == 2 and one["world_size"] == 1 and results["status"] == "finished"
    users = one["dataset"]["users"]
    assert len(results["history"]) == len(one["history"]) == 2
    for single, double in zip(one["history"], results["history"], strict=True):
        for key in LOSS_KEYS:
            if single["train"].get(key) is not None:
                assert double["train"][key] == pytest.approx(single["train"][key], rel=1e-5, abs=1e-9), key
        for metric, value in single["valid"].items():
            assert double["valid"][metric] == pytest.approx(value, abs=1 / users), metric
    # The second epoch ran the adaptive loss with learned thresholds: its false-negative diagnostics too.
    assert results["history"][1]["train"]["fn_precision"] == pytest.approx(
        one["history"][1]["train"]["fn_precision"], rel=1e-5
    )
    for metric, value in one["test"].items():
        assert results["test"][metric] == pytest.approx(value, abs=1 / users), metric
    # Rank 0 alone prints and writes: the same files as one process, the summary printed once.
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    assert second.stdout.count("best epoch") == 1 and second.stdout.count("resumed from") == 1
    state = torch.load(two / "last.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0], state["rng_ranks"][1])  # each rank its own dropout stream


@needs_gloo
@pytest.mark.distributed
def test_errors_under_two_processes_are_printed_once_and_stop_every_rank(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("{}")  # a run is there: refused without --resume or --overwrite
    with pytest.raises(mp.ProcessExitedException, match="exit code 1"):
        spawn([[*SMALL, "--epochs", "1", "--out", str(out)]])
    assert capfd.readouterr().err.count("already holds a run") == 1
    assert (out / "results.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["results.json"]


@needs_gloo
@pytest.mark.distributed
def test_resume_with_two_processes_continues_each_ranks_dropout_stream(tmp_path: Path) -> None:
    """With dropout on, 1 epoch then --resume gives exactly the uninterrupted two-process run: every rank
    takes its own RNG state back from last.pt."""
    tiny = ["--synthetic-users", "200", "--batch-size", "32", "--max-steps", "4", "--quiet", "--device", "cpu"]
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    spawn(
        [
            [*tiny, "--epochs", "2", "--out", straight],
            [*tiny, "--epochs", "1", "--out", split],
            [*tiny, "--epochs", "2", "--resume", "--out", split],
        ]
    )
    a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("straight", "split"))
    assert a["world_size"] == b["world_size"] == 2
    assert a["history"][1]["train"] == pytest.approx(b["history"][1]["train"], rel=1e-6)
    assert a["test"] == pytest.approx(b["test"], abs=1e-12)
