"""``appliance revoke`` and ``appliance crl``."""

from __future__ import annotations

import time
from pathlib import Path

import click

from appliance.ca import crl_points
from appliance.cli.certificate import serial_callback
from appliance.cli.context import (
    CliContext,
    emit_json,
    location_options,
    make_progress,
    pass_ctx,
    progress_option,
)
from appliance.cli.officers import operator_option
from appliance.ops import fips as fips_ops
from appliance.revocation import crl
from appliance.revocation.reasons import CODES
from appliance.revocation.revoke import revoke


@click.command("revoke")
@click.argument("serial", callback=serial_callback)
@click.option("--reason", default="unspecified", show_default=True,
              type=click.Choice(list(CODES.values()), case_sensitive=False),
              help="RFC 5280 reason (certificateHold is not offered: revocation is final).")
@operator_option
@location_options
@pass_ctx
def revoke_cmd(ctx: CliContext, serial: str, reason: str, operator_spec: str | None) -> None:
    """Revoke the certificate with hexadecimal SERIAL; OCSP and the CRL change at once."""
    actor = fips_ops.require_operator(ctx.app(), "revoke", operator_spec)
    r = revoke(ctx.app(), serial, reason, actor)
    click.echo(f"revoked {r.serial_hex} ({r.reason}) of {r.authority}; "
               f"OCSP {'re-signed' if r.ocsp_resigned else 'pending (pre-signer retries)'}; "
               f"CRL {'#' + str(r.crl_number) if r.crl_number else 'pending (timer retries)'}")


@click.group("crl")
def crl_group() -> None:
    """Certificate revocation lists."""


@crl_group.command("publish")
@click.argument("authority_arg", metavar="[AUTHORITY]", required=False)
@click.option("--authority", default=None, help="Only this CA (default: every CA).")
@click.option("--shard", type=click.IntRange(0, crl_points.MAX_SHARD), default=None,
              help="Only this shard of the CA's sharded CRLs (revocation.crl_shards).")
@click.option("--due", is_flag=True,
              help="Only the CRLs that are due: missing, older than "
                   "revocation.crl_republish, or older than a revocation in them.")
@click.option("--json", "as_json", is_flag=True)
@progress_option
@operator_option
@location_options
@pass_ctx
def publish_cmd(ctx: CliContext, authority_arg: str | None, authority: str | None,
                shard: int | None, due: bool, as_json: bool, progress: bool | None,
                operator_spec: str | None) -> None:
    """Sign and publish new full CRLs (also run on revocation and by the timer).

    Without AUTHORITY: every CA, each shard of an issuing CA too; with it: that CA's
    CRLs (all its shards), with --shard only that shard's. Each step (reading, linting,
    signing, storing) is reported on stderr when it is a terminal (or with --progress);
    a summary line ends the output."""
    if authority_arg and authority and authority_arg != authority:
        raise click.UsageError("AUTHORITY and --authority name different CAs")
    authority = authority or authority_arg
    if shard is not None and not authority:
        raise click.UsageError("--shard needs the AUTHORITY it is a shard of")
    if due and (authority or shard is not None):
        raise click.UsageError("--due looks at every CA; it takes no AUTHORITY or --shard")
    actor = fips_ops.require_operator(ctx.app(), "crl publish", operator_spec)
    app = ctx.app()
    report = make_progress(progress)
    started = time.monotonic()
    try:
        if due:
            done = crl.republish_due(app, actor, progress=report.step)
        elif authority and shard is not None:
            done = [crl.publish(app, authority, actor, shard=shard, progress=report.step)]
        elif authority:
            done = crl.publish_scopes(app, authority, actor, progress=report.step)
        else:
            done = crl.publish_all(app, actor, progress=report.step)
    finally:
        report.close()
    if as_json:
        emit_json([{"authority": p.authority, "shard": p.shard, "number": p.number,
                    "entries": p.entries, "this_update": p.this_update.isoformat(),
                    "next_update": p.next_update.isoformat(), "sha256": p.sha256}
                   for p in done])
        return
    for p in done:
        where = p.authority if p.shard is None else f"{p.authority} shard {p.shard}"
        click.echo(f"{where}: CRL #{p.number}, {p.entries} entries, next update "
                   f"{p.next_update:%Y-%m-%dT%H:%M:%SZ}")
    click.echo(f"published {len(done)} CRL{'' if len(done) == 1 else 's'} "
               f"({sum(p.entries for p in done)} entries) in {time.monotonic() - started:.2f}s")


@crl_group.command("import")
@click.argument("crl_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--authority", required=True,
              help="The CA that signed it elsewhere (e.g. an offline root: its crl ceremony).")
@operator_option
@location_options
@pass_ctx
def import_cmd(ctx: CliContext, crl_file: Path, authority: str, operator_spec: str | None) -> None:
    """Publish a CRL signed on another node (checked: issuer, signature, newer number)."""
    actor = fips_ops.require_operator(ctx.app(), "crl import", operator_spec)
    with crl_file.open("rb") as fh:  # bounded: one byte more than the limit says "too large"
        data = fh.read(crl.MAX_IMPORTED_CRL_BYTES + 1)
    p = crl.import_signed(ctx.app(), authority, data, actor)
    click.echo(f"{p.authority}: CRL #{p.number} published, {p.entries} entries, next update "
               f"{p.next_update:%Y-%m-%dT%H:%M:%SZ}")
