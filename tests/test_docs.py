"""Every `kedge ...` command shown in README.md and docs/ still parses.

The manual is read and copied from; a renamed option or command must fail here, not
on a reader's machine. Each command line in a fenced code block is parsed by the real
click group with every command's body replaced by a no-op: options, choices, types
and required arguments are all checked, and nothing runs.
"""
from __future__ import annotations

import re
import shlex

import click
import pytest

from conftest import REPO

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, arguments after `kedge`) for each kedge command line in a code block;
    backslash continuations are joined, comments dropped, `.venv*/bin/kedge` counts."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in FENCE.finditer(text):
            first_line = text.count("\n", 0, block.start(1)) + 1
            joined, start = "", 0
            for number, line in enumerate(block.group(1).splitlines(), first_line):
                joined, start = joined + line, start or number
                if line.endswith("\\"):
                    joined = joined[:-1]  # continued on the next line
                    continue
                tokens = shlex.split(joined, comments=True)
                if tokens and (tokens[0] == "kedge" or tokens[0].endswith("/bin/kedge")):
                    found.append((f"{page.relative_to(REPO)}:{start}", tokens[1:]))
                joined, start = "", 0
    return found


@pytest.fixture()
def parse_only(monkeypatch):
    """The kedge group with no-op command bodies; placeholder paths (NEW/split.csv)
    need not exist. Returns a function that parses one argument list."""
    from kedge.cli import main

    for command in main.commands.values():
        monkeypatch.setattr(command, "callback", lambda **_: None)
        for param in command.params:
            if isinstance(param.type, click.Path) and param.type.exists:
                monkeypatch.setattr(param.type, "exists", False)
    return lambda args: main.main(args, prog_name="kedge", standalone_mode=False)


COMMANDS = documented_commands()


def test_commands_are_found_in_the_readme_and_the_docs() -> None:
    """Guards the extraction itself: an empty list would make the next test pass vacuously."""
    pages = {where.split(":")[0] for where, _ in COMMANDS}
    assert "README.md" in pages and len(pages) >= 8, pages
    assert len(COMMANDS) >= 30
    assert any(args[:1] == ["export"] and "--sensitivity-plot" in args for _, args in COMMANDS)  # a continued line


@pytest.mark.parametrize("args", [args for _, args in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_documented_command_parses(parse_only, args) -> None:
    parse_only(args)


@pytest.mark.parametrize("args", [
    ["infer", "knee.png", "--no-such-option"],
    ["export", "BUNDLE", "--int9"],
    ["infer", "knee.png", "--backend", "no-such-backend"],
    ["infer", "knee.png", "--precision", "fp8"],
    ["no-such-command", "BUNDLE"],
    ["parity", "."],  # --data is required (an existing folder: BUNDLE itself is resolved as it parses)
])
def test_a_command_that_does_not_parse_is_caught(parse_only, args) -> None:
    with pytest.raises(click.UsageError):
        parse_only(args)
