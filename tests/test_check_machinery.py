"""A dry run on the CPU of benchmarks/check_machinery.py, the GPU script's sync/autocast/compile checks.

It runs in a subprocess: the script imports torch._dynamo, which imports Triton, and Triton fixes
its interpreter mode at its first import in a process (see test_triton_kernel.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "check_machinery.py"


def test_machinery_checks_run_and_pass_on_cpu(tmp_path: Path) -> None:
    out = tmp_path / "machinery.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--out", str(out)],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    results = report["results"]
    assert set(results) == {"reference/no_sync", "reference/autocast", "reference/compile"}
    assert all(r["status"] == "ok" for r in results.values())
    assert results["reference/compile"]["graph_breaks"] == 0
    assert results["reference/autocast"]["bfloat16"]["ok"]
    assert results["reference/no_sync"]["labels"]["mode"] == "attract"
