"""MkDocs hook: links from the docs to files of the repository outside docs/ point to the repository.

The pages link the example's measured results, the benchmarks and the changelog with relative links
(`../examples/duorec/README.md#...`), which work when the Markdown is read in the repository. The
built site does not hold those files, so the links become links to the same file on the repository's
host (`repo_url` in mkdocs.yml). A link to a file that does not exist fails the build.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError

# A Markdown link or image target that leaves docs/: ](../path#anchor)
OUTSIDE_LINK = re.compile(r"\]\((\.\./[^)\s#]+)(#[^)\s]*)?\)")
BRANCH = "main"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    repo_root = Path(config["config_file_path"]).resolve().parent
    page_dir = Path(page.file.abs_src_path).resolve().parent
    repo_url = str(config["repo_url"]).rstrip("/")

    def to_repository(match: re.Match[str]) -> str:
        target = (page_dir / match.group(1)).resolve()
        anchor = match.group(2) or ""
        if docs_dir in target.parents or not target.is_relative_to(repo_root):
            return match.group(0)  # a docs page, or outside the repository: MkDocs checks it
        if not target.exists():
            raise PluginError(f"{page.file.src_path} links to {match.group(1)}, which is not in the repository")
        kind = "tree" if target.is_dir() else "blob"
        return f"]({repo_url}/{kind}/{BRANCH}/{target.relative_to(repo_root).as_posix()}{anchor})"

    return OUTSIDE_LINK.sub(to_repository, markdown)
