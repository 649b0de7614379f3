"""``appliance db``: schema migrations."""

from __future__ import annotations

import click

from appliance.cli.context import CliContext, location_options, pass_ctx
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
@location_options
@pass_ctx
def current(ctx: CliContext) -> None:
    """Show the schema revision of the database and the newest one known."""
    click.echo(f"database: {migrate.current(ctx.app().db) or '(empty)'}  newest: {migrate.head()}")
