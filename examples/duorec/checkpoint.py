"""Checkpoints that load without running code, and that fail with one line, not a traceback.

`torch.load(weights_only=True)` unpickles only tensors and plain containers (dict, list, tuple, str,
int, float, bool, None), so a crafted ``last.pt`` cannot run code on ``--resume``. Everything the
trainer saves is of those types: the config is ``vars(args)``, the history holds floats, lists and
dicts, and the RNG states are tensors. Every failure is a `SystemExit` whose message names the file
and the fix, so the command line exits with code 1 and that one line.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch


def save(obj: dict[str, Any], path: Path) -> None:
    """`torch.save` through a temporary file, so an interrupt never leaves a half-written checkpoint.

    Raises:
        SystemExit: the folder cannot be written (full disk, permissions), naming the file.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:  # torch reports a failed write of its zip container as RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        reason = error.strerror if isinstance(error, OSError) and error.strerror else first_line(error)
        raise SystemExit(f"error: cannot write {path} ({reason}): free space or pick a writable --out") from error


def load(path: Path, device: torch.device | str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A checkpoint's dict, tensors mapped to `device`; nothing but tensors and plain containers is unpickled.

    Args:
        path: the checkpoint file.
        device: where its tensors go (``map_location``).
        required: keys it must hold.

    Raises:
        SystemExit: missing, empty, truncated or not a checkpoint of this trainer (including pickles that
            would import or call anything), with the file and the fix in one line.
    """
    fix = "delete it (or pick another --out) and train again"
    if not path.is_file():
        raise SystemExit(f"error: no checkpoint at {path}")
    if path.stat().st_size == 0:
        raise SystemExit(f"error: {path} is empty (an interrupted copy?): {fix}")
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle protocols; the error below says it all
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as error:
        raise SystemExit(
            f"error: {path} holds objects other than tensors and plain values ({_refusal(error)}), so it was not "
            f"written by this trainer and was refused without running it: {fix}"
        ) from None
    except Exception as error:  # a damaged or foreign file fails in many ways (zip, EOF, unpickler opcodes)
        raise SystemExit(f"error: {path} is not a readable checkpoint ({first_line(error)}): {fix}") from None
    if not isinstance(state, dict):
        raise SystemExit(f"error: {path} holds a {type(state).__name__}, not a checkpoint of this trainer: {fix}")
    missing = [key for key in required if key not in state]
    if missing:
        raise SystemExit(f"error: {path} is not a checkpoint of this trainer (no {', '.join(missing)}): {fix}")
    return state


def _refusal(error: pickle.UnpicklingError) -> str:
    """What the weights-only unpickler refused (``it would load posix.system``), without torch's advice to
    load the file unsafely or to allow-list the object."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f"it would load {found.group(1)}" if found else "an unsupported pickle instruction"


def first_line(error: BaseException) -> str:
    """The gist of an error whose message may run over many lines and sentences (torch's do)."""
    text = str(error).strip().splitlines()
    line = text[0].split(". ")[0].rstrip(".") if text else ""
    line = f"{type(error).__name__}: {line}" if line else type(error).__name__
    return line if len(line) <= 160 else line[:157] + "..."
