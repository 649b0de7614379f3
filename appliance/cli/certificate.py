"""``appliance cert``: find and inspect the certificates the CA issued."""

from __future__ import annotations

from typing import Any

import click

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
from appliance.ops import certificates as cert_ops
from appliance.ops import fips as fips_ops
from appliance.revocation.revoke import RevocationError, normalise_serial


def _name(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is not None and not 1 <= len(value) <= cert_ops.MAX_NAME:
        raise click.BadParameter(f"must be 1 to {cert_ops.MAX_NAME} characters")
    return value


def serial_callback(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    # Bad input is a usage error (exit 2) here, as every other malformed argument is.
    try:
        return normalise_serial(value)
    except RevocationError as exc:
        raise click.BadParameter(str(exc)) from None


def _when(value: str | None) -> str:
    return "-" if value is None else value[:19].replace("T", " ") + "Z"


@click.group("cert")
def cert() -> None:
    """Certificates the CA issued: list them with filters, or show one by serial."""


@cert.command("list")
@click.option("--provisioner", default=None, help="Only those issued through this provisioner.")
@click.option("--authority", default=None, help="Only those signed by this CA.")
@click.option("--status", type=click.Choice(cert_ops.STATUSES), default=None,
              help="issued = issued and not yet expired; expired = issued and past notAfter "
                   "(revoked ones stay revoked); failed/reserved = signing failed or never "
                   "finished.")
@click.option("--name", default=None, callback=_name,
              help="Case-insensitive substring of the subject or of any SAN "
                   f"(at most {cert_ops.MAX_NAME} characters).")
@click.option("--expiring-within", default=None, callback=duration_callback, metavar="DURATION",
              help="Only issued certificates, still valid, that expire within DURATION "
                   "(e.g. 30d, 12h).")
@click.option("--limit", type=click.IntRange(1, cert_ops.MAX_LIMIT),
              default=cert_ops.DEFAULT_LIMIT, show_default=True,
              help=f"At most this many (up to {cert_ops.MAX_LIMIT}), newest first.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, provisioner: str | None, authority: str | None,
             status: str | None, name: str | None, expiring_within: int | None, limit: int,
             as_json: bool) -> None:
    """Certificates the CA issued, newest first; every filter given must match."""
    if expiring_within is not None and status not in (None, "issued"):
        raise click.UsageError(f"--expiring-within selects issued certificates; it cannot be "
                               f"combined with --status {status}")
    rows = cert_ops.list_certificates(ctx.app(), provisioner=provisioner, authority=authority,
                                      status=status, name=name,
                                      expiring_within=expiring_within, limit=limit)
    if as_json:
        emit_json(rows)
        return
    shown: list[dict[str, Any]] = [
        {"serial": r["serial"], "status": r["status"],
         "subject / first SAN": r["subject"] or (r["sans"][0] if r["sans"] else ""),
         "not after": _when(r["not_after"]),
         "provisioner": r["provisioner"], "authority": r["authority"]}
        for r in rows]
    table(shown, ["serial", "status", "subject / first SAN", "not after", "provisioner",
                  "authority"])
    if len(rows) == limit:
        click.echo(f"(first {limit}; narrow the filters or raise --limit for more)", err=True)


@cert.command("show")
@click.argument("serial", callback=serial_callback)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.option("--pem", "as_pem", is_flag=True, help="Print only the certificate, PEM-encoded.")
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, serial: str, as_json: bool, as_pem: bool) -> None:
    """One certificate by hexadecimal SERIAL (any case, colons allowed, as `revoke` takes)."""
    if as_json and as_pem:
        raise click.UsageError("--json and --pem exclude each other")
    info = cert_ops.show(ctx.app(), serial)
    if as_pem:
        if info["pem"] is None:
            raise click.ClickException(f"certificate {info['serial']} was never signed "
                                       f"(status {info['status']}): there is no PEM")
        click.echo(info["pem"], nl=False)
        return
    if as_json:
        emit_json(info)
        return
    status = info["status"]
    if status == "expired":
        status = "expired (issued, past its notAfter)"
    lines = [
        ("serial", info["serial"]),
        ("status", status),
        ("subject", info["subject"] or "-"),
        ("SANs", ", ".join(info["sans"]) or "-"),
        ("not before", _when(info["not_before"])),
        ("not after", _when(info["not_after"])),
        ("authority", info["authority"]),
        ("provisioner", info["provisioner"]),
        ("requester", info["requester"]),
        ("path", " → ".join([*info["ra_path"], "CA"]) if info.get("ra_path") else "-"),
        ("template", info["template"]),
        ("inventory record", "-" if info["inventory_record_id"] is None else
         f"{info['inventory_record_id']}"
         + (f" ({info['inventory_record']})" if info["inventory_record"] else "")),
        ("fingerprint", info["fingerprint_sha256"] or "-"),
        ("renewed from", info["renewed_from"] or "-"),
        ("reserved at", _when(info["reserved_at"])),
        ("issued at", _when(info["issued_at"])),
        ("revoked at", _when(info["revoked_at"])),
        ("revocation reason", info["revocation_reason"] or "-"),
    ]
    width = max(len(k) for k, _ in lines) + 1
    for key, value in lines:
        click.echo(f"{(key + ':').ljust(width)} {cell(value)}")


@cert.command("reconcile")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@operator_option
@location_options
@pass_ctx
def reconcile_cmd(ctx: CliContext, as_json: bool, operator_spec: str | None) -> None:
    """End reservations older than the reservation timeout as failed (audited).

    The service's sweeper does this on its own in every API worker; this is for a node
    whose service is stopped, or to settle them now. Safe while the service runs."""
    actor = fips_ops.require_operator(ctx.app(), "cert reconcile", operator_spec)
    from appliance.issuance.pipeline import Issuer, reservation_timeout

    app = ctx.app()
    ended = Issuer(app).reconcile_abandoned(actor)
    timeout = reservation_timeout(app.settings.config)
    if as_json:
        emit_json({"ended": ended, "timeout_seconds": timeout})
        return
    click.echo(f"ended {ended} reservation(s) older than {timeout} s as failed")
