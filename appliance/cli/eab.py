"""``appliance eab``: External Account Binding keys for ACME provisioners."""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table
from appliance.cli.officers import operator_option
from appliance.ops import eab as eab_ops
from appliance.ops import fips as fips_ops


@click.group()
def eab() -> None:
    """External Account Binding keys: each ties ACME accounts to an identity you made."""


@eab.command("add")
@click.option("--provisioner", required=True, help="The ACME provisioner.")
@click.option("--reference", required=True, help="Who this key is for (e.g. team-a).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False,
                                                          path_type=Path),
              help="Name policy for accounts bound to this key (as in `policy set`).")
@click.option("--json", "as_json", is_flag=True)
@operator_option
@location_options
@pass_ctx
def add_cmd(ctx: CliContext, provisioner: str, reference: str, policy_file: Path | None,
            as_json: bool, operator_spec: str | None) -> None:
    """Make a key; its HMAC key is printed once and cannot be shown again."""
    actor = fips_ops.require_operator(ctx.app(), "eab add", operator_spec)
    text = policy_file.read_text(encoding="utf-8") if policy_file else None
    new = eab_ops.add(ctx.app(), provisioner, reference, actor, policy_text=text)
    if as_json:
        emit_json({"key_id": new.key_id, "hmac_key": new.hmac_key_b64,
                   "provisioner": new.provisioner, "reference": new.reference})
        return
    click.echo(f"key id:   {new.key_id}")
    click.echo(f"hmac key: {new.hmac_key_b64}")
    click.echo("(the HMAC key is shown this once; give both to the account holder)")


@eab.command("list")
@click.option("--provisioner", default=None)
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, provisioner: str | None, as_json: bool) -> None:
    rows = eab_ops.list_all(ctx.app(), provisioner)
    if as_json:
        emit_json(rows)
    else:
        table(rows, ["key_id", "provisioner", "reference", "status", "policy", "account"])


@eab.command("revoke")
@click.argument("key_id")
@operator_option
@location_options
@pass_ctx
def revoke_cmd(ctx: CliContext, key_id: str, operator_spec: str | None) -> None:
    """Revoke a key; an account bound to it can no longer order or revoke."""
    actor = fips_ops.require_operator(ctx.app(), "eab revoke", operator_spec)
    eab_ops.revoke(ctx.app(), key_id, actor)
    click.echo(f"EAB key {key_id} revoked")
