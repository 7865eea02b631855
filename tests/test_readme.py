"""The README's Python blocks run as written, so the quick start cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2


def test_readme_blocks_run_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    namespace: dict[str, object] = {}
    for block in BLOCKS:
        exec(compile(block, str(README), "exec"), namespace)
    loss_fn = namespace["loss_fn"]
    assert loss_fn.epoch == 3  # type: ignore[attr-defined]
    assert loss_fn.has_target  # type: ignore[attr-defined]
    rows = namespace["rows"]
    assert isinstance(rows, torch.Tensor) and rows.shape == (512,)
    assert "Diagnostics(" in capsys.readouterr().out
