"""``appliance hsm``: token keys and self-tests."""

from __future__ import annotations

import click

from appliance.ca import keys as key_ops
from appliance.cli.context import (
    CliContext,
    emit_json,
    fields,
    location_options,
    pass_ctx,
    table,
)
from appliance.cli.officers import officer_option
from appliance.hsm import keys, selftest
from appliance.hsm.module import token_text
from appliance.ops import fips as fips_ops
from appliance.ops import zeroize as zeroize_ops
from appliance.runtime import cli_actor
from appliance.x509.algorithms import ALL_KEY_TYPES


@click.group()
def hsm() -> None:
    """The PKCS#11 token."""


@hsm.command()
@click.option("--label", required=True, help="Label of the new key pair (must be unused).")
@click.option("--type", "key_type", required=True, type=click.Choice(ALL_KEY_TYPES),
              help="Algorithm and size or curve.")
@click.option("--json", "as_json", is_flag=True, help="Print the key as JSON.")
@officer_option
@location_options
@pass_ctx
def genkey(ctx: CliContext, label: str, key_type: str, as_json: bool,
           officer_specs: tuple[str, ...]) -> None:
    """Generate a sign-only, non-extractable key pair in the token (in FIPS mode with the
    crypto officers' quorum)."""
    app, actor = ctx.app(), cli_actor()
    fips_ops.require_quorum(app, "hsm genkey", fips_ops.presented_officers(officer_specs),
                            actor, {"label": label, "key_type": key_type})
    info = key_ops.generate(app, label, key_type, actor)
    if as_json:
        emit_json(info.as_dict())
        return
    click.echo(f"generated {info.spec.name} key {info.label!r}")
    click.echo(f"  CKA_ID       {info.id.hex()}")
    click.echo(f"  SPKI SHA-256 {info.spki_sha256}")


@hsm.command("keys")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def list_keys(ctx: CliContext, as_json: bool) -> None:
    """List the key pairs in the token with their protection attributes."""
    rows = [k.as_dict() for k in keys.list_keys(ctx.app().pool)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["size/curve"] = r["curve"] or r["key_size"]
    table(rows, ["label", "id", "key_type", "size/curve", "sensitive", "extractable",
                 "always_sensitive", "never_extractable"])


@hsm.command("selftest")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def selftest_cmd(ctx: CliContext, as_json: bool) -> None:
    """Known-answer tests and a token sign/verify. Exit 0 if all pass, 1 otherwise."""
    checks = selftest.run(ctx.app().pool)
    ok = all(c.ok for c in checks)
    if as_json:
        emit_json({"ok": ok, "checks": [c.__dict__ for c in checks]})
    else:
        for c in checks:
            suffix = f"  {c.detail}" if c.detail else ""
            click.echo(f"{'PASS' if c.ok else 'FAIL'}  {c.name}{suffix}")
        click.echo("self-test passed" if ok else "self-test FAILED")
    ctx.close()
    raise SystemExit(0 if ok else 1)


@hsm.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@location_options
@pass_ctx
def info(ctx: CliContext, as_json: bool) -> None:
    """The token the profile selects."""
    app = ctx.app()
    token = app.pool.token
    out = {
        "profile": app.hsm_profile.name,
        "module": str(app.hsm_profile.module),
        "label": token.label,
        "serial": token_text(token.serial),
        "manufacturer": token.manufacturer_id,
        "model": token.model,
    }
    if as_json:
        emit_json(out)
    else:
        fields(out, 13)


@hsm.command()
@click.option("--label", default=None, help="Destroy this key pair (private and public).")
@click.option("--all", "everything", is_flag=True,
              help="Destroy every key and data object in the token, and wipe the "
                   "provisioners' sealed keys and the EAB secrets.")
@click.option("--yes", is_flag=True, help="Confirm (default mode; FIPS mode needs the "
              "crypto officers' quorum instead).")
@officer_option
@click.option("--json", "as_json", is_flag=True, help="Print what was destroyed as JSON.")
@location_options
@pass_ctx
def zeroize(ctx: CliContext, label: str | None, everything: bool, yes: bool,
            officer_specs: tuple[str, ...], as_json: bool) -> None:
    """Destroy token keys for good and retire the authorities that used them."""
    if (label is None) == (not everything):
        raise click.UsageError("give exactly one of --label L or --all")
    app, actor = ctx.app(), cli_actor()
    if fips_ops.fips_enabled(app):
        officers = fips_ops.require_quorum(
            app, "hsm zeroize", fips_ops.presented_officers(officer_specs), actor,
            {"label": label} if label is not None else {"scope": "all"})
    elif not yes:
        raise click.UsageError("zeroize destroys keys irrecoverably: add --yes to confirm")
    else:
        officers = []
    result = zeroize_ops.zeroize(app, label, everything, actor, officers)
    if as_json:
        emit_json(result.as_dict())
        return
    for d in result.destroyed:
        click.echo(f"destroyed {d['class']} {d.get('label', '-')!r} id {d.get('id', '-')}")
    for name in result.retired:
        click.echo(f"authority {name!r} retired")
    if everything:
        click.echo(f"wiped {len(result.files_wiped)} secret file(s) and "
                   f"{result.eab_keys_wiped} EAB key secret(s)")
