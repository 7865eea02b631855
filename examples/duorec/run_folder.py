"""The output folder of a run: never destroy a finished run, and find out before training that it can be written.

A folder that already holds a run (any of `RUN_FILES`) is continued with ``--resume`` or replaced with
``--overwrite``, which first removes every file the old run wrote (so no stale plot stays beside the new
results); other files in the folder are left alone. Every refusal is a one-line `SystemExit` (exit code 1)
naming the folder and the fix.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# Every file the trainer writes into its folder (plots.py's figures included; one of them only on data
# with known intents), and the temporary names they are written under.
PLOTS = ("training.png", "thresholds.png", "similarities.png", "alignment_uniformity.png", "false_negatives.png")
RUN_FILES = ("results.json", "last.pt", "best.pt", *PLOTS)
TEMPORARY_SUFFIX = ".tmp"


def run_files(folder: Path) -> list[Path]:
    """The files of a run in `folder` (its temporary files included), in `RUN_FILES` order."""
    if not folder.is_dir():
        return []
    names = [*RUN_FILES, *(name + TEMPORARY_SUFFIX for name in RUN_FILES)]
    return [folder / name for name in names if (folder / name).is_file()]


def prepare(folder: Path, resume: bool, overwrite: bool) -> None:
    """Make `folder` ready for a run started with these flags, or refuse.

    Refuses a folder holding a run unless `resume` (it must then hold ``last.pt``) or `overwrite`
    (its run files are then removed); creates the folder and checks that a file can be written in it.

    Raises:
        SystemExit: with the one line that says why and what to do.
    """
    if resume and overwrite:
        raise SystemExit("error: --resume continues a run and --overwrite replaces it: pass one of them")
    if folder.exists() and not folder.is_dir():
        raise SystemExit(f"error: --out {folder} is a file, not a folder: pick another --out")
    found = run_files(folder)
    names = ", ".join(path.name for path in found)
    if found and not resume and not overwrite:
        raise SystemExit(
            f"error: --out {folder} already holds a run ({names}): pass --resume to continue it, --overwrite to "
            "replace it, or pick another --out"
        )
    if resume and found and not (folder / "last.pt").is_file():
        raise SystemExit(
            f"error: --resume: {folder} holds {names} but no last.pt to continue from: pass --overwrite to start "
            "again, or pick another --out"
        )
    check_writable(folder)
    if overwrite:
        for path in found:
            try:
                path.unlink()
            except OSError as error:
                raise SystemExit(f"error: --overwrite cannot remove {path} ({error.strerror or error})") from error


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and write (then remove) a file in it, so that a run that cannot save
    stops now, not after its first epoch."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(handle)
        with contextlib.suppress(OSError):
            os.unlink(name)
    except OSError as error:
        raise SystemExit(
            f"error: cannot write to --out {folder} ({error.strerror or error}): pick a writable folder"
        ) from error
