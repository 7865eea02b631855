"""CL4SRec's views in the DuoRec example's trainer (train.py --contrast cl4srec): a few steps of each loss on
synthetic data, their diagnostics, --resume, and the result tools (compare.py, summarize.py) on their runs."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import compare  # noqa: E402
import summarize  # noqa: E402
import train  # noqa: E402

TINY = ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "3", "--quiet", "--device", "cpu"]
CL4SREC = ["--contrast", "cl4srec", "--similarity", "cos", "--epochs", "2"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two-epoch CL4SRec runs with plain InfoNCE and with AdaptiveInfoNCE, shared by the tests below."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cl4srec")
    folders = {loss: root / loss for loss in ("duorec", "adaptive")}
    for loss, folder in folders.items():
        train.main([*TINY, *CL4SREC, "--loss", loss, "--out", str(folder)])
    torch.set_num_threads(threads)
    return folders


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def test_each_loss_trains_with_cl4srec_views(runs: dict[str, Path]) -> None:
    for loss, folder in runs.items():
        run = results(folder)
        config = run["config"]
        assert config["loss"] == loss and config["contrast"] == "cl4srec"
        assert (config["item_crop"], config["item_mask"], config["item_reorder"]) == (0.6, 0.3, 0.6)
        assert config["aug_pairs"] == "distinct"
        assert len(run["history"]) == 2 and run["status"] == "finished"
        for epoch in run["history"]:
            assert torch.isfinite(torch.tensor([epoch["train"]["loss"], epoch["train"]["cl"]])).all()
        assert 0.0 <= run["test"]["NDCG@10"] <= 1.0
        state = torch.load(folder / "best.pt", weights_only=False)
        n_items = run["dataset"]["items"]
        assert state["model"]["item_embedding.weight"].shape[0] == n_items + 2  # padding, items, [mask]


def test_adaptive_diagnostics_and_similarity_histograms_work_for_cl4srec(runs: dict[str, Path]) -> None:
    """Both views of a row come from the same user, so the intents label the candidates as for ``un``; the
    probe (the similarity histogram of the paper's Fig. 2) uses the same augmentations every epoch."""
    run = results(runs["adaptive"])
    warmup, adaptive = run["history"]
    assert "fn_precision" not in warmup["train"]  # the warm-up epoch runs plain InfoNCE
    for key in ("k_learn", "k_stat", "fn_precision", "fn_recall", "fn_base_rate"):
        assert key in adaptive["train"], key
    assert 0.0 < adaptive["train"]["fn_base_rate"] < 1.0  # same-intent candidates exist and are not everything
    for epoch in run["history"]:
        probe = epoch["probe"]
        assert len(probe["hist_edges"]) == len(probe["hist_counts"]) + 1
        assert sum(probe["hist_counts"]) == 64 * 62  # 2B rows, 2B - 2 candidates each (B = 32)
    assert (runs["adaptive"] / "similarities.png").stat().st_size > 1000
    assert (runs["adaptive"] / "false_negatives.png").stat().st_size > 1000


def test_resume_continues_cl4srec_exactly(runs: dict[str, Path], tmp_path: Path) -> None:
    """The augmentations come from the epoch's seeded generator, so one epoch plus a resumed one equals two."""
    args = [*TINY, "--contrast", "cl4srec", "--similarity", "cos", "--loss", "duorec", "--out", str(tmp_path)]
    train.main([*args, "--epochs", "1"])
    resumed = train.main([*args, "--epochs", "2", "--resume"])
    straight = results(runs["duorec"])
    assert resumed["history"][1]["train"]["loss"] == pytest.approx(straight["history"][1]["train"]["loss"], rel=1e-5)
    assert resumed["test"]["NDCG@10"] == pytest.approx(straight["test"]["NDCG@10"], rel=1e-4)
    with pytest.raises(SystemExit, match="different settings"):
        train.main([*args, "--epochs", "2", "--item-crop", "0.5", "--resume"])


def test_compare_and_summarize_read_cl4srec_runs(runs: dict[str, Path], tmp_path: Path) -> None:
    gap = compare.main([str(runs["adaptive"]), str(runs["duorec"]), "--resamples", "50"])
    for metric in compare.METRICS:  # the rescored best checkpoints (with their [mask] row) give the stored metrics
        assert gap[metric]["a"] == pytest.approx(results(runs["adaptive"])["test"][metric], abs=1e-12)
        assert gap[metric]["b"] == pytest.approx(results(runs["duorec"])["test"][metric], abs=1e-12)
    groups, unfinished = summarize.group_runs(summarize.load_runs(list(runs.values())))
    assert unfinished == [] and len(groups) == 2
    assert [summarize.label(g.config) for g in groups] == [
        "CL4SRec (cos), ≤2 epochs",
        "AdaptiveRec (cl4srec, attract, hard, set, cos), ≤2 epochs",
    ]


def test_cl4srec_flags_are_checked() -> None:
    args = train.parse_args(["--contrast", "cl4srec", "--item-mask", "0.5", "--aug-pairs", "independent"])
    assert (args.item_crop, args.item_mask, args.item_reorder, args.aug_pairs) == (0.6, 0.5, 0.6, "independent")
    other = train.parse_args(["--contrast", "us_x"])
    assert (other.item_crop, other.item_mask, other.item_reorder, other.aug_pairs) == (None,) * 4
    with pytest.raises(SystemExit):
        train.parse_args(["--contrast", "us_x", "--item-crop", "0.5"])
    with pytest.raises(SystemExit):
        train.parse_args(["--contrast", "cl4srec", "--item-reorder", "1.5"])


def test_summary_keeps_older_runs_without_the_cl4srec_settings_together() -> None:
    """Runs written before the CL4SRec flags existed have no such keys; the same configuration with the keys
    at None (any other view) is the same row."""
    new = vars(train.parse_args(["--dataset", "beauty", "--epochs", "10"]))
    old = {k: v for k, v in new.items() if k not in summarize.CL4SREC_SETTINGS}
    assert summarize.configuration(new) == summarize.configuration(old)
    cl4srec = vars(train.parse_args(["--dataset", "beauty", "--epochs", "10", "--contrast", "cl4srec"]))
    crop = vars(
        train.parse_args(["--dataset", "beauty", "--epochs", "10", "--contrast", "cl4srec", "--item-crop", "0.2"])
    )
    assert summarize.configuration(cl4srec) != summarize.configuration(crop)
    assert summarize.label({**cl4srec, "loss": "duorec", "temperature": 0.2}) == "CL4SRec (cos, τ=0.2), ≤10 epochs"
