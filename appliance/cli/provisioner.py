"""``appliance provisioner`` and ``appliance token``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from appliance.cli.context import (
    CliContext,
    duration_callback,
    emit_json,
    fields,
    location_options,
    pass_ctx,
    table,
)
from appliance.ops import policies as policy_ops
from appliance.ops import provisioners as prov_ops
from appliance.policy import syntax
from appliance.policy.model import wildcard_notice
from appliance.policy.names import parse_policy
from appliance.provisioners import tokens
from appliance.provisioners.settings import (
    Claims,
    ProvisionerSettings,
    check_effective,
    sign_audience,
)
from appliance.runtime import cli_actor


def claim_options(fn: Any) -> Any:
    for opt in reversed([
        click.option("--min-duration", callback=duration_callback,
                     help="Shortest certificate (e.g. 5m)."),
        click.option("--max-duration", callback=duration_callback,
                     help="Longest certificate (e.g. 24h)."),
        click.option("--default-duration", callback=duration_callback,
                     help="When none is asked for."),
        click.option("--disable-renewal/--enable-renewal", default=None),
        click.option("--allow-renewal-after-expiry/--deny-renewal-after-expiry", default=None),
        click.option("--renewal-grace", callback=duration_callback,
                     help="How long after expiry renewal stays possible (unset: no limit)."),
        click.option("--template", default=None, help="Template name for this provisioner."),
        click.option("--require-inventory/--no-require-inventory", default=None,
                     help="Only names that belong to an inventory record get certificates."),
        click.option("--allow-template-data/--no-template-data", default=None,
                     help="Let requesters pass templateData to the template."),
        click.option("--require-eab/--no-require-eab", default=None,
                     help="acme: accounts must bind to an EAB key (`appliance eab add`)."),
        click.option("--challenges", default=None,
                     help="acme: challenge types offered, e.g. http-01,dns-01,tls-alpn-01."),
    ]):
        fn = opt(fn)
    return fn


def _check_claims(ctx: CliContext, claims: dict[str, Any]) -> None:
    """Refuse (before anything is written) claims whose bounds no request could meet."""
    try:
        check_effective(Claims.model_validate(claims), ctx.app().settings.config.claims)
    except ValueError as exc:  # pydantic's ValidationError is one
        errors = getattr(exc, "errors", None)
        message = (str(errors()[0]["msg"]).removeprefix("Value error, ") if callable(errors)
                   else str(exc))
        raise click.UsageError(message) from None


def _settings_changes(kw: dict[str, Any]) -> dict[str, Any]:
    claims = {k: kw[k] for k in ("min_duration", "max_duration", "default_duration",
                                 "disable_renewal", "allow_renewal_after_expiry",
                                 "renewal_grace") if kw.get(k) is not None}
    out: dict[str, Any] = {k: kw[k] for k in ("template", "require_inventory",
                                              "allow_template_data", "require_eab")
                           if kw.get(k) is not None}
    if kw.get("challenges"):
        out["challenges"] = tuple(c.strip() for c in kw["challenges"].split(",") if c.strip())
    if claims:
        out["claims"] = claims
    return out


@click.group()
def provisioner() -> None:
    """Provisioners: who may request certificates, and with which claims."""


@provisioner.command("add")
@click.argument("name")
@click.option("--type", "ptype", type=click.Choice(["jwk", "x5c", "acme"]), required=True)
@click.option("--root", "root_pem", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="x5c: PEM file of the roots whose certificates may authenticate.")
@click.option("--authority", default=None,
              help="CA that issues (default: service.issuing_authority).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False,
                                                          path_type=Path),
              help="Name policy file for this provisioner.")
@claim_options
@location_options
@pass_ctx
def add_cmd(ctx: CliContext, /, name: str, ptype: str, root_pem: Path | None,
            authority: str | None, policy_file: Path | None, **kw: Any) -> None:
    """Add a provisioner (a jwk one gets a token-signing key in DATA/secrets/)."""
    changes = _settings_changes(kw)
    _check_claims(ctx, changes.get("claims", {}))
    settings = ProvisionerSettings.model_validate(
        {**changes, "claims": Claims.model_validate(changes.get("claims", {}))})
    app = ctx.app()
    policy_text = policy_file.read_text(encoding="utf-8") if policy_file else None
    if policy_text is not None:
        parse_policy(policy_text, str(policy_file))  # a bad policy refuses the whole add
    prov_ops.add(app, name, ptype, settings, cli_actor(), authority=authority,
                 roots_pem=root_pem.read_bytes() if root_pem else None)
    notice = None
    if policy_text is not None:
        notice = wildcard_notice(policy_ops.set_policy(app, "provisioner", name, policy_text,
                                                       cli_actor()), "provisioner")
    click.echo(f"provisioner {name!r} ({ptype}) added")
    if notice:
        click.echo(f"note: {notice}", err=True)
    if ptype == "jwk":
        click.echo(f"  token-signing key: {prov_ops.key_path(app, name)} (mode 0600)")


@provisioner.command("list")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def list_cmd(ctx: CliContext, as_json: bool) -> None:
    app = ctx.app()
    with app.db.sessions() as db:
        rows = prov_ops.list_all(app, db)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        r["max"] = r["claims"]["max_duration"]
        r["after expiry"] = r["claims"]["allow_renewal_after_expiry"]
    table(rows, ["name", "type", "authority", "template", "max", "after expiry",
                 "require_inventory"])


@provisioner.command("show")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
@location_options
@pass_ctx
def show_cmd(ctx: CliContext, name: str, as_json: bool) -> None:
    app = ctx.app()
    with app.db.sessions() as db:
        out = prov_ops.describe(app, db, prov_ops.get(db, name))
    if as_json:
        emit_json(out)
    else:
        fields(out)


@provisioner.command("update")
@click.argument("name")
@claim_options
@location_options
@pass_ctx
def update_cmd(ctx: CliContext, /, name: str, **kw: Any) -> None:
    changes = _settings_changes(kw)
    if not changes:
        raise click.UsageError("nothing to change")
    if "claims" in changes:
        with ctx.app().db.sessions() as db:
            stored = ProvisionerSettings.model_validate_json(prov_ops.get(db, name).config)
        _check_claims(ctx, {**stored.claims.model_dump(), **changes["claims"]})
    prov_ops.update(ctx.app(), name, changes, cli_actor())
    click.echo(f"provisioner {name!r} updated")


@provisioner.command("remove")
@click.argument("name")
@location_options
@pass_ctx
def remove_cmd(ctx: CliContext, name: str) -> None:
    prov_ops.remove(ctx.app(), name, cli_actor())
    click.echo(f"provisioner {name!r} removed")


def _san_callback(_ctx: click.Context, _param: click.Parameter,
                  values: tuple[str, ...]) -> tuple[str, ...]:
    """Each ``--san`` checked (and a DNS name or IP address normalised) as the pipeline will
    read it, so a token is never minted for a name no certificate can carry."""
    out: list[str] = []
    for value in values:
        try:
            checked = syntax.check_san(value)[1]
        except syntax.MalformedName as exc:
            raise click.BadParameter(str(exc)) from None
        if checked not in out:
            out.append(checked)
    return tuple(out)


def _cn_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return syntax.check_common_name(value)
    except syntax.MalformedName as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("token")
@click.argument("name")
@click.option("--san", "sans", multiple=True, callback=_san_callback,
              help="A name for the certificate: DNS name (*.host for a wildcard), IP address, "
                   "email address or URI.")
@click.option("--cn", "common_name", default=None, callback=_cn_callback,
              help="A subject common name the CSR carries that is none of its SANs.")
@click.option("--not-after", callback=duration_callback, default=None,
              help="Ask for a certificate of this lifetime (e.g. 24h).")
@click.option("--lifetime", callback=duration_callback, default="5m", show_default=True,
              help="How long the token itself is valid.")
@click.option("--revoke", "revoke_serial", default=None,
              help="A token to revoke this serial (POST /1.0/revoke) instead of to sign.")
@location_options
@pass_ctx
def token_cmd(ctx: CliContext, name: str, sans: tuple[str, ...], common_name: str | None,
              not_after: int | None, lifetime: int, revoke_serial: str | None) -> None:
    """Print a one-time token of a jwk provisioner for these SANs."""
    app = ctx.app()
    path = prov_ops.key_path(app, name)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), None)
    except OSError as exc:
        raise click.ClickException(f"no token-signing key for {name!r} at {path}: "
                                   f"{exc.strerror}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise click.ClickException(f"{path} is not an EC key")
    svc = app.settings.config.service
    if revoke_serial is not None:
        token = tokens.mint(key, provisioner=name, audience=sign_audience(
            svc.api_hostname, svc.api_listen, "/1.0/revoke"), sans=[revoke_serial],
            lifetime=lifetime)
    else:
        if not sans:
            raise click.UsageError("give --san (or --revoke SERIAL)")
        names = list(sans) + ([common_name] if common_name and common_name not in sans else [])
        token = tokens.mint(key, provisioner=name, audience=sign_audience(
            svc.api_hostname, svc.api_listen), sans=names, lifetime=lifetime,
            cert_lifetime=not_after)
    click.echo(token)
