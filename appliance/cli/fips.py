"""``appliance fips``: the FIPS-style mode of this installation.

One group, ``fips``; each command is self-contained. ``status`` only reads: it runs on a node
whose configuration disagrees with the recorded mode (which is when it is needed most) and
never uses a key. Officers present secrets as files (``--officer NAME=FILE``, mode 0600, or
``$APPLIANCE_OFFICERS`` = ``NAME=FILE,NAME=FILE``), never as arguments. ``report`` and
``report --verify`` are an auditor's read-only commands: no quorum, nothing changed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import click
from sqlalchemy import inspect, select

from appliance.cli.context import CliContext, emit_json, fields, location_options, pass_ctx, table
from appliance.cli.keys import load_public_key
from appliance.cli.officers import officer_option
from appliance.errors import ApplianceError
from appliance.fips import mode as fips_mode
from appliance.fips import officers as off
from appliance.hsm.module import token_text
from appliance.ops import fips as fips_ops
from appliance.ops import fips_report
from appliance.runtime import Appliance, cli_actor
from appliance.store.models import SelfTestRun
from appliance.x509 import algorithms


@click.group()
def fips() -> None:
    """The FIPS-style mode: status, self-tests, the sealed manifest, the auditor's report."""


# -- fips status ---------------------------------------------------------------------------

def _status_token(app: Appliance) -> dict[str, Any]:
    """The token the profile selects; opened for reading only (no key is used)."""
    try:
        token = app.pool.token
    except ApplianceError as exc:
        return {"label": None, "serial": None, "error": f"[{exc.code}] {exc}"}
    return {"label": token.label, "serial": token_text(token.serial)}


def _status_selftest(app: Appliance) -> dict[str, Any] | None:
    """The newest self-test run of this node (written by the self-tests), if any."""
    if not inspect(app.db.engine).has_table(SelfTestRun.__tablename__):
        return None
    with app.db.sessions() as db:
        run = db.execute(select(SelfTestRun).where(SelfTestRun.node_id == app.node_id)
                         .order_by(SelfTestRun.ran_at.desc(), SelfTestRun.id.desc())
                         .limit(1)).scalar_one_or_none()
    if run is None:
        return None
    try:
        results: Any = json.loads(run.results_json)
    except ValueError:
        results = run.results_json
    return {"trigger": run.trigger, "passed": run.passed, "ran_at": run.ran_at.isoformat(),
            "manifest_sha256": run.manifest_sha256, "results": results}


def _status_state(state: fips_mode.ModeState, selftest: dict[str, Any] | None) -> str:
    if not state.consistent:
        return "mode_mismatch"
    if selftest is None:
        return "not_selftested"
    return "operational" if selftest["passed"] else "error"


def _status_flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """The table's fields as ``name: value`` lines (nested groups as ``group.name``)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if dataclasses.is_dataclass(item) and not isinstance(item, type):
            out.update(_status_flat(item, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = "(none)" if item is None else item
    return out


@fips.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def status(ctx: CliContext, as_json: bool) -> None:
    """Mode (recorded and configured), state, newest self-test, token, approved algorithms."""
    app = ctx.app()
    state = fips_mode.state(app.settings, app.db)
    if state.consistent:
        app.require_mode()  # the table this node's processes run with
    selftest = _status_selftest(app)
    table = algorithms.current()
    doc: dict[str, Any] = {
        "mode": {"recorded": state.recorded, "configured": state.configured,
                 "consistent": state.consistent},
        "state": _status_state(state, selftest),
        "node_id": app.node_id,
        "token": _status_token(app),
        "selftest": selftest,
        "algorithms": table.as_json(),
    }
    if as_json:
        emit_json(doc)
        return
    mode_line: str = state.recorded
    if not state.consistent:
        mode_line = (f"MISMATCH: recorded {state.recorded}, configured {state.configured}; "
                     "this node refuses to start and to use a key")
    token = doc["token"]
    fields({
        "mode": mode_line,
        "state": doc["state"],
        "node": app.node_id,
        "token": token.get("error") or f"label {token['label']!r}, serial {token['serial']}",
        "last self-test": "none yet" if selftest is None else
        f"{'passed' if selftest['passed'] else 'FAILED'} ({selftest['trigger']}, "
        f"{selftest['ran_at']})",
    })
    if not state.consistent:
        why = fips_mode.mismatch_message(state.recorded, state.configured, app.settings)
        click.echo(f"  {why}")
    click.echo("approved algorithms (in force):")
    for name, value in _status_flat(table).items():
        text = ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
        click.echo(f"  {name:32}{text}")


@fips.command("selftest")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@location_options
@pass_ctx
def selftest_cmd(ctx: CliContext, as_json: bool) -> None:
    """Run the power-on self-tests now (audited, recorded for this node); exit 1 on a failure.

    A failure also stops this node's running service: its workers read the newest run of
    their node and answer 503 fips_error until restarted with passing tests."""
    from appliance.errors import ConfigError
    from appliance.fips import selftest

    app = ctx.app()
    if not app.settings.config.fips.enabled:
        raise ConfigError("this installation is not in FIPS mode (fips.enabled is false)")
    result = selftest.on_demand(app)
    if as_json:
        emit_json({"passed": result.passed, "manifest_sha256": result.manifest_sha256,
                   "tests": [{"name": c.name, "ok": c.ok, "detail": c.detail}
                             for c in result.checks],
                   "differences": result.differences})
    else:
        for c in result.checks:
            suffix = f"  {c.detail}" if c.detail else ""
            click.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.name}{suffix}")
        for d in result.differences[:20]:
            click.echo(f"      {d}")
        click.echo(f"manifest sha256 {result.manifest_sha256}")
        click.echo("self-tests passed" if result.passed else
                   f"self-tests FAILED: {', '.join(result.failed)}", err=not result.passed)
    ctx.close()
    raise SystemExit(0 if result.passed else 1)


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
