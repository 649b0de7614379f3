"""``appliance revoke`` and ``appliance crl``."""

from __future__ import annotations

import click

from appliance.cli.certificate import serial_callback
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx
from appliance.revocation import crl
from appliance.revocation.reasons import CODES
from appliance.revocation.revoke import revoke
from appliance.runtime import cli_actor


@click.command("revoke")
@click.argument("serial", callback=serial_callback)
@click.option("--reason", default="unspecified", show_default=True,
              type=click.Choice(list(CODES.values()), case_sensitive=False),
              help="RFC 5280 reason (certificateHold is not offered: revocation is final).")
@location_options
@pass_ctx
def revoke_cmd(ctx: CliContext, serial: str, reason: str) -> None:
    """Revoke the certificate with hexadecimal SERIAL; OCSP and the CRL change at once."""
    r = revoke(ctx.app(), serial, reason, cli_actor())
    click.echo(f"revoked {r.serial_hex} ({r.reason}) of {r.authority}; "
               f"OCSP {'re-signed' if r.ocsp_resigned else 'pending (pre-signer retries)'}; "
               f"CRL {'#' + str(r.crl_number) if r.crl_number else 'pending (timer retries)'}")


@click.group("crl")
def crl_group() -> None:
    """Certificate revocation lists."""


@crl_group.command("publish")
@click.option("--authority", default=None, help="Only this CA (default: every CA).")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def publish_cmd(ctx: CliContext, authority: str | None, as_json: bool) -> None:
    """Sign and publish a new full CRL (also run on revocation and by the timer)."""
    app = ctx.app()
    done = ([crl.publish(app, authority, cli_actor())] if authority
            else crl.publish_all(app, cli_actor()))
    if as_json:
        emit_json([{"authority": p.authority, "number": p.number, "entries": p.entries,
                    "this_update": p.this_update.isoformat(),
                    "next_update": p.next_update.isoformat(), "sha256": p.sha256}
                   for p in done])
        return
    for p in done:
        click.echo(f"{p.authority}: CRL #{p.number}, {p.entries} entries, next update "
                   f"{p.next_update:%Y-%m-%dT%H:%M:%SZ}")
