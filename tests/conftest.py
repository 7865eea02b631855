"""Shared test setup: per-test seeding and the hypothesis profiles.

Every test starts from torch/random/numpy seeds derived from its own node id, so a test is
reproducible on its own (``pytest tests/x.py::test_y``) and independent of the order in which
the suite runs. Hypothesis runs derandomized with a modest budget (profile ``ci``, the default);
``HYPOTHESIS_PROFILE=dev`` explores more examples locally.
"""

from __future__ import annotations

import os
import random
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    deadline=None,
    max_examples=40,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=500,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@pytest.fixture(autouse=True)
def _seed_per_test(request: pytest.FixtureRequest) -> int:
    """Seed torch, random and numpy from a stable hash of the test's node id."""
    seed = zlib.crc32(request.node.nodeid.encode()) & 0x7FFFFFFF
    seed_everything(seed)
    return seed
