"""Entry point: global options, logging, and turning errors into messages and exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import pydantic

from appliance import __version__, logs
from appliance.cli.acme import acme
from appliance.cli.audit import audit
from appliance.cli.authority import authority
from appliance.cli.ceremony import ceremony
from appliance.cli.certificate import cert
from appliance.cli.context import CliContext
from appliance.cli.db import db
from appliance.cli.eab import eab
from appliance.cli.hsm import hsm
from appliance.cli.init import init_cmd
from appliance.cli.inventory import inventory
from appliance.cli.ocsp import ocsp
from appliance.cli.policy import policy
from appliance.cli.provisioner import provisioner, token_cmd
from appliance.cli.quickstart import quickstart_cmd
from appliance.cli.renew import renew_cmd
from appliance.cli.revocation import crl_group, revoke_cmd
from appliance.cli.serve import serve_cmd
from appliance.cli.template import template
from appliance.errors import ApplianceError


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
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


cli.add_command(init_cmd)
cli.add_command(db)
cli.add_command(hsm)
cli.add_command(audit)
cli.add_command(ceremony)
cli.add_command(authority)
cli.add_command(quickstart_cmd)
cli.add_command(provisioner)
cli.add_command(token_cmd)
cli.add_command(serve_cmd)
cli.add_command(policy)
cli.add_command(inventory)
cli.add_command(template)
cli.add_command(renew_cmd)
cli.add_command(revoke_cmd)
cli.add_command(crl_group)
cli.add_command(ocsp)
cli.add_command(eab)
cli.add_command(cert)
cli.add_command(acme)


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
