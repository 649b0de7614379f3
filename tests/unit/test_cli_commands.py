"""Every command of the lazily loaded CLI resolves to the command it is listed as."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from appliance.cli.main import _COMMANDS, cli


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_listed_command_loads_and_answers_help(name: str) -> None:
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: cli {name} ") or f" {name} " in result.output


def test_top_level_help_lists_every_command_and_unknown_is_a_usage_error() -> None:
    out = CliRunner().invoke(cli, ["--help"]).output
    for name in _COMMANDS:
        assert f"  {name} " in out
    result = CliRunner().invoke(cli, ["nosuchcommand"])
    assert result.exit_code == 2 and "No such command" in result.output


def test_a_command_does_not_import_the_others() -> None:
    code = ("import sys; from appliance.cli.main import cli; "
            "cli.main(['acme', '--help'], standalone_mode=False); "
            "print(sorted(m for m in sys.modules if m.startswith('appliance.cli.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    loaded = out.strip().splitlines()[-1]
    assert "appliance.cli.acme" in loaded
    for other in ("appliance.cli.ceremony", "appliance.cli.serve", "appliance.cli.db"):
        assert other not in loaded, loaded
