"""``appliance audit``: checkpoints, verification and export for auditors."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from sqlalchemy import select

from appliance.audit import anchor, export, keyfile, verify
from appliance.audit.anchor import Checkpoint
from appliance.audit.keyfile import ExportedKey
from appliance.audit.record import utc_now
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx
from appliance.errors import AuditError
from appliance.runtime import cli_actor
from appliance.store.models import AuditCheckpoint
from appliance.x509.algorithms import PublicKey


@click.group()
def audit() -> None:
    """The tamper-evident audit log."""


@audit.command()
@click.option("--if-needed", is_flag=True,
              help="Only when audit.checkpoint_every / checkpoint_interval_seconds say one is due "
                   "(for a frequent timer).")
@location_options
@pass_ctx
def checkpoint(ctx: CliContext, if_needed: bool) -> None:
    """Sign the current head of this node's chain with the audit key now, and anchor it (token
    object, anchor file, syslog)."""
    app = ctx.app()
    audit_log = app.audit_log(signing=True)
    with app.db.transaction() as s:
        if if_needed and not audit_log.checkpoint_due(s):
            click.echo(f"no checkpoint due for {audit_log.node_id}")
            return
        cp = audit_log.checkpoint(s, cli_actor())
    click.echo(f"checkpoint at record {cp.seq} of {cp.node_id}: {cp.head_hash} "
               f"signed by {cp.key_label!r} ({cp.algorithm})")


@audit.command("verify")
@click.option("--public-key", "public_key_path", type=click.Path(exists=True, path_type=Path),
              help="PEM of the audit public key, or the file export-key wrote (to verify "
                   "without the token; the token's anchor is then not read).")
@click.option("--export", "export_path", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path),
              help="Verify this exported JSONL offline (no database, no token); needs "
                   "--public-key.")
@click.option("--anchors", "anchors_path", type=click.Path(exists=True, dir_okay=False,
                                                           path_type=Path),
              help="An anchor file to check against (default: the configured audit.anchor_file).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def verify_cmd(ctx: CliContext, public_key_path: Path | None, export_path: Path | None,
               anchors_path: Path | None, as_json: bool) -> None:
    """Check every record, checkpoint and anchor. Exit 0 if intact, 1 naming the first bad
    record, a gap, a missing tail or a rollback."""
    keys: list[PublicKey] = []
    checkpoints: list[Checkpoint] = []
    if public_key_path is not None:
        try:
            keys, checkpoints = keyfile.parse(public_key_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise click.BadParameter(str(exc), param_hint="--public-key") from None
    try:
        if export_path is not None:
            if not keys:
                raise click.UsageError("--export needs --public-key (offline: no token)")
            anchors = anchor.read_file(anchors_path) if anchors_path is not None else []
            known = {cp.line(): cp for cp in [*checkpoints, *(a.checkpoint for a in anchors)]}
            report = verify.verify_export(verify.read_export(export_path), keys,
                                          list(known.values()), anchors)
        else:
            app = ctx.app()
            if not keys:
                keys = [app.audit_public_key()]
                anchors = app.audit_anchors(anchors_path)
            else:  # without the token: the anchor file only
                path = anchors_path or app.anchor_file()
                anchors = anchor.read_file(path) if path is not None and path.exists() else []
            if public_key_path is not None:  # checkpoints an auditor kept count as anchors
                anchors += [anchor.Anchor(cp, f"key file {public_key_path.name}")
                            for cp in checkpoints]
            with app.db.sessions() as s:
                report = verify.verify(s, keys, anchor.unique(anchors))
    except (AuditError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        emit_json(report.as_dict())
    else:
        for p in report.problems:
            where = f"record {p.seq}" if p.seq is not None else "log"
            ref = "line" if export_path is not None else "id"
            click.echo(f"BAD  node {p.node_id} {where} ({ref} {p.record_id}): {p.message}")
        state = "intact" if report.ok else "TAMPERED"
        click.echo(f"{report.records} records, {report.checkpoints} checkpoints, "
                   f"{report.anchors} anchors, {len(report.nodes)} node(s): {state}")
    ctx.close()
    raise SystemExit(0 if report.ok else 1)


@audit.command("export-key")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Write to this new file instead of stdout.")
@location_options
@pass_ctx
def export_key(ctx: CliContext, out: Path | None) -> None:
    """Export the audit public key (PEM) and every signed checkpoint, for offline
    verification of an exported log (audit verify --export LOG --public-key FILE)."""
    app = ctx.app()
    label = app.settings.config.audit.key_label
    key = ExportedKey(app.node_id, label, app.audit_public_key())
    with app.db.sessions() as s:
        cps = [Checkpoint(c.node_id, c.seq, c.head_hash, c.time, c.key_label, c.spki_sha256,
                          c.algorithm, c.signature)
               for c in s.scalars(select(AuditCheckpoint)
                                  .order_by(AuditCheckpoint.node_id, AuditCheckpoint.seq))]
    text = keyfile.render([key], cps, utc_now())
    if out is None:
        click.echo(text, nl=False)
    else:
        with out.open("x", encoding="utf-8") as f:
            f.write(text)
        click.echo(f"audit key {label!r} and {len(cps)} checkpoint(s) written to {out}")
    ctx.close()


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
