"""benchmarks/run_gpu.sh's logic without a GPU: with DRY_RUN=1 every step of the GPU run (the
float64 check, the kernel-by-kernel timings at two sizes, the GPU test selection, the sweep) runs
on CPU in Triton's interpreter at tiny sizes, in the GPU run's order, and leaves its JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")


def test_run_gpu_dry_run(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OUT")}
    env.update(DRY_RUN="1", GPU_BUDGET_S="400", PYTHON=env.get("PYTHON", "python"))
    proc = subprocess.run(
        ["bash", "benchmarks/run_gpu.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    log = (tmp_path / "run_gpu.log").read_text()
    assert proc.returncode == 0, proc.stderr[-2000:] + log[-2000:]
    steps = [line.split("start ")[1].split(" ")[0] for line in log.splitlines() if "] start " in line]
    assert steps == ["check", "n16384", "n262144", "tests_gpu", "machinery", "sweep"], log
    assert "timed out" not in log, log

    check = json.loads((tmp_path / "check" / "check.json").read_text())
    assert {(r["dtype"], r["mask"]) for r in check} == {
        (d, m) for d in ("float32", "float16") for m in ("hard", "soft")
    }
    assert all(r["pass"] for r in check), check

    times = json.loads((tmp_path / "n16384" / "kernel_times.json").read_text())["records"]
    fused = {(r["variant"], r["kernel"]): r["status"] for r in times if r["method"] == "triton"}
    for variant in ("float32-attract-hard", "float16-attract-labels"):
        for kernel in ("fwd", "bwd_dq", "bwd_dk", "fwd+bwd"):
            assert fused[(variant, kernel)] == "ok", (variant, kernel, times)
    assert any(r["method"] == "reference" and r["status"] == "ok" for r in times), times
    assert (tmp_path / "n262144" / "kernel_times.json").exists()

    assert "test_gpu_against_float64_at_scale" in (tmp_path / "tests_gpu.log").read_text()
    machinery = json.loads((tmp_path / "machinery.json").read_text())["results"]
    assert machinery and all(r["status"] == "ok" for r in machinery.values()), machinery
    sweep = json.loads((tmp_path / "sweep" / "bench_loss.json").read_text())
    assert {(r["method"], r["N"]) for r in sweep if r["status"] == "ok"} >= {
        ("reference_attract", 32),
        ("triton_attract", 32),
    }
    assert "## Step log" in (tmp_path / "SUMMARY.md").read_text()
