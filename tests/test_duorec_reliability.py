"""The DuoRec trainer never destroys a run, never runs code from a checkpoint, and fails in one line.

Every user-facing failure is a `SystemExit` whose code is a one-line message (the interpreter prints it
and exits with status 1); two of them are checked end to end in a subprocess, stderr and status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

for module in ("tqdm", "matplotlib"):
    pytest.importorskip(module, reason=f"the DuoRec example needs {module}: pip install -e '.[examples]'")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "duorec"
sys.path.insert(0, str(EXAMPLE))

import checkpoint  # noqa: E402
import compare  # noqa: E402
import run_folder  # noqa: E402
import train  # noqa: E402

TINY = ["--synthetic-users", "300", "--batch-size", "32", "--max-steps", "2", "--quiet", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(out: Path, *extra: str) -> dict:
    return train.main([*TINY, "--out", str(out), *extra])


def one_line_error(stop: pytest.ExceptionInfo[SystemExit]) -> str:
    message = stop.value.code
    assert isinstance(message, str), message  # exit status 1, the message on stderr
    assert "\n" not in message and message.startswith("error: "), message
    return message


class CodeExecution:
    """A pickle that, once unpickled, creates `marker`: what a crafted checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').close()",)


def crafted_checkpoint(path: Path, marker: Path) -> None:
    torch.save({"config": CodeExecution(marker), "model": {}}, path)


def subprocess_env() -> dict[str, str]:
    """The child imports this checkout's library, as the test process does."""
    import adaptive_contrastive

    library = str(Path(adaptive_contrastive.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [library, os.environ.get("PYTHONPATH")]))}


# ------------------------------------------------------------------------- row 1: no code from checkpoints


def test_checkpoints_hold_only_tensors_and_plain_values(tmp_path: Path) -> None:
    run(tmp_path, "--epochs", "1")
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name, weights_only=True)
        assert "model" in state
    assert set(train.CHECKPOINT_KEYS) <= set(torch.load(tmp_path / "last.pt", weights_only=True))


def test_resume_refuses_a_code_executing_checkpoint_without_running_it(tmp_path: Path) -> None:
    """End to end: the command exits with status 1 and one line on stderr, and the pickle's code never ran."""
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    out.mkdir()
    crafted_checkpoint(out / "last.pt", marker)
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), *TINY, "--out", str(out), "--resume"],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert not marker.exists()
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: {out / 'last.pt'} holds objects other than tensors"), lines[0]
    assert "(it would load exec)" in lines[0] and "delete it" in lines[0]


def test_compare_refuses_a_code_executing_best_checkpoint(tmp_path: Path) -> None:
    run(tmp_path / "a", "--epochs", "1")
    run(tmp_path / "b", "--epochs", "1", "--loss", "duorec")
    marker = tmp_path / "code-ran"
    crafted_checkpoint(tmp_path / "b" / "best.pt", marker)
    with pytest.raises(SystemExit) as stop:
        compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "10"])
    assert "best.pt holds objects other than tensors" in one_line_error(stop)
    assert not marker.exists()


# ------------------------------------------------------------------- row 2: a finished run is never lost


def test_an_existing_run_needs_resume_or_overwrite(tmp_path: Path) -> None:
    run(tmp_path, "--epochs", "1")
    before = {name: (tmp_path / name).read_bytes() for name in ("results.json", "last.pt", "best.pt")}
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "--epochs", "1", "--lr", "0.01")
    message = one_line_error(stop)
    assert "already holds a run (results.json, last.pt, best.pt" in message
    assert "--resume" in message and "--overwrite" in message
    assert {name: (tmp_path / name).read_bytes() for name in before} == before


def test_overwrite_replaces_the_run_and_removes_its_stale_files(tmp_path: Path) -> None:
    run(tmp_path, "--epochs", "2")  # AdaptiveRec on synthetic data: false_negatives.png exists
    assert (tmp_path / "false_negatives.png").is_file()
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "last.pt.tmp").write_bytes(b"left by an interrupt")
    results = run(tmp_path, "--epochs", "1", "--loss", "duorec", "--overwrite")
    assert not (tmp_path / "false_negatives.png").exists()  # DuoRec has no false-negative plot
    assert not (tmp_path / "last.pt.tmp").exists()
    assert (tmp_path / "notes.txt").read_text() == "mine"  # not a run file: left alone
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["loss"] == "duorec" and len(saved["history"]) == 1 == len(results["history"])
    assert sorted(saved["plots"]) == sorted(p.name for p in tmp_path.glob("*.png"))


def test_resume_without_last_checkpoint_refuses_to_overwrite_results(tmp_path: Path) -> None:
    run(tmp_path, "--epochs", "1")
    (tmp_path / "last.pt").unlink()
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "--epochs", "2", "--resume")
    assert "no last.pt to continue from" in one_line_error(stop)


def test_plot_names_are_run_files() -> None:
    import plots

    written = []
    for name in dir(plots):
        if name.startswith("plot_") and name != "plot_all":
            written.append(name.removeprefix("plot_"))
    assert {p.removesuffix(".png") for p in run_folder.PLOTS} == set(written)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--epoch", "1"], "unrecognized arguments: --epoch"),
        (["--res"], "unrecognized arguments: --res"),
        (["--resume", "--overwrite"], "pass one of them"),
        (["--dropout", "1.0"], "--dropout must be in"),
    ],
)
def test_abbreviated_and_conflicting_flags_are_refused(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        train.parse_args(argv)
    assert stop.value.code == 2  # argparse's usage error
    assert expected in capsys.readouterr().err


# ------------------------------------------------------------- row 8: damaged checkpoints, unwritable --out


def test_empty_truncated_and_foreign_checkpoints_are_one_line_errors(tmp_path: Path) -> None:
    run(tmp_path / "good", "--epochs", "1")
    whole = (tmp_path / "good" / "last.pt").read_bytes()
    cases = {
        "empty": (b"", "is empty"),
        "truncated": (whole[: len(whole) // 2], "is not a readable checkpoint"),
        "garbage": (b"hello world" * 20, "is not a readable checkpoint"),
    }
    for name, (content, expected) in cases.items():
        out = tmp_path / name
        out.mkdir()
        (out / "last.pt").write_bytes(content)
        with pytest.raises(SystemExit) as stop:
            run(out, "--epochs", "2", "--resume")
        message = one_line_error(stop)
        assert message.startswith(f"error: {out / 'last.pt'} {expected}") and "delete it" in message, message
    out = tmp_path / "foreign"
    out.mkdir()
    torch.save({"weights": torch.zeros(2)}, out / "last.pt")  # a valid file, but not the trainer's
    with pytest.raises(SystemExit) as stop:
        run(out, "--epochs", "2", "--resume")
    assert "is not a checkpoint of this trainer (no config, epoch, model" in one_line_error(stop)


def test_checkpoint_that_does_not_fit_the_model_is_a_one_line_error(tmp_path: Path) -> None:
    run(tmp_path, "--epochs", "1")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    state["model"] = {"item_embedding.weight": torch.zeros(3, 3)}
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "--epochs", "2", "--resume")
    assert "last.pt does not fit this run" in one_line_error(stop)


def test_unwritable_out_fails_before_training(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(self: train.Trainer) -> None:
        raise AssertionError("trained although --out cannot be written")

    monkeypatch.setattr(train.Trainer, "fit", no_training)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as stop:
        run(blocker / "run", "--epochs", "1")
    assert one_line_error(stop).startswith(f"error: cannot write to --out {blocker / 'run'} (")
    with pytest.raises(SystemExit) as stop:
        run(blocker, "--epochs", "1")
    assert "is a file, not a folder" in one_line_error(stop)


def test_an_unknown_device_is_a_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as stop:
        run(tmp_path, "--epochs", "1", "--device", "gpu")  # the last --device wins
    assert one_line_error(stop) == "error: --device 'gpu' is not a device: use cpu, cuda or cuda:N"


def test_a_failed_save_is_a_one_line_error_and_leaves_no_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def disk_full(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.torch, "save", disk_full)
    with pytest.raises(SystemExit) as stop:
        checkpoint.save({"x": 1}, tmp_path / "last.pt")
    assert one_line_error(stop) == (
        f"error: cannot write {tmp_path / 'last.pt'} (No space left on device): free space or pick a writable --out"
    )
    assert not any(tmp_path.iterdir())


def test_a_bad_data_file_exits_with_status_1_and_one_line(tmp_path: Path) -> None:
    """End to end through the interpreter: no traceback, status 1, the file and line named."""
    path = tmp_path / "reviews_Beauty_5.json"
    path.write_text('{"reviewerID": "u", "asin": "i", "unixReviewTime": 1}\n{oops\n')
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "train.py"), "--dataset", "beauty", "--data-path", str(path), "--stats-only"],
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        f"error: {path} line 2: not a review object (JSON or Python literal): '{{oops': fix or remove the line, "
        "or use the official file"
    ]
