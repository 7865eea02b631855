"""The README's set-up is what CI runs, and its install steps say how to get PyTorch on each machine.

Its Python blocks run in `test_snippets.py`, its links resolve in `test_docs.py`.
"""

from __future__ import annotations

import re

from _markdown import REPO, code_blocks

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest brings tomli there
    import tomli as tomllib

README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def setup_commands() -> list[str]:
    """The one-line commands of the README's set-up section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Set-up: the two commands") :]
    section = section[: section.index("\n## ", 1)]
    blocks = [block for block in code_blocks(README) if block.language == "bash" and block.code.strip() in section]
    return [block.code.strip() for block in blocks]


def test_two_setup_commands_install_then_run() -> None:
    train, test = setup_commands()
    for command in (train, test):
        assert "\n" not in command
        assert command.startswith(f"python -m pip install torch {CPU_INDEX} && python -m pip install -e ")
    assert train.endswith("python examples/duorec/train.py")
    assert '".[examples]"' in train
    assert test.endswith("python -m pytest -q")
    assert '".[test]"' in test


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    _, test = setup_commands()
    commands = [line.strip() for line in CI_RUN.read_text(encoding="utf-8").splitlines()]
    assert test in commands, "the README's test command must be a line of .ci/run"
    # CI's machine has a local CPU wheel of torch: installing it first makes the CPU-index step a no-op.
    assert commands.index("python -m pip install torch==2.13.0") < commands.index(test)


def test_install_names_both_ways_to_get_pytorch() -> None:
    text = README.read_text(encoding="utf-8")
    install = text[text.index("## Install") : text.index("## Set-up")]
    assert f"python -m pip install torch {CPU_INDEX}" in install
    assert "python -m pip install torch\n" in install  # PyPI's wheel, the CUDA build on Linux
    assert "CUDA build" in install and "nvidia-" in install


def test_extras_in_the_readme_are_the_packaged_ones() -> None:
    """Every extra of pyproject.toml has a row in the README's table, and the table names no other."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| extra |") :].split("\n\n")[0]
    rows = set(re.findall(r"^\| `([a-z]+)` \|", table, flags=re.M))
    assert rows == set(extras)
    assert any("triton" in requirement for requirement in extras["test"]), "the README says `test` pulls Triton"


def test_the_install_page_repeats_the_two_commands() -> None:
    install = (REPO / "docs" / "install.md").read_text(encoding="utf-8")
    for command in setup_commands():
        assert command in install, command
