"""Every Python block of the README and the docs runs on its own, in a fresh interpreter.

A reader copies one block at a time, so each block must import what it uses and run without the
blocks around it. Blocks that cannot run here carry a visible marker with the reason on the line
above their fence (`<!-- snippet-test: skip, needs a CUDA GPU ... -->`); they are reported as skipped.
The blocks run two at a time, one thread each, from an empty temporary folder, against this
checkout's package.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _markdown import REPO, USER_MARKDOWN, CodeBlock, code_blocks

BLOCKS = [block for path in USER_MARKDOWN for block in code_blocks(path) if block.language == "python"]
TIMEOUT_S = 300


def run_block(block: CodeBlock, folder: Path) -> subprocess.CompletedProcess[str]:
    script = folder / f"{block.path.stem}_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("TRITON_INTERPRET", None)  # as a user runs it
    env.setdefault("OMP_NUM_THREADS", "1")  # two blocks at a time share the cores
    command = [sys.executable, script.name]
    try:
        return subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired as error:  # reported by this block's test, the others still run
        return subprocess.CompletedProcess(command, -1, str(error.stdout or ""), f"timed out after {TIMEOUT_S} s")


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, subprocess.CompletedProcess[str]]:
    runnable = [block for block in BLOCKS if block.skip_reason is None]
    folders = [tmp_path_factory.mktemp("snippet") for _ in runnable]
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = pool.map(run_block, runnable, folders)
        return {block.name: result for block, result in zip(runnable, done, strict=True)}


def test_the_readme_and_docs_have_python_blocks() -> None:
    names = {block.path.name for block in BLOCKS}
    assert {"README.md", "quickstart.md", "modes.md", "threshold.md"} <= names
    assert len(BLOCKS) >= 12


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_block_runs_on_its_own(block: CodeBlock, results: dict[str, subprocess.CompletedProcess[str]]) -> None:
    if block.skip_reason is not None:
        pytest.skip(f"marked in the docs: {block.skip_reason}")
    result = results[block.name]
    assert result.returncode == 0, f"{block.name} failed:\n{result.stdout}\n{result.stderr}"
    assert "Traceback" not in result.stderr
    assert result.stdout.strip(), f"{block.name} printed nothing: every snippet shows its result"


def test_skip_markers_say_why() -> None:
    """A marker without a block under it, or a skipped block without a reason, is a mistake."""
    for path in USER_MARKDOWN:
        text = path.read_text(encoding="utf-8")
        markers = text.count("<!-- snippet-test: skip")
        skipped = [block for block in code_blocks(path) if block.skip_reason is not None]
        assert markers == len(skipped), f"{path.name}: a skip marker must sit on the line above a fence"
        for block in skipped:
            assert block.language == "python" and len(block.skip_reason or "") > 10, block.name
