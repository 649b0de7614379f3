"""``appliance audit``: checkpoints, verification and export for auditors."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from appliance.audit import export, verify
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx
from appliance.cli.keys import load_public_key
from appliance.runtime import cli_actor


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command()
@location_options
@pass_ctx
def checkpoint(ctx: CliContext) -> None:
    """Sign the current head of this node's chain with the audit key now."""
    app = ctx.app()
    audit_log = app.audit_log(signing=True)
    with app.db.transaction() as s:
        cp = audit_log.checkpoint(s, cli_actor())
    click.echo(f"checkpoint at record {cp.seq} of {cp.node_id}: {cp.head_hash} "
               f"signed by {cp.key_label!r} ({cp.algorithm})")


@audit.command("verify")
@click.option("--public-key", "public_key_path", type=click.Path(exists=True, path_type=Path),
              help="PEM of the audit public key (to verify without the token).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def verify_cmd(ctx: CliContext, public_key_path: Path | None, as_json: bool) -> None:
    """Check every record and checkpoint. Exit 0 if intact, 1 naming the first bad record."""
    app = ctx.app()
    public_key = (load_public_key(public_key_path) if public_key_path is not None
                  else app.audit_public_key())
    with app.db.sessions() as s:
        report = verify.verify(s, public_key)
    if as_json:
        emit_json(report.as_dict())
    else:
        for p in report.problems:
            where = f"record {p.seq}" if p.seq is not None else "log"
            click.echo(f"BAD  node {p.node_id} {where} (id {p.record_id}): {p.message}")
        state = "intact" if report.ok else "TAMPERED"
        click.echo(f"{report.records} records, {report.checkpoints} checkpoints, "
                   f"{len(report.nodes)} node(s): {state}")
    ctx.close()
    raise SystemExit(0 if report.ok else 1)


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl"]), default="jsonl", show_default=True)
@click.option("--since", default=None, help="Only records at or after this ISO 8601 time.")
@click.option("--node", default=None, help="Only this node's records.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write to this new file instead of stdout.")
@location_options
@pass_ctx
def export_cmd(ctx: CliContext, fmt: str, since: str | None, node: str | None,
               out: Path | None) -> None:
    """Export records as JSON lines, with the hashes to re-verify them elsewhere."""
    try:
        since_norm = export.parse_since(since) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    app = ctx.app()
    stream = sys.stdout if out is None else out.open("x", encoding="utf-8")
    try:
        with app.db.sessions() as s:
            for line in export.export_jsonl(s, since_norm, node):
                stream.write(line + "\n")
    finally:
        if out is not None:
            stream.close()
