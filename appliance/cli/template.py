"""``appliance template``: named certificate templates (sandboxed Jinja2 producing JSON)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table
from appliance.cli.officers import operator_option
from appliance.ops import fips as fips_ops
from appliance.ops import templates
from appliance.templates import trial

MAX_TEMPLATE_BYTES = 64 * 1024
MAX_SAMPLE_DATA_BYTES = 64 * 1024

_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_sample_data_option = click.option(
    "--data", "data_file", type=_FILE, default=None,
    help="JSON object given to the sample requests as templateData (for templates that "
         "read data.*).")


def _read_template(file: Path) -> str:
    if file.stat().st_size > MAX_TEMPLATE_BYTES:
        raise click.ClickException(f"{file} is larger than {MAX_TEMPLATE_BYTES} bytes")
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise click.ClickException(f"{file} is not UTF-8 text") from None


def _read_data(file: Path | None) -> dict[str, Any] | None:
    if file is None:
        return None
    if file.stat().st_size > MAX_SAMPLE_DATA_BYTES:
        raise click.BadParameter(f"{file} is larger than {MAX_SAMPLE_DATA_BYTES} bytes",
                                 param_hint="--data")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise click.BadParameter(f"{file} is not JSON: {exc}", param_hint="--data") from None
    if not isinstance(data, dict):
        raise click.BadParameter(f"{file} must hold a JSON object", param_hint="--data")
    return data


def _report(outcomes: list[trial.SampleOutcome]) -> None:
    for o in outcomes:
        click.echo(f"  sample {o.sample + ':':12} {o.outcome}: {o.detail}")
    failed = [o.sample for o in outcomes if o.outcome == "failed"]
    if failed:
        click.echo(f"warning: a request like the {' and '.join(failed)} sample would fail at "
                   "issuance with template_error (HTTP 500); refuse such requests with "
                   "fail(\"...\") to give requesters a clear 403", err=True)
    elif not any(o.outcome == "rendered" for o in outcomes):
        click.echo("warning: the template refused every sample request; check that it "
                   "issues what you expect (--data gives the samples templateData)", err=True)


_strict_option = click.option(
    "--strict", is_flag=True,
    help="Refuse the template if it fails on any sample (default: only if it renders for "
         "none).")


@click.group()
def template() -> None:
    """Certificate templates."""


@template.command("add")
@click.argument("name")
@click.argument("file", type=_FILE)
@click.option("--replace", is_flag=True, help="Replace a stored template of that name.")
@_sample_data_option
@_strict_option
@operator_option
@location_options
@pass_ctx
def add_cmd(ctx: CliContext, name: str, file: Path, replace: bool,
            data_file: Path | None, strict: bool, operator_spec: str | None) -> None:
    """Store FILE as template NAME, after trying it on sample requests (see `check`)."""
    actor = fips_ops.require_operator(ctx.app(), "template add", operator_spec)
    if not re.fullmatch(templates.NAME_PATTERN, name):
        raise click.BadParameter("lowercase letters, digits, '.', '_' and '-' (max 64)")
    outcomes = templates.add(ctx.app(), name, _read_template(file), actor,
                             replace=replace, sample_data=_read_data(data_file),
                             strict=strict)
    click.echo(f"template {name!r} stored")
    _report(outcomes)


@template.command("check")
@click.argument("file", type=_FILE)
@_sample_data_option
@_strict_option
@click.option("--json", "as_json", is_flag=True, help="Print the outcomes as JSON.")
def check_cmd(file: Path, data_file: Path | None, strict: bool, as_json: bool) -> None:
    """Render FILE for sample requests (TLS server, person, device) as issuance would.

    Prints each outcome (rendered, refused by fail(), failed); exits 1 when `template add`
    would refuse it (with --strict: when it fails on any sample). Changes nothing and needs
    no data directory."""
    outcomes = trial.check(file.name, _read_template(file), data=_read_data(data_file),
                           strict=strict)
    if as_json:
        emit_json([o.as_dict() for o in outcomes])
        return
    click.echo(f"{file}: can be stored")
    _report(outcomes)


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
@operator_option
@location_options
@pass_ctx
def remove_cmd(ctx: CliContext, name: str, operator_spec: str | None) -> None:
    actor = fips_ops.require_operator(ctx.app(), "template remove", operator_spec)
    templates.remove(ctx.app(), name, actor)
    click.echo(f"template {name!r} removed")
