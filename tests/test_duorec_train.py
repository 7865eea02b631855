"""Smoke tests of the DuoRec example's command line (examples/duorec/train.py): a few steps on synthetic data."""

from __future__ import annotations

import json
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import train  # noqa: E402

TINY = ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "3", "--quiet", "--device", "cpu"]
METRICS = {f"{m}@{k}" for m in ("NDCG", "MRR", "Recall") for k in (5, 10, 20)}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny batches gain nothing from threads, and spinning OpenMP threads are slow on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(tmp_path: Path, *extra: str) -> dict:
    return train.main([*TINY, "--out", str(tmp_path), *extra])


def test_adaptive_training_writes_results_plots_and_checkpoints(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = run(tmp_path, "--epochs", "2")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["loss"] == "adaptive" and saved["config"]["contrast"] == "us_x"
    assert saved["config"]["similarity"] == "cos"
    assert set(saved["dataset"]) == {"users", "items", "interactions"}
    assert len(saved["history"]) == 2
    assert METRICS <= set(saved["test"]) and METRICS <= set(saved["valid"])
    assert {"uni100/NDCG@10", "pop100/NDCG@10"} <= set(saved["test"])
    assert saved["test"] == results["test"]
    first, second = saved["history"]
    # Epoch 1 is the warm-up (plain InfoNCE while k_stat is collected); epoch 2 uses the learned thresholds.
    assert first["train"]["k_stat"] is not None and "fn_precision" not in first["train"]
    for key in ("k_learn", "k_stat", "k_bar", "fn_precision", "fn_recall", "fn_base_rate"):
        assert key in second["train"], key
    assert 0.0 <= second["train"]["fn_recall"] <= 1.0
    for key in ("hist_edges", "hist_counts", "alignment", "uniformity", "k_stat"):
        assert key in second["probe"], key
    assert len(second["probe"]["hist_edges"]) == len(second["probe"]["hist_counts"]) + 1
    for name in (
        "training.png",
        "thresholds.png",
        "similarities.png",
        "alignment_uniformity.png",
        "false_negatives.png",
    ):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()
    out = capsys.readouterr().out
    assert "NDCG@10" in out and "uni100" in out


def test_resume_continues_exactly_where_it_stopped(tmp_path: Path) -> None:
    straight = run(tmp_path / "straight", "--epochs", "2", "--loss", "duorec")
    run(tmp_path / "split", "--epochs", "1", "--loss", "duorec")
    resumed = run(tmp_path / "split", "--epochs", "2", "--loss", "duorec", "--resume")
    assert len(resumed["history"]) == 2
    assert resumed["history"][1]["train"]["loss"] == pytest.approx(straight["history"][1]["train"]["loss"], rel=1e-5)
    assert resumed["test"]["NDCG@10"] == pytest.approx(straight["test"]["NDCG@10"], rel=1e-4)
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and state["loss_fn"]["epochs_done"] == 2


def test_resume_refuses_different_settings(tmp_path: Path) -> None:
    run(tmp_path, "--epochs", "1", "--loss", "duorec")
    with pytest.raises(SystemExit, match="different settings"):
        run(tmp_path, "--epochs", "2", "--loss", "duorec", "--lmd", "0.5", "--resume")
    with pytest.raises(SystemExit, match="synthetic_intents"):  # the generator's knobs make other data
        run(tmp_path, "--epochs", "2", "--loss", "duorec", "--synthetic-intents", "8", "--resume")


def test_resume_of_a_real_dataset_ignores_the_synthetic_knobs(tmp_path: Path) -> None:
    """A run on a data file resumes even when its checkpoint was written before a synthetic-data knob existed
    (or with another value of it): those knobs change nothing on a real dataset."""
    items = [f"i{j}" for j in range(12)]
    data = tmp_path / "Beauty.txt"  # every user has 8 of the 12 items: the 5-core filter keeps them all
    data.write_text("".join(f"u{u} {' '.join(items[u % 4 : u % 4 + 8])}\n" for u in range(40)))
    out = tmp_path / "run"
    common = ["--dataset", "beauty", "--data-path", str(data), "--loss", "duorec", "--batch-size", "16"]
    train.main([*common, "--epochs", "1", "--max-steps", "2", "--quiet", "--device", "cpu", "--out", str(out)])
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"]["synthetic_markov"] = None  # as written by a version without --synthetic-markov
    torch.save(state, out / "last.pt")
    resumed = train.main(
        [*common, "--epochs", "2", "--max-steps", "2", "--quiet", "--device", "cpu", "--out", str(out), "--resume"]
    )
    assert len(resumed["history"]) == 2


@pytest.mark.parametrize(
    "extra",
    [
        ("--loss", "none"),
        ("--loss", "duorec", "--contrast", "un"),
        (
            "--loss",
            "adaptive",
            "--contrast",
            "su",
            "--false-negatives",
            "drop",
            "--mask",
            "soft",
            "--warmup-epochs",
            "0",
        ),
        (
            "--loss",
            "adaptive",
            "--threshold-arch",
            "flat",
            "--false-negatives",
            "relabel",
            "--similarity",
            "dot",
            "--warmup-epochs",
            "0",
            "--no-bucketing",
        ),
    ],
)
def test_every_loss_and_view_runs(tmp_path: Path, extra: tuple[str, ...]) -> None:
    results = run(tmp_path, "--epochs", "1", *extra)
    assert results["config"]["loss"] == extra[1]
    assert all(0.0 <= results["test"][m] <= 1.0 for m in METRICS)
    assert torch.isfinite(torch.tensor(results["history"][0]["train"]["loss"]))


def test_stats_only_prints_json_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stats = train.main(["--synthetic-users", "300", "--stats-only", "--out", str(tmp_path / "run")])
    printed = json.loads(capsys.readouterr().out.strip())
    assert printed == stats and set(printed) == {"users", "items", "interactions"}
    assert not (tmp_path / "run").exists()


def test_missing_data_and_offline_download_fail_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import urllib.error

    import data

    monkeypatch.setenv("ADAPTIVE_CONTRASTIVE_DATA", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(data.urllib.request, "urlopen", offline)
    with pytest.raises(SystemExit, match="could not download ml-1m"):
        train.main(["--dataset", "ml-1m", "--download", "--stats-only"])
    with pytest.raises(SystemExit, match="no ml-1m file found"):
        train.main(["--dataset", "ml-1m", "--data-path", str(tmp_path), "--stats-only"])


def test_oracle_known_positives_flag_exactly_the_same_intent_pairs(tmp_path: Path) -> None:
    """`--known-positives intent` with labels alone: with `un` views (both views of one user) the
    flagged pairs are exactly the same-intent pairs, so precision and recall are 1 by construction."""
    results = run(
        tmp_path, "--loss", "duorec", "--similarity", "cos", "--contrast", "un", "--known-positives", "intent"
    )
    assert results["config"]["false_negatives"] == "drop"
    train_stats = results["history"][0]["train"]
    assert train_stats["fn_precision"] == pytest.approx(1.0)
    assert train_stats["fn_recall"] == pytest.approx(1.0)
    assert train_stats["known_fraction"] == pytest.approx(train_stats["fn_base_rate"], rel=0.05)


def test_same_target_known_positives_reach_the_adaptive_loss(tmp_path: Path) -> None:
    results = run(tmp_path, "--loss", "adaptive", "--known-positives", "same-target", "--epochs", "2")
    first, second = (h["train"] for h in results["history"])
    # same-target pairs are rare in a batch of 32 but each us_x row's partner shares its target,
    # so the known share is recorded in every epoch, warm-up included (labels need no threshold)
    assert "known_fraction" in first and "known_fraction" in second
    assert results["history"][0]["mode"] == "attract"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "beauty", "--known-positives", "intent"], "needs the true intents"),
        (["--loss", "none", "--known-positives", "same-target"], "needs a contrastive loss"),
    ],
)
def test_known_positives_bad_combinations(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_warnings_of_the_loss_are_kept_in_the_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the loss warns at the end of an epoch (e.g. that the threshold flagged most candidates all
    epoch) is printed and stored with that epoch's diagnostics."""
    end_epoch = train.AdaptiveInfoNCE.end_epoch

    def warning_end_epoch(self: train.AdaptiveInfoNCE) -> None:
        warnings.warn(f"epoch {self.epoch + 1} collapsed", UserWarning, stacklevel=2)
        end_epoch(self)

    monkeypatch.setattr(train.AdaptiveInfoNCE, "end_epoch", warning_end_epoch)
    saved = run(tmp_path, "--epochs", "2", "--mask", "soft")
    assert [h["train"]["warnings"] for h in saved["history"]] == [["epoch 1 collapsed"], ["epoch 2 collapsed"]]
    assert saved["config"]["mask_gradient"] == "labels"
