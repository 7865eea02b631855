"""Check the built sdist and wheel: what they hold and the metadata users and PyPI see.

Usage: python .ci/check_dist.py DIST_DIR
"""

from __future__ import annotations

import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "adaptive_contrastive"
URL_NAMES = {"Homepage", "Documentation", "Repository", "Issues", "Changelog"}


def source_version() -> str:
    text = (REPO / PACKAGE / "__init__.py").read_text(encoding="utf-8")
    match = re.search(r'^__version__ = "([^"]+)"$', text, flags=re.M)
    assert match, "__version__ not found in adaptive_contrastive/__init__.py"
    return match.group(1)


def check_wheel(wheel: Path, version: str) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    info = f"{PACKAGE}-{version}.dist-info/"
    strays = [name for name in names if not name.startswith((f"{PACKAGE}/", info))]
    assert not strays, f"the wheel must hold only the package, it also holds {strays}"
    for needed in ("__init__.py", "py.typed", "kernels/__init__.py", "kernels/masked_info_nce.py", "cpu/hard_rows.c"):
        assert f"{PACKAGE}/{needed}" in names, f"the wheel lacks {PACKAGE}/{needed}"
    metadata = Parser().parsestr(zipfile.ZipFile(wheel).read(f"{info}METADATA").decode())
    assert metadata["Version"] == version, f"wheel version {metadata['Version']}, source {version}"
    urls = {entry.split(",")[0] for entry in metadata.get_all("Project-URL") or []}
    assert urls == URL_NAMES, f"project URLs: {sorted(urls)}"
    assert metadata["Description-Content-Type"] == "text/markdown"
    description = metadata.get_payload()
    assert description.startswith("# adaptive-contrastive"), "the long description is the README"
    relative = re.findall(r"\]\((?![a-z][a-z0-9+.-]*:|#)([^)\s]+)\)", description)
    assert not relative, f"relative links would be dead on PyPI: {relative}"
    assert "../shared" not in description
    print(f"{wheel.name}: {len(names)} files, only {PACKAGE}/ and its dist-info; version {version};")
    print(f"  {len(urls)} project URLs; long description: the README, {len(description)} characters, absolute links")


def check_sdist(sdist: Path, version: str) -> None:
    root = f"{PACKAGE}-{version}/"
    with tarfile.open(sdist) as archive:
        names = {member.name.removeprefix(root) for member in archive.getmembers()}
    for needed in (
        "pyproject.toml",
        "setup.py",
        "README.md",
        "LICENSE",
        "CHANGELOG.md",
        f"{PACKAGE}/__init__.py",
        f"{PACKAGE}/cpu/hard_rows.c",
    ):
        assert needed in names, f"the sdist lacks {needed}"
    print(f"{sdist.name}: {len(names)} entries, with pyproject.toml, setup.py, README, LICENSE and CHANGELOG")


def main(dist: Path) -> None:
    version = source_version()
    wheels = sorted(dist.glob("*.whl"))
    sdists = sorted(dist.glob("*.tar.gz"))
    assert [w.name for w in wheels] == [f"{PACKAGE}-{version}-py3-none-any.whl"], wheels
    assert [s.name for s in sdists] == [f"{PACKAGE}-{version}.tar.gz"], sdists
    check_wheel(wheels[0], version)
    check_sdist(sdists[0], version)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
