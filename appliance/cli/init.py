"""``appliance init``."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.context import CliContext, location_options, pass_ctx
from appliance.ops.init import init
from appliance.runtime import cli_actor


@click.command("init")
@click.option("--node-id", default="node-1", show_default=True,
              help="Name of this node in the audit log.")
@click.option("--database-url", default=None,
              help="Database URL (default: SQLite in the data directory).")
@click.option("--fips", is_flag=True,
              help="FIPS-style mode: approved algorithms only, for good (it is recorded in "
                   "the database and cannot be switched off, nor on in place later).")
@location_options
@pass_ctx
def init_cmd(ctx: CliContext, node_id: str, database_url: str | None, fips: bool) -> None:
    """Create a data directory (--dir): config, SoftHSM token with random PINs, database."""
    if ctx.data_dir is None:
        raise click.UsageError("init needs --dir DIR")
    path = init(Path(ctx.data_dir), cli_actor(), node_id=node_id, database_url=database_url,
                fips=fips)
    click.echo(f"initialised {path.parent}")
    mode = "FIPS (fips.enabled: true; irreversible)" if fips else "default"
    click.echo(f"  mode           {mode}")
    click.echo(f"  configuration  {path}")
    click.echo(f"  token          SoftHSM token 'appliance' in {path.parent / 'softhsm'}")
    click.echo(f"  PINs           {path.parent / 'secrets'} (mode 0600)")
    click.echo("next: appliance --dir DIR hsm genkey --label audit-key --type ec-p256")
