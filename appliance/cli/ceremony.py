"""``appliance ceremony``: run, dry-run and verify key ceremonies."""

from __future__ import annotations

import contextlib
import getpass
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from appliance.ceremony import plan, transcript
from appliance.ceremony import script as script_mod
from appliance.ceremony.runner import CeremonyRunner
from appliance.cli.context import CliContext, emit_json, location_options, pass_ctx
from appliance.cli.keys import load_public_key
from appliance.cli.officers import officer_option
from appliance.errors import ConfigError
from appliance.fips import quorum
from appliance.ops import fips as fips_ops
from appliance.runtime import Appliance, cli_actor
from appliance.x509 import algorithms

# Step types that make or use a CA key: in FIPS mode their ceremony needs the crypto
# officers' quorum (fips.quorum) before it starts, on top of the script's own quorums.
KEY_STEPS = frozenset({"key", "root", "intermediate", "cross-certificate", "ocsp-signer",
                       "sign-csr", "csr", "crl"})


@click.group()
def ceremony() -> None:
    """Key ceremonies."""


def terminal_authenticator(request: quorum.QuorumRequest) -> list[tuple[str, str]]:
    """Each officer types their name and secret. From a terminal the secret is not echoed;
    from a pipe (automation, tests) names and secrets are read as alternate lines."""
    presented = []
    tty = sys.stdin.isatty()
    for i in range(request.required):
        prompt = f"officer {i + 1} of {request.required} for step {request.step_id}"
        if tty:
            name = input(f"{prompt}, name: ").strip()
            secret = getpass.getpass(f"secret for {name}: ")
        else:
            name = sys.stdin.readline().strip()
            secret = sys.stdin.readline().rstrip("\n")
            click.echo(f"{prompt}: {name}")
        presented.append((name, secret))
    return presented


def load_audited(app: Appliance | None, path: Path) -> script_mod.LoadedScript:
    """The script, validated; a refusal by the mode's algorithm table (FIPS: an RSA-2048
    root valid past 2030, say) is audited as ``ceremony.refused`` before it is reported,
    and no token session has been opened (issue 14)."""
    try:
        return script_mod.load(path)
    except ConfigError as exc:
        if app is not None and algorithms.names_a_refusal(str(exc)):
            with app.db.transaction() as db:
                app.audit_log().append(db, "ceremony.refused", cli_actor(), outcome="denied",
                                       object_ids={"script": str(path)},
                                       details={"reason": str(exc)[:1000]})
        raise


def run_ceremony(app: Appliance, path: Path, out: Path | None) -> Path:
    """Print the plan, then run every step; returns the signed transcript's path."""
    loaded = load_audited(app, path)
    for line in plan.describe(loaded):
        click.echo(line)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    record = out or app.settings.base_dir / "ceremonies" / f"{stamp}-{loaded.ceremony.name}"
    runner = CeremonyRunner(app, loaded, record, cli_actor(), terminal_authenticator, click.echo)
    result = runner.run()
    click.echo(f"ceremony complete; record and signed transcript in {record}")
    return result


@ceremony.command("run")
@click.argument("script", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Print the plan; touch neither token nor files.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Ceremony record folder (default DATA/ceremonies/<UTC time>-<name>).")
@officer_option
@location_options
@pass_ctx
def run_cmd(ctx: CliContext, script: Path, dry_run: bool, out: Path | None,
            officer_specs: tuple[str, ...]) -> None:
    """Run a ceremony script (plan first, then each step). In FIPS mode a ceremony that
    makes or uses CA keys needs the registered crypto officers' quorum (--officer)."""
    if dry_run:
        # The app installs the mode's algorithm table (FIPS refuses here too); without a
        # configuration the plan is read under the default table, as before.
        with contextlib.suppress(ConfigError):
            ctx.app()
        loaded = load_audited(None, script)  # a dry run writes nothing, not even an audit row
        for line in plan.describe(loaded):
            click.echo(line)
        click.echo("dry run: nothing was created, signed or written")
        return
    app = ctx.app()
    if fips_ops.fips_enabled(app):
        loaded = load_audited(app, script)  # a table refusal is audited before any quorum
        if any(step.type in KEY_STEPS for step in loaded.ceremony.steps):
            fips_ops.require_quorum(app, "ceremony run",
                                    fips_ops.presented_officers(officer_specs), cli_actor(),
                                    {"ceremony": loaded.ceremony.name})
    run_ceremony(app, script, out)


@ceremony.command("verify")
@click.argument("transcript_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public-key", "public_key_path", type=click.Path(exists=True, path_type=Path),
              help="PEM of the audit public key (to verify without the token).")
@click.option("--allow-failed", is_flag=True,
              help="Exit 0 for an intact transcript of a refused or failed ceremony too.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def verify_cmd(ctx: CliContext, transcript_path: Path, public_key_path: Path | None,
               allow_failed: bool, as_json: bool) -> None:
    """Check a transcript's signature and every file it lists, and print the outcome it
    records. Exit 0 if intact and completed, 1 if not intact, 3 if intact but the ceremony
    was refused or failed (0 with --allow-failed)."""
    key = (load_public_key(public_key_path) if public_key_path is not None
           else ctx.app().audit_public_key())
    doc, problems = transcript.verify(transcript_path, key)
    # the outcome is only the transcript's word once its signature holds
    status, sentence = transcript.outcome(doc) if doc and not problems else ("unverified", "")
    if as_json:
        emit_json({"ok": not problems, "problems": problems,
                   "ceremony": doc.get("ceremony") if doc else None,
                   "status": status, "outcome": sentence or None,
                   "failed_step": doc.get("failed_step") if doc and not problems else None})
    else:
        for p in problems:
            click.echo(f"BAD  {p}")
        name = doc.get("ceremony") if doc else "?"
        if problems:
            click.echo(f"transcript of {name}: NOT VALID")
        else:
            click.echo(f"transcript of {name}: verified; ceremony {sentence}")
    ctx.close()
    if problems:
        raise SystemExit(1)
    raise SystemExit(0 if status == "completed" or (allow_failed and status != "unknown")
                     else 3)


@ceremony.command("officer-verifier")
def officer_verifier() -> None:
    """Make the verifier that goes into a script's ``officers:`` for one officer's secret."""
    if sys.stdin.isatty():
        secret = getpass.getpass("officer secret: ")
        if getpass.getpass("again: ") != secret:
            raise click.ClickException("the two secrets differ")
    else:
        secret = sys.stdin.readline().rstrip("\n")
    click.echo(quorum.make_verifier(secret))
