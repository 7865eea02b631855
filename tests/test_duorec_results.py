"""The example's result tools: the seed-averaged table (summarize.py) and the paired bootstrap (compare.py)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import compare  # noqa: E402
import summarize  # noqa: E402
import train  # noqa: E402

RESULTS = EXAMPLE / "results"


def fake_run(folder: Path, seed: int, ndcg: float, **config: object) -> None:
    """A finished run's results.json holding only what the summary reads."""
    base = vars(train.parse_args(["--dataset", "beauty", "--seed", str(seed), "--epochs", "10"]))
    base.update(config)
    metrics = {m: ndcg for m in summarize.METRICS}
    folder.mkdir(parents=True)
    history = [{"epoch": e, "valid": {"NDCG@10": ndcg * e / 10}} for e in range(1, 11)]
    results = {"config": base, "best_epoch": 7, "epoch_time_s": 150.0, "epochs_done": 10, "test": metrics}
    results["history"] = history
    (folder / "results.json").write_text(json.dumps(results))


def test_summary_averages_seeds_and_splits_configurations(tmp_path: Path) -> None:
    fake_run(tmp_path / "a0", 0, 0.040, loss="adaptive")
    fake_run(tmp_path / "a1", 1, 0.044, loss="adaptive")
    fake_run(tmp_path / "a2", 2, 0.042, loss="adaptive", out="elsewhere", threads=2)  # bookkeeping only
    fake_run(tmp_path / "soft", 0, 0.030, loss="adaptive", mask="soft")
    fake_run(tmp_path / "short", 0, 0.020, loss="adaptive", epochs=6)
    fake_run(tmp_path / "duo", 0, 0.035, loss="duorec", similarity="dot", mask="soft")  # mask: ignored by DuoRec
    fake_run(tmp_path / "sas", 0, 0.030, loss="none", similarity="dot")  # similarity: ignored by SASRec
    fake_run(tmp_path / "sas1", 1, 0.032, loss="none", similarity="cos")
    groups, unfinished = summarize.group_runs(summarize.load_runs([tmp_path]))
    assert unfinished == []
    assert [g.config["loss"] for g in groups] == ["none", "duorec", "adaptive", "adaptive", "adaptive"]
    by_label = {summarize.label(g.config): g for g in groups}
    main = by_label["AdaptiveRec (us_x, attract, hard, set, cos), ≤10 epochs"]
    assert main.seeds == [0, 1, 2]
    mean, std = summarize.mean_std(main.values("NDCG@10"))
    assert mean == pytest.approx(0.042) and std == pytest.approx(0.002)
    assert by_label["SASRec, ≤10 epochs"].seeds == [0, 1]
    assert "AdaptiveRec (us_x, attract, soft, set, cos), ≤10 epochs" in by_label
    assert "AdaptiveRec (us_x, attract, hard, set, cos), ≤6 epochs" in by_label

    table = summarize.markdown(groups)
    assert "| AdaptiveRec (us_x, attract, hard, set, cos), ≤10 epochs | 0, 1, 2 | 0.0420 ± 0.0020 |" in table
    assert "| DuoRec (us_x, dot), ≤10 epochs | 0 | 0.0350 |" in table  # one seed: no ±
    assert "*0.0427*" in table and "*0.0443*" in table  # the published numbers for Beauty
    assert "*0.0427*" not in summarize.markdown(groups, published=False)


def test_summary_lists_runs_in_progress_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fake_run(tmp_path / "done", 0, 0.04, loss="adaptive")
    fake_run(tmp_path / "going", 1, 0.05, loss="adaptive")
    going = json.loads((tmp_path / "going" / "results.json").read_text())
    del going["test"]
    (tmp_path / "going" / "results.json").write_text(json.dumps(going))
    text = summarize.main([str(tmp_path), "--plot", str(tmp_path / "curves.png")])
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert "0.0400 |" in text and "0.0500" not in text.split("In progress")[0]
    assert "In progress" in text and "going" in text
    with pytest.raises(SystemExit, match="no such folder"):
        summarize.main([str(tmp_path / "missing")])


def test_committed_results_are_summarised() -> None:
    """Every results.json committed under examples/duorec/results is a finished run the summary can read."""
    runs = summarize.load_runs([RESULTS]) if RESULTS.is_dir() else []
    if not runs:
        pytest.skip("no committed results")
    groups, unfinished = summarize.group_runs(runs)
    assert unfinished == []
    for group in groups:
        for run in group.runs:
            assert run["best_epoch"] <= run["epochs_done"] <= run["config"]["epochs"]
            assert all(0.0 <= run["test"][m] <= 1.0 for m in summarize.METRICS)


def test_per_user_metrics_match_the_evaluation() -> None:
    ranks = np.array([0, 1, 4, 9, 10, 500])
    from evaluate import ranking_metrics

    expected = ranking_metrics(torch.as_tensor(ranks), ks=(5, 10))
    for metric in ("NDCG@5", "NDCG@10", "Recall@5", "Recall@10", "MRR@5", "MRR@10"):
        assert compare.per_user(ranks, metric).mean() == pytest.approx(expected[metric], abs=1e-12)


def test_runs_recorded_before_a_setting_existed_share_the_row_of_its_default(tmp_path: Path) -> None:
    fake_run(tmp_path / "old", 0, 0.040, loss="adaptive")
    fake_run(tmp_path / "new", 1, 0.042, loss="adaptive", overwrite=True)
    fake_run(tmp_path / "nodrop", 2, 0.030, loss="adaptive", dropout=0.0)
    old = json.loads((tmp_path / "old" / "results.json").read_text())
    for key in ("dropout", "overwrite"):  # written before these flags existed
        del old["config"][key]
    (tmp_path / "old" / "results.json").write_text(json.dumps(old))
    groups, _ = summarize.group_runs(summarize.load_runs([tmp_path]))
    assert sorted(g.seeds for g in groups) == [[0, 1], [2]]


def test_paired_bootstrap() -> None:
    rng = np.random.default_rng(1)
    a = rng.random(4000)
    same = compare.paired_bootstrap(a, a.copy(), resamples=200)
    assert same["gap"] == 0.0 and same["ci95_low"] == same["ci95_high"] == 0.0 and same["p_not_ahead"] == 1.0
    b = a - 0.01 + rng.normal(0, 0.05, size=a.shape)  # ahead by 0.01, with user-level noise
    ahead = compare.paired_bootstrap(a, b, resamples=400, seed=3)
    # Standard error of the mean gap is 0.05 / sqrt(4000) ≈ 0.0008: the interval brackets the gap at ±2 s.e.
    assert ahead["ci95_low"] < ahead["gap"] < ahead["ci95_high"]
    assert ahead["ci95_high"] - ahead["ci95_low"] == pytest.approx(4 * 0.05 / math.sqrt(4000), rel=0.25)
    assert ahead["p_not_ahead"] == 0.0
    assert compare.paired_bootstrap(b, a, resamples=400, seed=3)["p_not_ahead"] == 1.0
    with pytest.raises(ValueError, match="equal"):
        compare.paired_bootstrap(a, a[:-1])


def test_compare_rescoring_reproduces_the_stored_test_metrics(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    tiny = ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "3", "--quiet", "--device", "cpu"]
    first = train.main([*tiny, "--epochs", "2", "--out", str(tmp_path / "a")])
    second = train.main([*tiny, "--epochs", "2", "--loss", "duorec", "--out", str(tmp_path / "b")])
    result = compare.main(
        [str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "100", "--json", str(tmp_path / "g.json")]
    )
    for metric in compare.METRICS:
        assert result[metric]["a"] == pytest.approx(first["test"][metric], abs=1e-12)
        assert result[metric]["b"] == pytest.approx(second["test"][metric], abs=1e-12)
    assert json.loads((tmp_path / "g.json").read_text())["users"] == result["users"] > 0
    with pytest.raises(SystemExit, match="missing.*not found"):
        compare.main([str(tmp_path / "a"), str(tmp_path / "missing")])


def test_every_figure_is_titled_with_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each figure carries the run's title on top, so a PNG copied out of its folder still says what it shows."""
    import plots

    run = train.main(
        ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "3", "--quiet", "--device", "cpu"]
        + ["--epochs", "2", "--warmup-epochs", "1", "--out", str(tmp_path)]
    )
    titles: dict[str, str] = {}
    save = plots._save

    def keep_title(fig, path):  # type: ignore[no-untyped-def]
        titles[Path(path).name] = fig._suptitle.get_text() if fig._suptitle is not None else ""
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", keep_title)
    plots.plot_all(run["history"], tmp_path, title="beauty · adaptive · us_x")
    assert titles and set(titles.values()) == {"beauty · adaptive · us_x"}, titles


def recorded_calls(script: Path, tmp_path: Path) -> list[list[str]]:
    """The command lines `script` runs, with python replaced by a stub that records its arguments (nothing trains)."""
    import os
    import shlex
    import shutil
    import subprocess

    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    stub = tmp_path / "bin" / "python"
    stub.parent.mkdir()
    log = tmp_path / "calls.txt"
    out = shlex.quote(str(log))
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\t" "$a"; done >> {out}\necho >> {out}\n')
    stub.chmod(0o755)
    env = {**os.environ, "PATH": f"{stub.parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([bash, str(script)], cwd=tmp_path, env=env, check=True, capture_output=True)
    return [line.rstrip("\t").split("\t") for line in log.read_text().splitlines()]


REPRODUCE_SCRIPTS = sorted(RESULTS.glob("*/reproduce*.sh"))


def test_every_dataset_has_a_reproduce_script() -> None:
    names = {f"{script.parent.name}/{script.name}" for script in REPRODUCE_SCRIPTS}
    assert {
        "beauty/reproduce.sh",
        "beauty/reproduce_like.sh",
        "beauty/reproduce_cl4srec.sh",
        "ml-1m/reproduce.sh",
    } <= names


@pytest.mark.parametrize("script", REPRODUCE_SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reproduce_scripts_run_valid_command_lines(script: Path, tmp_path: Path) -> None:
    """Every command of each committed reproduce*.sh parses with the example's own argument parsers."""
    dataset = script.parent.name
    calls = recorded_calls(script, tmp_path)
    scripts = {Path(call[0]).name for call in calls}
    assert "train.py" in scripts and "summarize.py" in scripts
    trained = 0
    for call in calls:
        if Path(call[0]).name == "train.py":
            args = train.parse_args(call[1:])
            assert args.dataset == dataset and (args.resume or args.stats_only)
            trained += not args.stats_only
    assert trained >= 3


def test_cl4srec_script_pairs_the_two_losses_at_the_same_settings(tmp_path: Path) -> None:
    """The CL4SRec comparison: plain InfoNCE against AdaptiveInfoNCE on CL4SRec's views, the same similarity,
    temperature, budget and seeds, at least two seeds, each pair compared by the paired bootstrap."""
    calls = recorded_calls(RESULTS / "beauty" / "reproduce_cl4srec.sh", tmp_path)
    runs = [train.parse_args(call[1:]) for call in calls if Path(call[0]).name == "train.py"]
    assert {(a.loss, a.seed) for a in runs} == {(loss, s) for loss in ("duorec", "adaptive") for s in (0, 1)}
    settings = {(a.contrast, a.similarity, a.temperature, a.lmd, a.epochs, a.batch_size) for a in runs}
    assert len(settings) == 1 and next(iter(settings))[:2] == ("cl4srec", "cos")  # one setting for all four runs
    assert all(a.out.startswith("runs/beauty/cl4srec-") for a in runs)
    compared = [call[1:3] for call in calls if Path(call[0]).name == "compare.py"]
    assert sorted(compared) == [
        [f"runs/beauty/cl4srec-adaptive-{s}", f"runs/beauty/cl4srec-duorec-{s}"] for s in (0, 1)
    ]
