"""Packaging metadata: one version, the project's URLs, and a long description whose links work on
PyPI. CI builds the sdist and wheel themselves and checks them (`.ci/check_dist.py`)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from _markdown import REPO

import adaptive_contrastive

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def setup_module_of_the_repository():  # noqa: ANN201 - the module object of setup.py
    spec = importlib.util.spec_from_file_location("adaptive_contrastive_setup", REPO / "setup.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # its setup() call only runs as __main__
    return module


def test_the_version_is_set_in_one_place() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "adaptive_contrastive.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", adaptive_contrastive.__version__)


def test_the_project_has_its_urls_and_classifiers() -> None:
    project = PYPROJECT["project"]
    urls = project["urls"]
    assert set(urls) == {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}
    assert all(url.startswith(urls["Repository"]) for url in urls.values())
    assert "Typing :: Typed" in project["classifiers"]
    assert project["requires-python"] == ">=3.10"
    assert "Programming Language :: Python :: 3.10" in project["classifiers"]
    assert project["dependencies"] == ["torch>=2.1", "numpy"]


def test_the_long_description_is_the_readme_with_absolute_links() -> None:
    setup = setup_module_of_the_repository()
    repository = PYPROJECT["project"]["urls"]["Repository"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    description = setup.long_description(readme, repository)
    assert not setup.RELATIVE_LINK.search(description)
    targets = re.findall(r"\]\((https?://[^)\s]+)\)", description)
    in_repository = [t for t in targets if t.startswith(repository)]
    assert len(in_repository) >= 10
    for target in in_repository:
        path = target.removeprefix(f"{repository}/").split("/", 2)[2].split("#")[0]
        assert (REPO / path).exists(), target
    # Only link targets change.
    assert re.sub(r"\]\([^)\s]+\)", "]()", readme) == re.sub(r"\]\([^)\s]+\)", "]()", description)


def test_long_description_rewrites_files_folders_and_anchors_only() -> None:
    setup = setup_module_of_the_repository()
    text = "[a](docs/x.md#y) [b](./CHANGELOG.md) [c](examples/) [d](#top) [e](https://e.org/z) ![f](img/p.png)"
    assert setup.long_description(text, "https://host/o/r", "main") == (
        "[a](https://host/o/r/blob/main/docs/x.md#y) [b](https://host/o/r/blob/main/CHANGELOG.md) "
        "[c](https://host/o/r/tree/main/examples/) [d](#top) [e](https://e.org/z) "
        "![f](https://host/o/r/blob/main/img/p.png)"
    )


def test_the_wheel_holds_only_the_package() -> None:
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["adaptive_contrastive*"]
    manifest = (REPO / "MANIFEST.in").read_text(encoding="utf-8")
    assert "prune tests" in manifest and "include CHANGELOG.md" in manifest


def test_every_extra_is_documented_in_the_install_page() -> None:
    install = (REPO / "docs" / "install.md").read_text(encoding="utf-8")
    for extra in PYPROJECT["project"]["optional-dependencies"]:
        assert f"| `{extra}` |" in install, extra


def test_the_docs_extra_builds_what_mkdocs_yml_uses() -> None:
    docs = " ".join(PYPROJECT["project"]["optional-dependencies"]["docs"])
    config = (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    assert "name: material" in config and "mkdocs-material" in docs
    assert "mkdocstrings:" in config and "mkdocstrings[python]" in docs
    assert Path(REPO / "docs" / "hooks.py").exists() and "docs/hooks.py" in config
