"""A small dry run of benchmarks/bench_cpu_step.py's overhead breakdown and per-op profile, in a subprocess
(the script sets the process's thread count), checking that every case and column is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu_step.py"
CASES = {
    "keep", "adaptive", "k_stat", "threshold_net", "masked_loss", "masked_loss_labels", "keep_pytorch_ops",
    "adaptive_pytorch_ops",
}  # fmt: skip
RATIOS = {
    "adaptive / keep", "labels / no labels", "adaptive_pytorch_ops / keep_pytorch_ops",
    "adaptive / adaptive_pytorch_ops", "keep / keep_pytorch_ops",
}  # fmt: skip


def run(tmp_path: Path, *args: str) -> None:
    cmd = [sys.executable, str(SCRIPT), "--batch-sizes", "32", "--dim", "8", "--out", str(tmp_path), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_overhead_reports_cpu_user_and_system_time_and_page_faults(tmp_path: Path) -> None:
    run(tmp_path, "--overhead", "--rounds", "3")
    result = json.loads((tmp_path / "overhead.json").read_text())
    for key in ("median_ms", "median_user_ms", "median_system_ms", "median_wall_ms", "median_page_faults"):
        assert set(result[key]) == CASES, key
    for name in CASES:
        # CPU time is user plus system time sample by sample, so its median is at least the user time's.
        assert result["median_ms"][name] >= result["median_user_ms"][name] - 1e-6
    assert set(result["ratios"]) == set(result["user_ratios"]) == RATIOS
    assert all(value > 0 for value in result["ratios"].values())
    table = (tmp_path / "overhead.md").read_text()
    assert "| case | CPU ms | user ms | system ms | page faults | wall ms |" in table


def test_profile_lists_the_ops_the_threshold_adds(tmp_path: Path) -> None:
    run(tmp_path, "--profile", "--rounds", "2")
    ops = {row["op"]: row for row in json.loads((tmp_path / "overhead_profile.json").read_text())["ops"]}
    # Both steps run the compiled CPU kernel once per block; only the adaptive one runs the threshold network.
    kernel = ops["adaptive_contrastive::cpu_hard_rows"]
    assert kernel["keep_calls"] == kernel["adaptive_calls"] > 0
    assert ops["aten::addmm"]["keep_calls"] == 0 < ops["aten::addmm"]["adaptive_calls"]
    assert "| op | keep: calls |" in (tmp_path / "overhead_profile.md").read_text()
