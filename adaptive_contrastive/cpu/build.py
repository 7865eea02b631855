"""Compiles ``hard_rows.c`` into a shared library once per machine and caches it on disk.

The library is built for the CPU it runs on (``-march=native``), so the cache key holds the CPU's description
as well as the source and the flags: a home directory shared by different machines gets one build per kind.
Builds land in a temporary file renamed into place, so processes starting together (one per rank) do not
read each other's half-written output.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("hard_rows.c")
BASE_FLAGS = ("-O3", "-fPIC", "-shared", "-fno-math-errno")
NATIVE_FLAGS = ("-march=native",)
_SUFFIX = {"win32": ".dll", "darwin": ".dylib"}.get(sys.platform, ".so")


class BuildError(RuntimeError):
    """The C compiler is missing or failed."""


def cache_dir() -> Path:
    """``$ADAPTIVE_CONTRASTIVE_CACHE``, else ``$XDG_CACHE_HOME/adaptive_contrastive``, else ``~/.cache/...``."""
    explicit = os.environ.get("ADAPTIVE_CONTRASTIVE_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "adaptive_contrastive"


def compiler() -> str | None:
    """``$CC`` if set, else the first of cc, gcc and clang on the PATH."""
    chosen = os.environ.get("CC")
    if chosen:
        return chosen
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_description() -> str:
    """What -march=native depends on: the CPU's feature flags where Linux lists them, else its name."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _key(cc: str) -> str:
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cc.encode(), " ".join(BASE_FLAGS + NATIVE_FLAGS).encode()):
        digest.update(part)
    digest.update(_cpu_description().encode())
    return digest.hexdigest()[:16]


def _compile(cc: str, flags: tuple[str, ...], target: Path) -> str | None:
    """Compile to `target`; the compiler's complaint when it fails."""
    command = [cc, *flags, str(SOURCE), "-o", str(target), "-lm"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return str(error)
    if result.returncode == 0:
        return None
    lines = (result.stderr or result.stdout).strip().splitlines()
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [f"exit status {result.returncode}"])[0]


def shared_library() -> Path:
    """The path of the built library, building it if the cache has none for this source, compiler and CPU."""
    cc = compiler()
    if cc is None:
        raise BuildError("no C compiler found (set CC, or install gcc or clang)")
    directory = cache_dir()
    target = directory / f"hard_rows-{_key(cc)}{_SUFFIX}"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(suffix=_SUFFIX, dir=directory)
        os.close(handle)
    except OSError as error:
        raise BuildError(f"cannot write the kernel cache {directory}: {error}") from error
    try:
        # -march=native is not known to every compiler (older clang on some ARM machines): retry without it.
        complaint = _compile(cc, BASE_FLAGS + NATIVE_FLAGS, Path(temporary))
        if complaint is not None:
            complaint = _compile(cc, BASE_FLAGS, Path(temporary))
        if complaint is not None:
            raise BuildError(f"{cc} failed to compile {SOURCE.name}: {complaint}")
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return target
