"""``appliance acme``: the operator's view of ACME accounts (and revoking one), and pruning
ACME state that ended long ago."""

from __future__ import annotations

from datetime import timedelta

import click

from appliance import durations
from appliance.cli.context import (
    CliContext,
    cell,
    duration_callback,
    emit_json,
    location_options,
    pass_ctx,
    table,
)
from appliance.cli.officers import operator_option
from appliance.ops import acme_accounts, acme_retention
from appliance.ops import fips as fips_ops
from appliance.runtime import cli_actor


@click.group()
def acme() -> None:
    """ACME (directories at /acme/<provisioner>/directory): accounts, pruning."""


@acme.group()
def account() -> None:
    """ACME accounts: list, show, revoke."""


@account.command("list")
@click.option("--provisioner", default=None, help="Only accounts of this ACME provisioner.")
@click.option("--status", type=click.Choice(acme_accounts.STATUSES), default=None)
@click.option("--limit", type=click.IntRange(1, acme_accounts.MAX_LIST), default=100,
              show_default=True, help="At most this many, newest first.")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, provisioner: str | None, status: str | None, limit: int,
             as_json: bool) -> None:
    rows = acme_accounts.list_accounts(ctx.app(), provisioner, status, limit)
    if as_json:
        emit_json(rows)
        return
    table([{**r, "contact": ",".join(r["contact"]), "eab": r["eab_reference"] or ""}
           for r in rows],
          ["id", "provisioner", "status", "eab", "contact", "orders", "certificates",
           "created_at"])


@account.command("show")
@click.argument("account_id")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, account_id: str, as_json: bool) -> None:
    """An account and its most recent orders."""
    found = acme_accounts.show(ctx.app(), account_id)
    if as_json:
        emit_json(found)
        return
    for key in ("id", "provisioner", "status", "eab_key", "eab_reference", "contact",
                "thumbprint", "created_at", "orders", "certificates"):
        value = found[key]
        click.echo(f"{key + ':':15s}{', '.join(value) if isinstance(value, list) else cell(value)}")
    click.echo("recent orders:")
    table([{**o, "identifiers": ",".join(o["identifiers"]),
            "certificate_serial": o["certificate_serial"] or ""}
           for o in found["recent_orders"]],
          ["id", "status", "identifiers", "certificate_serial", "created_at"])


@account.command("revoke")
@click.argument("account_id")
@click.option("--reason", required=True, help="Why (kept in the audit log).")
@operator_option
@location_options
@pass_ctx
def revoke_cmd(ctx: CliContext, account_id: str, reason: str, operator_spec: str | None) -> None:
    """Refuse every later request of this account; its certificates stay valid (revoke
    them with `appliance revoke SERIAL`, serials from `acme account show`)."""
    actor = fips_ops.require_operator(ctx.app(), "acme account revoke", operator_spec)
    done = acme_accounts.revoke(ctx.app(), account_id, actor, reason)
    click.echo(f"ACME account {done['id']} revoked at {done['revoked_at']}")


@acme.command("prune")
@click.option("--older-than", default=None, callback=duration_callback, metavar="DURATION",
              help="Delete what ended longer ago than this (e.g. 30d; default acme.retention).")
@click.option("--dry-run", is_flag=True, help="Only count what would go.")
@click.option("--json", "as_json", is_flag=True)
@operator_option
@location_options
@pass_ctx
def prune_cmd(ctx: CliContext, older_than: int | None, dry_run: bool, as_json: bool,
              operator_spec: str | None) -> None:
    """Delete ACME orders that ended long ago (failed or expired, or valid with an expired
    certificate; their authorizations and challenges go too) and spent nonces. Certificates,
    accounts and the audit log are kept. Run daily by appliance-acme-prune.timer."""
    # A dry run only counts: no role needed.
    actor = cli_actor() if dry_run else fips_ops.require_operator(ctx.app(), "acme prune",
                                                                  operator_spec)
    app = ctx.app()
    seconds = older_than or durations.parse(app.settings.config.acme.retention)
    done = acme_retention.prune(app, timedelta(seconds=seconds), actor, dry_run=dry_run)
    if as_json:
        emit_json(done.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(f"{verb}: {done.orders_ended} ended orders, {done.orders_expired_certificate} "
               f"orders of expired certificates (before {done.cutoff}), {done.nonces} spent "
               "nonces")
