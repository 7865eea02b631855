"""The user documentation stays true: its links resolve inside the repository, the API reference
lists every public name, the troubleshooting page quotes the real error messages, and nothing a
user reads points to files outside the repository.

The docs site itself is built in CI (`mkdocs build --strict`), which also checks the anchors
between pages and that every API reference resolves.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from _markdown import REPO, USER_MARKDOWN, anchors, links, prose

import adaptive_contrastive
from adaptive_contrastive import AdaptiveInfoNCE, ThresholdNet
from adaptive_contrastive.functional import adaptive_info_nce

DOCS = REPO / "docs"
API_PAGE = DOCS / "api.md"
TROUBLESHOOTING = DOCS / "troubleshooting.md"


def name_of(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


# --- links -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", USER_MARKDOWN, ids=name_of)
def test_links_resolve_inside_the_repository(path: Path) -> None:
    for target in links(path):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            assert target.startswith("https://"), f"{name_of(path)}: {target}"
            continue
        file_part, _, anchor = target.partition("#")
        resolved = (path.parent / file_part).resolve() if file_part else path
        assert resolved.is_relative_to(REPO), f"{name_of(path)} links outside the repository: {target}"
        assert resolved.exists(), f"{name_of(path)} links to a missing file: {target}"
        if anchor and resolved.suffix == ".md":
            assert anchor in anchors(resolved), f"{name_of(path)}: no heading for #{anchor} in {name_of(resolved)}"


@pytest.mark.parametrize("path", USER_MARKDOWN, ids=name_of)
def test_nothing_points_outside_the_repository(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    for internal in ("../shared", "/work/", "SPEC.md", "SPEC §"):
        assert internal not in text, f"{name_of(path)} mentions {internal!r}"


def test_the_docs_link_the_measured_evidence() -> None:
    targets = links(DOCS / "choosing.md")
    assert any(target.startswith("../examples/duorec/README.md#") for target in targets)
    assert "../benchmarks/RESULTS.md" in targets


# --- the API reference ---------------------------------------------------------------------------


def documented_names() -> set[str]:
    return set(re.findall(r"^::: ([\w.]+)$", API_PAGE.read_text(encoding="utf-8"), flags=re.M))


def public_names() -> set[str]:
    names = {f"adaptive_contrastive.{name}" for name in adaptive_contrastive.__all__}
    functional = importlib.import_module("adaptive_contrastive.functional")
    names |= {f"adaptive_contrastive.functional.{name}" for name in functional.__all__}
    for module_name in ("metrics", "distributed"):
        module = importlib.import_module(f"adaptive_contrastive.{module_name}")
        names |= {
            f"adaptive_contrastive.{module_name}.{name}"
            for name, value in vars(module).items()
            if not name.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__
        }
    # The kernels need Triton to import; read their __all__ from the source instead.
    tree = ast.parse((REPO / "adaptive_contrastive" / "kernels" / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            names |= {f"adaptive_contrastive.kernels.{name}" for name in ast.literal_eval(node.value)}
    return names


def test_the_api_reference_lists_every_public_name() -> None:
    missing = public_names() - documented_names()
    assert not missing, f"add to docs/api.md: {sorted(missing)}"


def test_public_docstrings_do_not_point_to_internal_files() -> None:
    """The API reference renders these docstrings: they must not send users to internal files."""
    for name in sorted(documented_names()):
        if name.startswith("adaptive_contrastive.kernels"):
            continue  # needs Triton to import; its docstrings are checked where it imports
        module_name, _, attribute = name.rpartition(".")
        value = getattr(importlib.import_module(module_name), attribute)
        docs = [inspect.getdoc(value) or ""] if not isinstance(value, str) else []
        if inspect.isclass(value):
            docs += [inspect.getdoc(member) or "" for _, member in inspect.getmembers(value) if callable(member)]
        for doc in docs:
            assert "SPEC" not in doc and "shared/" not in doc, f"{name}: {doc[:200]}"


# --- troubleshooting: the real messages --------------------------------------------------------------


def views(b: int = 4, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(b, d), torch.randn(b, d)


ERRORS: dict[str, tuple[type[Exception], Callable[[], object]]] = {
    "no dim": (ValueError, lambda: AdaptiveInfoNCE()),
    "misspelt mode": (ValueError, lambda: AdaptiveInfoNCE(8, false_negatives="remove")),
    "temperature": (ValueError, lambda: AdaptiveInfoNCE(8, temperature=0)),
    "quantile": (ValueError, lambda: AdaptiveInfoNCE(8, quantile=90)),
    "flat without batch size": (ValueError, lambda: ThresholdNet(64, arch="flat")),
    "batch of one": (ValueError, lambda: adaptive_info_nce(*views(1), 0.5)),
    "shapes": (ValueError, lambda: adaptive_info_nce(torch.randn(4, 8), torch.randn(5, 8), 0.5)),
    "nan": (ValueError, lambda: adaptive_info_nce(torch.full((4, 8), math.nan), torch.randn(4, 8), 0.5)),
    "integers": (TypeError, lambda: adaptive_info_nce(torch.ones(4, 8, dtype=torch.long), torch.ones(4, 8), 0.5)),
    "no threshold": (ValueError, lambda: adaptive_info_nce(*views())),
    "threshold shape": (ValueError, lambda: adaptive_info_nce(*views(), torch.zeros(3))),
    "threshold module": (
        ValueError,
        lambda: AdaptiveInfoNCE(threshold=torch.nn.Linear(8, 1), warmup_epochs=0)(*views()),
    ),
    "ThresholdNet width": (ValueError, lambda: AdaptiveInfoNCE(8)(*views(4, 16))),
    "keep with labels": (
        ValueError,
        lambda: adaptive_info_nce(*views(), None, false_negatives="keep", labels=torch.arange(4)),
    ),
    "labels alone without labels": (
        ValueError,
        lambda: AdaptiveInfoNCE(threshold="labels", false_negatives="drop")(*views()),
    ),
    "float labels": (TypeError, lambda: adaptive_info_nce(*views(), 0.5, labels=torch.zeros(4))),
    "tiny temperature": (ValueError, lambda: AdaptiveInfoNCE(8, temperature=1e-40)),
    "flat and the last batch": (
        ValueError,
        lambda: AdaptiveInfoNCE(threshold=ThresholdNet(8, arch="flat", batch_size=4), warmup_epochs=0)(*views(3)),
    ),
}


@pytest.mark.parametrize("case", ERRORS)
def test_troubleshooting_quotes_the_error(case: str) -> None:
    kind, call = ERRORS[case]
    with pytest.raises(kind) as error:
        call()
    assert str(error.value) in TROUBLESHOOTING.read_text(encoding="utf-8"), f"update docs/troubleshooting.md: {error}"


def test_troubleshooting_quotes_the_dot_attract_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        AdaptiveInfoNCE(8, similarity="dot")
    assert len(caught) == 1
    assert str(caught[0].message) in TROUBLESHOOTING.read_text(encoding="utf-8")


def test_troubleshooting_quotes_the_triton_backend_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    text = TROUBLESHOOTING.read_text(encoding="utf-8")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError) as on_cpu:
        adaptive_info_nce(*views(), 0.5, backend="triton")
    monkeypatch.setitem(sys.modules, "triton", None)  # `import triton` fails, as without Triton
    with pytest.raises(ValueError) as without:
        adaptive_info_nce(*views(), 0.5, backend="triton")
    assert "Triton is not installed" in str(without.value)
    for error in (on_cpu, without):
        assert str(error.value) in text


def python(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env={**environment, **env}
    )


def test_troubleshooting_quotes_the_kernels_import_error() -> None:
    script = "import sys\nsys.modules['triton'] = None\nimport adaptive_contrastive.kernels\n"
    result = python(script)
    message = result.stderr.strip().splitlines()[-1]
    assert message.startswith("ImportError: ")
    assert message.removeprefix("ImportError: ") in TROUBLESHOOTING.read_text(encoding="utf-8")


def test_troubleshooting_quotes_the_kernel_width_error() -> None:
    pytest.importorskip("triton")
    script = (
        "import torch\n"
        "from adaptive_contrastive.functional import adaptive_info_nce\n"
        "try:\n"
        "    adaptive_info_nce(torch.randn(4, 8192), torch.randn(4, 8192), 0.5, backend='triton')\n"
        "except ValueError as error:\n"
        "    print(error)\n"
    )
    result = python(script, TRITON_INTERPRET="1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() and result.stdout.strip() in TROUBLESHOOTING.read_text(encoding="utf-8")


# --- the changelog --------------------------------------------------------------------------------


def test_the_changelog_starts_with_this_version() -> None:
    text = prose(REPO / "CHANGELOG.md")
    versions = re.findall(r"^## (\d+\.\d+\.\d+)\b", text, flags=re.M)
    assert versions and versions[0] == adaptive_contrastive.__version__
