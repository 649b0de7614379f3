"""Entry point: global options, logging, and turning errors into messages and exit codes."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click
import pydantic

from appliance import __version__, logs
from appliance.cli.context import CliContext
from appliance.errors import ApplianceError

# name -> (module, attribute). Commands are imported when used, not all at start: an
# operator's `appliance acme account list` then loads what that command needs (about a
# second less per invocation than importing every command's dependencies).
_COMMANDS = {
    "init": ("appliance.cli.init", "init_cmd"),
    "db": ("appliance.cli.db", "db"),
    "config": ("appliance.cli.config", "config_group"),
    "hsm": ("appliance.cli.hsm", "hsm"),
    "audit": ("appliance.cli.audit", "audit"),
    "ceremony": ("appliance.cli.ceremony", "ceremony"),
    "authority": ("appliance.cli.authority", "authority"),
    "quickstart": ("appliance.cli.quickstart", "quickstart_cmd"),
    "provisioner": ("appliance.cli.provisioner", "provisioner"),
    "token": ("appliance.cli.provisioner", "token_cmd"),
    "serve": ("appliance.cli.serve", "serve_cmd"),
    "policy": ("appliance.cli.policy", "policy"),
    "inventory": ("appliance.cli.inventory", "inventory"),
    "template": ("appliance.cli.template", "template"),
    "renew": ("appliance.cli.renew", "renew_cmd"),
    "revoke": ("appliance.cli.revocation", "revoke_cmd"),
    "crl": ("appliance.cli.revocation", "crl_group"),
    "ocsp": ("appliance.cli.ocsp", "ocsp"),
    "eab": ("appliance.cli.eab", "eab"),
    "cert": ("appliance.cli.certificate", "cert"),
    "acme": ("appliance.cli.acme", "acme"),
    "fips": ("appliance.cli.fips", "fips"),
    "ra": ("appliance.cli.ra_init", "ra"),  # the group of cli/ra.py, with init and import
    "cluster": ("appliance.cli.cluster_add", "cluster"),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(_COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _COMMANDS:
            return super().get_command(ctx, cmd_name)
        module, attribute = _COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command) and command.name == cmd_name, cmd_name
        return command


@click.group(cls=_LazyGroup,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--config", "config_path", type=click.Path(path_type=Path), default=None,
              help="Configuration file (default: $APPLIANCE_CONFIG, or DIR/appliance.yaml).")
@click.option("--dir", "data_dir", type=click.Path(path_type=Path), default=None,
              help="Data directory holding appliance.yaml.")
@click.option("--log-level", default="WARNING", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Operational log level (JSON lines on stderr).")
@click.version_option(__version__, prog_name="appliance")
@click.pass_context
def cli(ctx: click.Context, config_path: Path | None, data_dir: Path | None,
        log_level: str) -> None:
    """The signing appliance: a certificate authority whose keys live in a PKCS#11 token."""
    logs.configure(log_level)
    obj = CliContext(config_path, data_dir)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ApplianceError as exc:
        click.echo(f"error [{exc.code}]: {exc}", err=True)
        sys.exit(1)
    except pydantic.ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        click.echo(f"error [invalid]: {problems}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
