"""``appliance inventory``: hosts, services, people and devices."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table
from appliance.cli.officers import operator_option
from appliance.ops import fips as fips_ops
from appliance.ops import inventory as inv


@click.group()
def inventory() -> None:
    """Inventory records whose names and metadata feed templates and authorization."""


@inventory.command("add")
@click.argument("name")
@click.option("--kind", type=click.Choice(["host", "service", "person", "device"]),
              default="host", show_default=True)
@click.option("--owner", default="")
@click.option("--dns", multiple=True)
@click.option("--ip", multiple=True)
@click.option("--email", multiple=True)
@click.option("--uri", multiple=True)
@click.option("--cn", multiple=True)
@click.option("--meta", multiple=True, help="KEY=VALUE metadata (repeatable).")
@operator_option
@location_options
@pass_ctx
def add_cmd(ctx: CliContext, /, name: str, kind: str, owner: str, meta: tuple[str, ...],
            operator_spec: str | None, **names: tuple[str, ...]) -> None:
    actor = fips_ops.require_operator(ctx.app(), "inventory add", operator_spec)
    metadata: dict[str, Any] = {}
    for item in meta:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--meta")
        metadata[key] = value
    try:
        rec = inv.RecordIn.model_validate({
            "name": name, "kind": kind, "owner": owner, "metadata": metadata,
            "identifiers": {k: list(v) for k, v in names.items() if v}})
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    inv.add(ctx.app(), [rec], actor, "cli")
    click.echo(f"inventory record {name!r} added")


@inventory.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["auto", "csv", "yaml"]), default="auto")
@operator_option
@location_options
@pass_ctx
def import_cmd(ctx: CliContext, file: Path, fmt: str, operator_spec: str | None) -> None:
    """Import records from CSV or YAML: all of them, or none if any is invalid."""
    actor = fips_ops.require_operator(ctx.app(), "inventory import", operator_spec)
    if file.stat().st_size > inv.MAX_IMPORT_BYTES:
        raise click.ClickException(f"{file} is larger than {inv.MAX_IMPORT_BYTES} bytes")
    text = file.read_text(encoding="utf-8")
    if fmt == "auto":
        fmt = "csv" if file.suffix.lower() == ".csv" else "yaml"
    records = inv.parse_csv(text, str(file)) if fmt == "csv" else inv.parse_yaml(text, str(file))
    n = inv.add(ctx.app(), records, actor, str(file))
    click.echo(f"imported {n} inventory record(s)")


@inventory.command("list")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, as_json: bool) -> None:
    with ctx.app().db.sessions() as db:
        rows = inv.list_all(db)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["names"] = " ".join(v for vs in r["identifiers"].values() for v in vs)[:60]
    table(rows, ["name", "kind", "owner", "names"])


@inventory.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, name: str, as_json: bool) -> None:
    with ctx.app().db.sessions() as db:
        out = inv.describe(db, inv.get(db, name))
    if as_json:
        emit_json(out)
    else:
        click.echo(json.dumps(out, indent=2))


@inventory.command("remove")
@click.argument("name")
@operator_option
@location_options
@pass_ctx
def remove_cmd(ctx: CliContext, name: str, operator_spec: str | None) -> None:
    actor = fips_ops.require_operator(ctx.app(), "inventory remove", operator_spec)
    inv.remove(ctx.app(), name, actor)
    click.echo(f"inventory record {name!r} removed")
