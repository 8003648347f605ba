"""Every command's --help renders (rich markup in a help text can break it)."""

import pytest
from typer.testing import CliRunner

from rankstream.workers.cli import app

COMMANDS = [
    command.name or command.callback.__name__.replace("_", "-")
    for command in app.registered_commands
    if command.callback is not None
]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command_renders(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
