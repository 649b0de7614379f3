"""``appliance provisioner`` and ``appliance token``.

Passwords of sealed keys come from a file (``--password-file``) or a hidden prompt,
never from argv or the environment, and are never echoed or logged.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from cryptography.hazmat.primitives.asymmetric import ec

from appliance import policy
from appliance.cli.context import (
    CliContext,
    duration_callback,
    emit_json,
    fields,
    location_options,
    pass_ctx,
    table,
)
from appliance.cli.officers import operator_option
from appliance.ops import fips as fips_ops
from appliance.ops import policies as policy_ops
from appliance.ops import provisioners as prov_ops
from appliance.ops import ra as ra_ops
from appliance.provisioners import sealed, tokens
from appliance.provisioners.settings import (
    Claims,
    ProvisionerSettings,
    accepted_audiences,
    check_effective,
)


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
@click.option("--type", "ptype", type=click.Choice(["jwk", "x5c", "acme", "ra"]), required=True)
@click.option("--csr", "csr_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="ra: the RA's credential CSR (from `appliance ra init`); the credential "
                   "certificate chain is printed on stdout.")
@click.option("--root", "root_pem", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="x5c: PEM file of the roots whose certificates may authenticate.")
@click.option("--authority", default=None,
              help="CA that issues (default: service.issuing_authority).")
@click.option("--policy", "policy_file", type=click.Path(exists=True, dir_okay=False,
                                                          path_type=Path),
              help="Name policy file for this provisioner.")
@click.option("--public-key", "public_key", type=click.Path(exists=True, dir_okay=False,
                                                            path_type=Path),
              help="jwk: the owner's public key (PEM or JWK); the owner keeps the private "
                   "key and the appliance never sees it.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="jwk: seal the key the appliance makes under this file's password.")
@click.option("--generate-password", is_flag=True,
              help="jwk: seal it under a random password written beside it in DATA/secrets/ "
                   "(as quickstart does; take both files off the host).")
@claim_options
@operator_option
@location_options
@pass_ctx
def add_cmd(ctx: CliContext, /, name: str, ptype: str, csr_file: Path | None,
            root_pem: Path | None, authority: str | None, policy_file: Path | None,
            public_key: Path | None, password_file: Path | None, generate_password: bool,
            operator_spec: str | None, **kw: Any) -> None:
    """Add a provisioner. A jwk one either takes the owner's --public-key, or gets a key
    sealed under a password (--password-file, --generate-password, or asked for) in
    DATA/secrets/provisioner-NAME.jwe. An ra one registers a registration authority from
    its --csr and prints its credential certificate chain (PEM) on stdout."""
    actor = fips_ops.require_operator(ctx.app(), "provisioner add", operator_spec)
    changes = _settings_changes(kw)
    if (ptype == "ra") != (csr_file is not None):
        raise click.UsageError("--csr is for (and required by) --type ra")
    if ptype == "ra":
        _add_ra(ctx, name, csr_file, changes, policy_file, authority, root_pem, actor)
        return
    _check_claims(ctx, changes.get("claims", {}))
    settings = ProvisionerSettings.model_validate(
        {**changes, "claims": Claims.model_validate(changes.get("claims", {}))})
    custody = _custody(ptype, public_key, password_file, generate_password)
    app = ctx.app()
    policy_text = policy_file.read_text(encoding="utf-8") if policy_file else None
    if policy_text is not None:
        policy.parse_policy(policy_text, str(policy_file))  # a bad policy refuses the whole add
    prov_ops.add(app, name, ptype, settings, actor, authority=authority,
                 roots_pem=root_pem.read_bytes() if root_pem else None, custody=custody)
    notice = None
    if policy_text is not None:
        notice = policy.wildcard_notice(policy_ops.set_policy(app, "provisioner", name, policy_text,
                                                       actor), "provisioner")
    click.echo(f"provisioner {name!r} ({ptype}) added")
    if notice:
        click.echo(f"note: {notice}", err=True)
    if custody is not None and custody.public_key is None:
        base = app.settings.base_dir
        click.echo(f"  sealed token-signing key: {prov_ops.sealed_key_path(base, name)} "
                   "(mode 0600): hand it to its owner and remove it from this host")
        if custody.store_password:
            click.echo(f"  its password: {prov_ops.password_path(base, name)} (mode 0600): "
                       "keep it apart from the key")
    elif custody is not None:
        click.echo("  owner-held key: the appliance stores only its public key")


def _add_ra(ctx: CliContext, name: str, csr_file: Path | None, changes: dict[str, Any],
            policy_file: Path | None, authority: str | None, root_pem: Path | None,
            actor: Any) -> None:
    """``--type ra``: only --max-duration and --policy apply (an RA's requests are issued
    under its parent's template and claims, narrowed by its own)."""
    assert csr_file is not None
    claims = changes.pop("claims", {})
    extra = sorted(set(changes) | (set(claims) - {"max_duration"}))
    if extra or root_pem is not None:
        raise click.UsageError("--type ra takes --csr, --policy and --max-duration only")
    _check_claims(ctx, claims)
    policy_text = policy_file.read_text(encoding="utf-8") if policy_file else None
    data = csr_file.read_bytes()[:ra_ops.MAX_POLICY_BYTES + 1]
    chain = ra_ops.add(ctx.app(), name, data, actor, max_duration=claims.get("max_duration"),
                       policy_text=policy_text, authority=authority)
    click.echo("".join(chain), nl=False)
    click.echo(f"provisioner {name!r} (ra) added; its credential certificate is above",
               err=True)


def _custody(ptype: str, public_key: Path | None, password_file: Path | None,
             generate: bool) -> prov_ops.KeyCustody | None:
    given = [o for o, v in (("--public-key", public_key), ("--password-file", password_file),
                            ("--generate-password", generate)) if v]
    if ptype != "jwk":
        if given:
            raise click.UsageError(f"{given[0]} is for jwk provisioners only")
        return None
    if len(given) > 1:
        raise click.UsageError(f"give only one of {', '.join(given)}")
    try:
        if public_key is not None:
            data = public_key.read_bytes()[:sealed.MAX_KEY_FILE_BYTES + 1]
            return prov_ops.KeyCustody(public_key=data)
        if password_file is not None:
            return prov_ops.KeyCustody(password=sealed.check_new_password(
                sealed.read_password_file(password_file)))
        if generate:
            return prov_ops.KeyCustody.generated()
        return prov_ops.KeyCustody(password=sealed.check_new_password(_new_password(
            "a jwk provisioner needs --public-key PEM|JWK, --password-file FILE or "
            "--generate-password")))
    except sealed.SealError as exc:
        raise click.ClickException(str(exc)) from None


def _interactive() -> bool:
    return sys.stdin.isatty()


def _new_password(otherwise: str) -> str:
    if not _interactive():
        raise click.UsageError(f"{otherwise} (no terminal to ask for a password)")
    text: str = click.prompt("Password to seal the key", hide_input=True,
                             confirmation_prompt=True, err=True)
    return text


def _password_source(password_file: Path | None, what: str) -> Callable[[], str]:
    """Asked only when a key turns out to be encrypted."""
    def source() -> str:
        if password_file is not None:
            return sealed.read_password_file(password_file)
        if not _interactive():
            raise sealed.SealError(f"{what} is encrypted: give --password-file FILE (or run "
                                   "in a terminal to be asked)")
        text: str = click.prompt(f"Password for {what}", hide_input=True, err=True)
        return text
    return source


@provisioner.command("seal")
@click.argument("names", nargs=-1)
@click.option("--all", "seal_all", is_flag=True,
              help="Every jwk provisioner whose key is still a plaintext file.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Seal under this file's password (else --generate-password, or asked).")
@click.option("--generate-password", is_flag=True,
              help="A random password per key, written to DATA/secrets/provisioner-NAME."
                   "password (0600).")
@operator_option
@location_options
@pass_ctx
def seal_cmd(ctx: CliContext, names: tuple[str, ...], seal_all: bool,
             password_file: Path | None, generate_password: bool,
             operator_spec: str | None) -> None:
    """Re-encrypt plaintext token-signing keys (from before sealed keys) as sealed keys;
    the plaintext is overwritten and removed, and each sealing is audited."""
    actor = fips_ops.require_operator(ctx.app(), "provisioner seal", operator_spec)
    if bool(names) == seal_all:
        raise click.UsageError("give provisioner NAMEs or --all")
    if password_file is not None and generate_password:
        raise click.UsageError("give only one of --password-file, --generate-password")
    app = ctx.app()
    todo = prov_ops.plaintext_keys(app) if seal_all else list(names)
    if not todo:
        click.echo("no plaintext provisioner keys: nothing to seal")
        return
    try:
        password = (sealed.read_password_file(password_file) if password_file is not None
                    else None if generate_password
                    else _new_password("give --password-file FILE or --generate-password"))
        for name in todo:
            done = prov_ops.seal(app, name, password or secrets.token_urlsafe(24), actor,
                                 store_password=password is None)
            extra = f", password in {done.password_file}" if done.password_file else ""
            click.echo(f"provisioner {name!r}: key sealed in {done.sealed_key}{extra}; "
                       "plaintext overwritten and removed")
    except sealed.SealError as exc:
        raise click.ClickException(str(exc)) from None


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
@click.option("--disable/--enable", "disable", default=None,
              help="Refuse (or accept again) every request under this provisioner, at once; "
                   "for an ra one also every RA chained below it.")
@operator_option
@location_options
@pass_ctx
def update_cmd(ctx: CliContext, /, name: str, disable: bool | None, operator_spec: str | None,
               **kw: Any) -> None:
    actor = fips_ops.require_operator(ctx.app(), "provisioner update", operator_spec)
    changes = _settings_changes(kw)
    if not changes and disable is None:
        raise click.UsageError("nothing to change")
    if not changes:
        assert disable is not None
        ra_ops.set_enabled(ctx.app(), name, not disable, actor)
        click.echo(f"provisioner {name!r} {'disabled' if disable else 'enabled'}")
        return
    if disable is not None:
        changes["disabled"] = disable
    if "claims" in changes:
        with ctx.app().db.sessions() as db:
            stored = ProvisionerSettings.model_validate_json(prov_ops.get(db, name).config)
        _check_claims(ctx, {**stored.claims.model_dump(), **changes["claims"]})
    prov_ops.update(ctx.app(), name, changes, actor)
    click.echo(f"provisioner {name!r} updated")


@provisioner.command("remove")
@click.argument("name")
@operator_option
@location_options
@pass_ctx
def remove_cmd(ctx: CliContext, name: str, operator_spec: str | None) -> None:
    actor = fips_ops.require_operator(ctx.app(), "provisioner remove", operator_spec)
    prov_ops.remove(ctx.app(), name, actor)
    click.echo(f"provisioner {name!r} removed")


def _san_callback(_ctx: click.Context, _param: click.Parameter,
                  values: tuple[str, ...]) -> tuple[str, ...]:
    """Each ``--san`` checked (and a DNS name or IP address normalised) as the pipeline will
    read it, so a token is never minted for a name no certificate can carry."""
    out: list[str] = []
    for value in values:
        try:
            checked = policy.check_san(value)[1]
        except policy.MalformedName as exc:
            raise click.BadParameter(str(exc)) from None
        if checked not in out:
            out.append(checked)
    return tuple(out)


def _cn_callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return policy.check_common_name(value)
    except policy.MalformedName as exc:
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
@click.option("--key", "key_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The token-signing key: a sealed key (JWE) or the owner's own key (PEM or "
                   "JWK). Default: DATA/secrets/provisioner-NAME.jwe.")
@click.option("--password-file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The key's password (else asked for, if the key is encrypted).")
@click.option("--ca-url", default=None,
              help="The CA's API, e.g. https://ca.example.com:8443: the token's audience "
                   "(no configuration or database needed, with --key).")
@click.option("--root", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --ca-url: check at the CA (trusting these roots) that the key is "
                   "the provisioner's before minting.")
@location_options
@pass_ctx
def token_cmd(ctx: CliContext, name: str, sans: tuple[str, ...], common_name: str | None,
              not_after: int | None, lifetime: int, revoke_serial: str | None,
              key_file: Path | None, password_file: Path | None, ca_url: str | None,
              root: Path | None) -> None:
    """Print a one-time token of a jwk provisioner for these SANs."""
    if revoke_serial is None and not sans:
        raise click.UsageError("give --san (or --revoke SERIAL)")
    if root is not None and ca_url is None:
        raise click.UsageError("--root goes with --ca-url")
    if key_file is None and ca_url is not None and ctx.data_dir is None \
            and ctx.config_path is None:
        raise click.UsageError("give --key FILE (the provisioner's key) with --ca-url")
    path = (prov_ops.key_path(ctx.app(), name) if key_file is None else key_file)
    try:
        if key_file is None and not path.exists():
            _migrate_on_use(ctx, name, password_file)
        key = sealed.load_private_key(path, _password_source(password_file, str(path)))
    except (sealed.SealError, prov_ops.ProvisionerError) as exc:
        raise click.ClickException(str(exc)) from None
    if ca_url is not None:
        base = _ca_url(ca_url)
        audience = base + ("/1.0/revoke" if revoke_serial is not None else "/1.0/sign")
        if root is not None:
            _check_at_ca(base, root, name, key)
    else:
        svc = ctx.app().settings.config.service
        # The external URL when there is one (what clients reach, e.g. a load balancer in
        # front of several nodes), else this node's own API URL.
        audience = accepted_audiences(
            svc, "/1.0/revoke" if revoke_serial is not None else "/1.0/sign")[0]
    if revoke_serial is not None:
        token = tokens.mint(key, provisioner=name, audience=audience, sans=[revoke_serial],
                            lifetime=lifetime)
    else:
        names = list(sans) + ([common_name] if common_name and common_name not in sans else [])
        token = tokens.mint(key, provisioner=name, audience=audience, sans=names,
                            lifetime=lifetime, cert_lifetime=not_after)
    click.echo(token)


def _migrate_on_use(ctx: CliContext, name: str, password_file: Path | None) -> None:
    """First use after the upgrade: a plaintext key is sealed (under the password given,
    audited, plaintext removed) before it signs anything. Sealing changes state, so in
    FIPS mode it needs the operator of ``$APPLIANCE_OPERATOR`` (minting alone does not)."""
    app = ctx.app()
    actor = fips_ops.require_operator(app, "provisioner seal", None, {"provisioner": name})
    plain = prov_ops.plaintext_key_path(app.settings.base_dir, name)
    if not plain.exists():
        raise prov_ops.ProvisionerError(
            f"no token-signing key for {name!r} at {prov_ops.key_path(app, name)}: give "
            "--key FILE (an owner-held key is never in the data directory)")
    password = (sealed.read_password_file(password_file) if password_file is not None
                else _new_password(f"{plain} is a plaintext key from before sealed keys: "
                                   "seal it with `appliance provisioner seal` or give "
                                   "--password-file FILE"))
    done = prov_ops.seal(app, name, password, actor)
    click.echo(f"sealed the plaintext key {plain} in {done.sealed_key} (plaintext removed)",
               err=True)


def _ca_url(url: str) -> str:
    base = url.strip().rstrip("/")
    if not base.startswith("https://") or len(base) > 2048 or any(c.isspace() for c in base):
        raise click.BadParameter("must be an https:// URL", param_hint="--ca-url")
    return base


def _check_at_ca(base: str, root: Path, name: str, key: ec.EllipticCurvePrivateKey) -> None:
    import requests  # only here: the other commands need no HTTP client

    url = base + "/1.0/provisioners"
    try:
        resp = requests.get(url, verify=str(root), timeout=30)
        listed = resp.json().get("provisioners", []) if resp.status_code == 200 else None
    except (requests.RequestException, ValueError, AttributeError) as exc:
        raise click.ClickException(f"cannot read the provisioners at {url}: {exc}") from None
    if not isinstance(listed, list):
        raise click.ClickException(f"cannot read the provisioners at {url} "
                                   f"({resp.status_code})")
    mine = next((p for p in listed if isinstance(p, dict) and p.get("name") == name), None)
    if mine is None or mine.get("type") != "jwk":
        raise click.ClickException(f"the CA at {base} has no jwk provisioner {name!r}")
    kid = tokens.public_jwk(key.public_key())["kid"]
    if not isinstance(mine.get("key"), dict) or mine["key"].get("kid") != kid:
        raise click.ClickException(f"this key (kid {kid}) is not provisioner {name!r}'s at "
                                   f"{base}")
