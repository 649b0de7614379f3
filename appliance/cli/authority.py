"""``appliance authority``: the CAs the appliance knows."""

from __future__ import annotations

import click

from appliance.ca import authorities
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table


@click.group()
def authority() -> None:
    """Certificate authorities."""


@authority.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, as_json: bool) -> None:
    """Name, kind, subject, key, algorithm, validity, parent and fingerprint of each CA."""
    with ctx.app().db.sessions() as s:
        rows = [a.as_dict() for a in authorities.list_all(s)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["valid until"] = r["not_after"][:10]
        r["fingerprint"] = r["fingerprint_sha256"][:16]
    table(rows, ["name", "kind", "subject", "key_label", "algorithm", "valid until", "parent",
                 "status", "fingerprint"])
