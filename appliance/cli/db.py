"""``appliance db``: schema migrations."""

from __future__ import annotations

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx
from appliance.ops import schema
from appliance.runtime import cli_actor
from appliance.store import migrate


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
@location_options
@pass_ctx
def upgrade(ctx: CliContext) -> None:
    """Bring the database schema to the newest revision."""
    rev = schema.upgrade(ctx.app(), cli_actor())
    click.echo(f"schema at revision {rev}")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def current(ctx: CliContext, as_json: bool) -> None:
    """Show the schema revision of the database and the newest one known."""
    revision, newest = migrate.current(ctx.app().db), migrate.head()
    if as_json:
        emit_json({"database": revision, "newest": newest, "up_to_date": revision == newest})
    else:
        click.echo(f"database: {revision or '(empty)'}  newest: {newest}")
