"""Every state-changing operator command takes ``--operator`` (FIPS mode: one operator),
and the read-only ones do not: the list is the one the README gives, checked against the
real click commands so a new command is not silently left ungated."""

from __future__ import annotations

import click
import pytest

from appliance.cli.main import cli

GATED = [
    "provisioner add", "provisioner update", "provisioner remove", "provisioner seal",
    "policy set", "policy remove", "template add", "template remove",
    "inventory add", "inventory import", "inventory remove", "eab add", "eab revoke",
    "revoke", "crl publish", "crl import", "ocsp presign", "acme account revoke",
    "acme prune", "cert reconcile",
]
READ_ONLY = [
    "provisioner list", "provisioner show", "policy show", "template list", "template show",
    "template check", "inventory list", "inventory show", "eab list", "acme account list",
    "acme account show", "cert list", "cert show",
]


def _command(path: str) -> click.Command:
    ctx = click.Context(cli)
    command: click.Command = cli
    for part in path.split():
        assert isinstance(command, click.Group), path
        found = command.get_command(ctx, part)
        assert found is not None, path
        command = found
    return command


def _options(path: str) -> set[str]:
    return {opt for p in _command(path).params for opt in getattr(p, "opts", [])}


@pytest.mark.parametrize("path", GATED)
def test_operator_commands_take_operator(path: str) -> None:
    assert "--operator" in _options(path)
    assert "separation of duties" in " ".join(
        p.help or "" for p in _command(path).params if isinstance(p, click.Option))


@pytest.mark.parametrize("path", READ_ONLY)
def test_read_only_commands_need_no_role(path: str) -> None:
    assert "--operator" not in _options(path)
