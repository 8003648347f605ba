"""The command line's help as a user reads it: every page renders, nothing is cut short, each
command is summed up in a full sentence, and `--version` answers."""

import re

import pytest
from typer.testing import CliRunner

from rankstream import __version__
from rankstream.workers.cli import app, first_paragraph

COMMANDS = [
    command.name or command.callback.__name__.replace("_", "-")
    for command in app.registered_commands
    if command.callback is not None
]
WIDTHS = ["80", "100"]
GRAMMAR = "STAGE     SCORER@DEPTH[/docN|/maxpN|/bestN][~W]"


def help_of(*args: str, columns: str = "80") -> str:
    result = CliRunner().invoke(app, [*args, "--help"], env={"COLUMNS": columns})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_renders_whole(command: str) -> None:
    text = help_of(command)
    assert "Usage" in text
    assert "…" not in text, "a help text was cut short"


@pytest.mark.parametrize("columns", WIDTHS)
def test_eval_help_shows_the_pipeline_grammar_whole(columns: str) -> None:
    lines = [line.strip() for line in help_of("eval", columns=columns).splitlines()]
    assert GRAMMAR in lines
    assert "PIPELINE  MODE[+STAGE{>STAGE}]" in lines
    assert "MODE      dense | bm25 | hybrid | hybrid~W" in lines


def test_version_prints_the_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"rankstream {__version__}"


@pytest.mark.parametrize("columns", WIDTHS)
def test_every_command_summary_is_a_full_sentence(columns: str) -> None:
    """`rankstream --help` lists each command with the first paragraph of its help: whole
    (wrapped, never cut with "..."), one sentence, capitalised and ending in a full stop."""
    text = help_of(columns=columns)
    listing = text.split("Commands:\n", 1)[1]
    summaries: dict[str, str] = {}
    name = ""
    for line in listing.splitlines():
        start = re.match(r"^  (\S+)\s+(.*)$", line)
        if start:
            name = start[1]
            summaries[name] = start[2]
        elif line.strip() and name:
            summaries[name] += " " + line.strip()
    assert sorted(summaries) == sorted(COMMANDS)
    for command in app.registered_commands:
        name = command.name or command.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
        shown = summaries[name]
        assert "..." not in shown, (name, shown)
        assert shown[0].isupper(), (name, shown)
        assert shown.endswith("."), (name, shown)
        assert shown.count(". ") == 0, f"{name}: one sentence, not {shown!r}"
        expected = first_paragraph(command.help or command.callback.__doc__ or "")
        # Wrapping may break a line at a hyphen ("bi-/encoder"): compare without spaces.
        assert re.sub(r"\s", "", shown) == re.sub(r"\s", "", expected), (name, shown)


def test_verbose_is_explained() -> None:
    options = help_of()
    line = next(line for line in options.splitlines() if "--verbose" in line)
    assert "DEBUG" in line
