"""Reading the README and the docs as their tests need: fenced code blocks, links, and the anchors
GitHub gives headings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The Markdown a user reads: the README, the changelog and the documentation pages.
USER_MARKDOWN = [REPO / "README.md", REPO / "CHANGELOG.md", *sorted((REPO / "docs").glob("*.md"))]

# A Python block the snippet test must not run carries this comment on the line just above its fence,
# with the reason, e.g. <!-- snippet-test: skip, needs a CUDA GPU and Triton -->
SKIP_MARKER = re.compile(r"^<!-- snippet-test: skip, (?P<reason>\S.*?) -->$")
LINK = re.compile(r"\[[^\]]*\]\((?P<target>[^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class CodeBlock:
    """One fenced code block: where it starts (1-based line of the fence), its language and code."""

    path: Path
    line: int
    language: str
    code: str
    skip_reason: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO).as_posix()}:{self.line}"


def code_blocks(path: Path) -> list[CodeBlock]:
    blocks: list[CodeBlock] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    language = ""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if start is None and stripped.startswith("```"):
            start, language = number, stripped[3:].strip().split(" ")[0]
        elif start is not None and stripped == "```":
            previous = lines[start - 2].strip() if start >= 2 else ""
            marker = SKIP_MARKER.match(previous)
            code = "\n".join(lines[start : number - 1]) + "\n"
            blocks.append(CodeBlock(path, start, language, code, marker.group("reason") if marker else None))
            start = None
    if start is not None:
        raise ValueError(f"{path}:{start}: a code block is never closed")
    return blocks


def without_fences(path: Path) -> str:
    """The text of a Markdown file without its fenced code blocks."""
    return re.sub(r"^\s*```.*?^\s*```\s*$", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)


def prose(path: Path) -> str:
    """The text of a Markdown file without its fenced code blocks and inline code."""
    return re.sub(r"`[^`\n]*`", "", without_fences(path))


def links(path: Path) -> list[str]:
    return [m.group("target") for m in LINK.finditer(prose(path))]


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: the text of links and code kept, lower case, punctuation
    dropped, spaces as hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of every heading of `path`, with GitHub's -1, -2 suffixes for repeated ones."""
    seen: dict[str, int] = {}
    result: set[str] = set()
    for line in without_fences(path).splitlines():
        match = HEADING.match(line)
        if not match:
            continue
        anchor = github_anchor(match.group("text"))
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        result.add(anchor if count == 0 else f"{anchor}-{count}")
    return result
