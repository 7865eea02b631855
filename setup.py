"""Build step that pyproject.toml cannot express: the README as long description, links absolute.

PyPI shows the long description without the repository around it, so a relative link of the README
(`docs/modes.md`, `CHANGELOG.md`) would lead nowhere there. Each one becomes a link to the same file
in the repository, the `Repository` URL of pyproject.toml's [project.urls]. All other metadata is in
pyproject.toml.
"""

from __future__ import annotations

import re
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
BRANCH = "main"
# ](target) of a link or image whose target is neither a URL nor an anchor of the same page.
RELATIVE_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:|#)(?P<target>[^)\s]+)\)")


def long_description(readme: str, repository: str, branch: str = BRANCH) -> str:
    """`readme` with every relative link pointing to `repository` on `branch`."""

    def absolute(match: re.Match[str]) -> str:
        target = match.group("target").removeprefix("./")
        kind = "tree" if target.split("#")[0].endswith("/") else "blob"
        return f"]({repository.rstrip('/')}/{kind}/{branch}/{target})"

    return RELATIVE_LINK.sub(absolute, readme)


if __name__ == "__main__":
    from setuptools import setup

    project = tomllib.loads((HERE / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    setup(
        long_description=long_description(
            (HERE / "README.md").read_text(encoding="utf-8"), project["urls"]["Repository"]
        ),
        long_description_content_type="text/markdown",
    )
