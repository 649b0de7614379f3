"""``appliance template``: named certificate templates (sandboxed Jinja2 producing JSON)."""

from __future__ import annotations

import re
from pathlib import Path

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table
from appliance.ops import templates
from appliance.runtime import cli_actor

MAX_TEMPLATE_BYTES = 64 * 1024


@click.group()
def template() -> None:
    """Certificate templates."""


@template.command("add")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--replace", is_flag=True, help="Replace a stored template of that name.")
@location_options
@pass_ctx
def add_cmd(ctx: CliContext, name: str, file: Path, replace: bool) -> None:
    if not re.fullmatch(templates.NAME_PATTERN, name):
        raise click.BadParameter("lowercase letters, digits, '.', '_' and '-' (max 64)")
    if file.stat().st_size > MAX_TEMPLATE_BYTES:
        raise click.ClickException(f"{file} is larger than {MAX_TEMPLATE_BYTES} bytes")
    templates.add(ctx.app(), name, file.read_text(encoding="utf-8"), cli_actor(),
                  replace=replace)
    click.echo(f"template {name!r} stored")


@template.command("list")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, as_json: bool) -> None:
    rows = templates.list_all(ctx.app())
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["name", "source", "updated_at"])


@template.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True,
              help="Print name, source (stored or built-in), updated_at and text as JSON.")
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, name: str, as_json: bool) -> None:
    """Print the template issuance uses under NAME (a stored one before a built-in one)."""
    found = templates.describe(ctx.app(), name)
    if as_json:
        emit_json(found)
    else:
        click.echo(found["text"], nl=False)


@template.command("remove")
@click.argument("name")
@location_options
@pass_ctx
def remove_cmd(ctx: CliContext, name: str) -> None:
    templates.remove(ctx.app(), name, cli_actor())
    click.echo(f"template {name!r} removed")
