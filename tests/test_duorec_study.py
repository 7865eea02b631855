"""The synthetic regime study (examples/duorec/study.py) on a tiny grid: runs, compact results with per-user
ranks, the paired table and the figure, and resuming without rerunning anything."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import study  # noqa: E402
import summarize  # noqa: E402


def test_committed_study_is_complete_and_consistent() -> None:
    """Every run of the committed study is there, and its table was built from them."""
    if not (study.RESULTS / "table.md").is_file():
        pytest.skip("no committed study")
    found = study.load(study.RESULTS)
    assert set(found) == set(study.all_runs())
    for run, result in found.items():
        assert result["config"]["seed"] == run.seed and len(result["test_ranks"]) == result["dataset"]["users"]
        ranks = np.asarray(result["test_ranks"])
        assert study.compare.per_user(ranks, "NDCG@10").mean() == pytest.approx(result["test"]["NDCG@10"], abs=1e-9)
    text, _ = study.table(found)
    assert (study.RESULTS / "table.md").read_text() == text


def test_tiny_study_runs_reports_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(study, "DATA", ["--synthetic-users", "200"])
    monkeypatch.setattr(study, "REGIMES", {"few": ["--synthetic-intents", "4"]})
    monkeypatch.setattr(study, "TAUS", (0.2,))
    monkeypatch.setattr(study, "SEEDS", (0, 1))
    monkeypatch.setattr(
        study, "COMMON", ["--similarity", "cos", "--epochs", "2", "--max-steps", "2", "--batch-size", "32"]
    )
    monkeypatch.setattr(study, "METHODS", {m: study.METHODS[m] for m in ("sasrec", "keep", "attract", "oracle")})
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    argv = ["--results", str(results), "--scratch", str(scratch), "--jobs", "2"]
    study.main(argv)
    assert len(list(results.rglob("results.json"))) == len(study.all_runs()) == 8
    one = json.loads((results / "few" / "attract-t0.2-s1" / "results.json").read_text())
    assert one["config"]["synthetic_intents"] == 4 and one["config"]["temperature"] == 0.2
    assert len(one["test_ranks"]) == one["dataset"]["users"] and "probe" not in one["history"][0]
    assert 0.0 <= one["history"][-1]["train"]["fn_recall"] <= 1.0
    oracle = json.loads((results / "few" / "oracle-t0.2-s0" / "results.json").read_text())
    # The oracle flags the batch's same-intent pairs; with us_x views a same-target partner can belong to another
    # intent, so against the intents of the rows actually compared it is near, not exactly, 1.
    assert oracle["history"][-1]["train"]["fn_precision"] > 0.85 and oracle["history"][-1]["train"]["fn_recall"] > 0.85

    table = (results / "table.md").read_text()
    assert "### few" in table and "| 0.2 | attract | 0,1 |" in table and "| – | sasrec | 0,1 |" in table
    summary = json.loads((results / "summary.json").read_text())
    versus = summary["few/attract/0.2"]["vs_keep"]
    assert versus["seeds"] == [0, 1] and versus["ci95"][0] <= versus["gap"] <= versus["ci95"][1]
    assert versus["gap"] == pytest.approx(np.mean(versus["gaps"]))
    assert (results / "study.png").stat().st_size > 1000
    # The compact results are still run results the summary tool reads.
    groups, unfinished = summarize.group_runs(summarize.load_runs([results]))
    assert not unfinished and sum(len(g.runs) for g in groups) == 8

    capsys.readouterr()
    study.main(argv)  # resumes: everything is there, nothing runs
    assert "0 to run" in capsys.readouterr().out
