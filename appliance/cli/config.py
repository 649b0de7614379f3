"""``appliance config``: the configuration in force."""

from __future__ import annotations

import os

import click

from appliance import config_doc
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx


@click.group("config")
def config_group() -> None:
    """The configuration file (appliance.yaml)."""


@config_group.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, as_json: bool) -> None:
    """Print every setting in force (defaults included; passwords in URLs redacted).

    The YAML form carries each setting's explanation and bounds, as `init` writes it."""
    settings = ctx.app().settings
    values = config_doc.effective(settings)
    if as_json:
        emit_json({"path": str(settings.path) if settings.path else None, "config": values})
        return
    header = "\n".join([
        f"The configuration in force, read from {settings.path}",
        *(["database.url: from APPLIANCE_DATABASE_URL"]
          if os.environ.get("APPLIANCE_DATABASE_URL") else []),
        f"Passwords in URLs are shown as {config_doc.REDACTED}."])
    click.echo(config_doc.document(values, header), nl=False)

