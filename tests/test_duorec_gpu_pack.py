"""CPU smoke test of the Beauty GPU pack (examples/duorec/results/beauty/run_gpu.sh): the same script, on tiny
synthetic data with two steps per epoch, runs its five configurations at once, writes every results.json and
prints the table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "duorec" / "results" / "beauty" / "run_gpu.sh"
RUNS = {"sasrec", "duorec-cos", "adaptive", "duorec-same-target", "authors"}
PAIRS = [
    ("adaptive", "duorec-cos"),
    ("duorec-same-target", "duorec-cos"),
    ("authors", "duorec-cos"),
    ("duorec-cos", "sasrec"),
]


def test_gpu_pack_runs_end_to_end_on_cpu(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    bin_dir = tmp_path / "bin"  # `python` in the script is this interpreter
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "OUT": str(tmp_path / "out"),
        "DEVICE": "cpu",
        "THREADS": "1",
        "BUDGET": "600",
        "DATA_ARGS": "--dataset synthetic --synthetic-users 200",
        "EXTRA": "--max-steps 2 --epochs 2 --batch-size 32",
    }
    done = subprocess.run([bash, str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    found = {path.parent.name: json.loads(path.read_text()) for path in (tmp_path / "out").glob("*/results.json")}
    assert set(found) == RUNS
    for name, result in found.items():
        assert result["status"] == "finished" and result["epochs_done"] == 2, name
        assert result["config"]["time_budget"] == 600 and 0.0 <= result["test"]["NDCG@10"] <= 1.0
    assert found["authors"]["config"]["recipe"] == "authors"
    assert found["authors"]["config"]["threshold_arch"] == "authors"
    assert found["duorec-same-target"]["config"]["known_positives"] == "same-target"
    assert {found[n]["config"]["similarity"] for n in ("duorec-cos", "adaptive", "duorec-same-target")} == {"cos"}
    table = (tmp_path / "out" / "table.md").read_text()
    assert table.count("\n| ") >= len(RUNS) and "authors recipe" in table and "same-target positives" in table
    assert "0 failed" in done.stdout
    gaps = {path.name for path in (tmp_path / "out" / "gaps").glob("*.json")}
    assert "== authors vs duorec-cos" in done.stdout and "NDCG@10: a " in done.stdout
    assert gaps == {f"{a}-vs-{b}.json" for a, b in PAIRS}
    assert not list((tmp_path / "out").rglob("last.pt"))  # --no-checkpoints: only model-only best.pt files
