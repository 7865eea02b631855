"""Worker of tests/test_duorec_distributed.py: one process of a gloo group running DuoRec's train.main.

The environment is what torchrun would give each process (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT), so train.py takes the same path as under torchrun; several commands run one after the
other in the same two processes (each joins and leaves its own group, on its own port), which spares
the test a torchrun launch per command.
"""

from __future__ import annotations

import os
import sys


def run_commands(rank: int, world: int, ports: list[int], commands: list[list[str]], example: str) -> None:
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", OMP_NUM_THREADS="1"
    )
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    sys.path.insert(0, example)
    import torch

    torch.set_num_threads(1)
    import train

    for port, argv in zip(ports, commands, strict=True):
        os.environ["MASTER_PORT"] = str(port)
        train.main(argv)
