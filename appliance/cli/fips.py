"""``appliance fips``: officers and roles, sealing the installed code, the auditor's report.

Secrets are presented as files (``--officer NAME=FILE``, mode 0600, or
``$APPLIANCE_OFFICERS`` = ``NAME=FILE,NAME=FILE``), never as arguments. ``report`` and
``report --verify`` are an auditor's read-only commands: no quorum, nothing changed.
"""

from __future__ import annotations

from pathlib import Path

import click

from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx, table
from appliance.cli.keys import load_public_key
from appliance.cli.officers import officer_option
from appliance.fips import officers as off
from appliance.ops import fips as fips_ops
from appliance.ops import fips_report
from appliance.runtime import cli_actor


@click.group()
def fips() -> None:
    """The FIPS-style mode: officers, seal, auditor's report."""


@fips.group()
def officer() -> None:
    """Officers of this installation (crypto-officer, operator, auditor)."""


@officer.command("add")
@click.argument("name")
@click.option("--role", required=True, type=click.Choice(off.ROLES))
@click.option("--secret-file", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="File holding the new officer's secret (one line, mode 0600).")
@officer_option
@location_options
@pass_ctx
def officer_add(ctx: CliContext, name: str, role: str, secret_file: Path,
                officer_specs: tuple[str, ...]) -> None:
    """Register an officer (the secret's scrypt verifier is stored, never the secret). In
    FIPS mode a new crypto officer needs the quorum of the registered ones."""
    secret = off.read_secret_file(secret_file)
    app = ctx.app()
    presented = fips_ops.presented_officers(officer_specs) if role == off.CRYPTO_OFFICER \
        else []
    view = fips_ops.officer_add(app, name, role, secret, cli_actor(), presented)
    click.echo(f"officer {view.name!r} registered as {view.role}")


@officer.command("remove")
@click.argument("name")
@officer_option
@location_options
@pass_ctx
def officer_remove(ctx: CliContext, name: str, officer_specs: tuple[str, ...]) -> None:
    """Remove an officer (their verifier is forgotten; the record stays)."""
    app = ctx.app()
    view = fips_ops.officer_remove(app, name, cli_actor(),
                                   fips_ops.presented_officers(officer_specs))
    click.echo(f"officer {view.name!r} ({view.role}) removed")


@officer.command("list")
@click.option("--all", "include_removed", is_flag=True, help="Include removed officers.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def officer_list(ctx: CliContext, include_removed: bool, as_json: bool) -> None:
    """The officers and their roles."""
    rows = [o.as_dict() for o in fips_ops.officer_list(ctx.app(),
                                                       include_removed=include_removed)]
    if as_json:
        emit_json(rows)
        return
    table(rows, ["name", "role", "status", "added_at"])


@fips.command("seal")
@officer_option
@click.option("--json", "as_json", is_flag=True, help="Print the seal as JSON.")
@location_options
@pass_ctx
def seal_cmd(ctx: CliContext, officer_specs: tuple[str, ...], as_json: bool) -> None:
    """Crypto officers approve the manifest of the installed code; the audit key signs it."""
    app = ctx.app()
    doc = fips_ops.seal(app, fips_ops.presented_officers(officer_specs), cli_actor())
    if as_json:
        emit_json({k: v for k, v in doc.items() if k != "manifest"})
        return
    officers = doc.get("officers")
    names = [str(o) for o in officers] if isinstance(officers, list) else []
    click.echo(f"manifest {doc['sha256']} sealed with key {doc['key_label']!r}"
               + (f" by {', '.join(names)}" if names else ""))


@fips.command("report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the signed report here (default: standard output).")
@click.option("--verify", "verify_path", default=None,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Check a report's signature instead: OK, or the failure and exit 1.")
@click.option("--public-key", "public_key_path", type=click.Path(exists=True, path_type=Path),
              help="With --verify: PEM of the audit public key (verify without the token).")
@location_options
@pass_ctx
def report_cmd(ctx: CliContext, out: Path | None, verify_path: Path | None,
               public_key_path: Path | None) -> None:
    """Everything an auditor checks, in one JSON document signed by the audit key."""
    if verify_path is not None:
        key = (load_public_key(public_key_path) if public_key_path is not None
               else ctx.app().audit_public_key())
        report, problems = fips_report.verify(verify_path, key)
        for p in problems:
            click.echo(f"BAD  {p}")
        when = report.get("generated_at", "?") if report else "?"
        click.echo(f"report of {when}: {'NOT VALID' if problems else 'OK'}")
        ctx.close()
        raise SystemExit(1 if problems else 0)
    if public_key_path is not None:
        raise click.UsageError("--public-key goes with --verify")
    app = ctx.app()
    raw = fips_report.dumps(fips_report.sign(app, fips_report.build(app)))
    if out is None:
        click.echo(raw.decode(), nl=False)
        return
    out.write_bytes(raw)
    click.echo(f"signed report written to {out}")
