"""The shipped systemd units run commands that exist, with options the CLI accepts, and
each timer starts a unit that is shipped. (The hardening itself is described in
systemd/README.md and checked there with ``systemd-analyze verify``.)"""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from appliance.cli.main import cli

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def _unit(path: Path) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


@pytest.mark.parametrize("path", sorted(UNITS.glob("*.service")), ids=lambda p: p.name)
def test_service_runs_an_existing_command(path: Path) -> None:
    argv = shlex.split(_unit(path)["Service"]["ExecStart"])
    assert argv[0].endswith("/bin/appliance") and argv[1:3] == [
        "--config", "/etc/appliance/appliance.yaml"]
    result = CliRunner().invoke(cli, [*argv[3:], "--help"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("path", sorted(UNITS.glob("*.timer")), ids=lambda p: p.name)
def test_timer_starts_a_shipped_service(path: Path) -> None:
    unit = _unit(path)["Timer"]["Unit"]
    assert (UNITS / unit).is_file()
    assert path.stem == Path(unit).stem
