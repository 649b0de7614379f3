"""``appliance ra init`` and ``appliance ra import``: making a registration authority node.

``ra init`` is quickstart without the CA: a data directory, its SoftHSM token, PIN file,
database and audit key, ``role: ra``, and the RA's credential key made in the token. It
writes the upstream's root and prints the credential's CSR (PEM, on stdout; also in
``ra/credential.csr``) for the upstream's operator (``appliance provisioner add NAME
--type ra --csr FILE``). ``ra import`` takes the chain that command printed, checks it
(the token's key, clientAuth, the upstream root), records the upstream's CAs without keys
and writes the credential; then the node's own provisioners (``admin``, ``acme``, as
quickstart makes them) are added, pointing at the upstream's issuing CA, and ``serve``
starts. Messages go to stderr, so stdout is only the CSR.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from cryptography import x509
from sqlalchemy import select

from appliance import config
from appliance.ca import authorities as authz
from appliance.ca import keys as key_ops
from appliance.cli.context import CliContext, location_options, pass_ctx
from appliance.cli.ra import ra
from appliance.ops import provisioners as prov_ops
from appliance.ops.init import init
from appliance.provisioners.settings import ProvisionerSettings
from appliance.ra import credential
from appliance.runtime import Appliance, cli_actor
from appliance.store.models import Provisioner

MAX_ROOT_BYTES = 64 * 1024


@click.command("init")
@click.option("--upstream", "upstream_url", required=True, metavar="URL",
              help="https://host:port of the upstream's API (the CA or a parent RA).")
@click.option("--upstream-root", required=True, metavar="PEM",
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The upstream's root certificate (its /1.0/roots).")
@click.option("--name", required=True, help="This RA's name, as the upstream will register "
              "it ([A-Za-z0-9._-], at most 64).")
@click.option("--api-listen", default=None, metavar="HOST:PORT")
@click.option("--http-listen", default=None, metavar="HOST:PORT")
@click.option("--public-base-url", default=None, metavar="URL")
@location_options
@pass_ctx
def init_cmd(ctx: CliContext, upstream_url: str, upstream_root: Path, name: str,
             api_listen: str | None, http_listen: str | None,
             public_base_url: str | None) -> None:
    """A new RA node (no CA keys): prints its credential CSR on stdout."""
    if ctx.data_dir is None:
        raise click.UsageError("ra init needs --dir DIR")
    root_pem = upstream_root.read_bytes()[:MAX_ROOT_BYTES + 1]
    roots = credential.load_pems(root_pem, str(upstream_root))
    for root in roots:
        try:
            is_ca = root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca or root.subject != root.issuer:
            raise click.BadParameter(f"{root.subject.rfc4514_string()} is not a root CA "
                                     "certificate (the upstream's /1.0/roots)",
                                     param_hint="--upstream-root")
    service: dict[str, Any] = {k: v for k, v in (
        ("api_listen", api_listen), ("http_listen", http_listen),
        ("public_base_url", public_base_url)) if v is not None}
    settings: dict[str, Any] = {"role": "ra", "ra": {"name": name,
                                                     "upstream_url": upstream_url}}
    if service:
        settings["service"] = service
    try:
        config.ApplianceConfig.model_validate(settings)  # before anything is made
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    actor = cli_actor()
    data = Path(ctx.data_dir).absolute()
    path = init(data, actor, node_id=name, settings=settings)
    click.echo(f"initialised {path.parent} (role ra, upstream {upstream_url})", err=True)
    app = Appliance(config.load(path))
    try:
        cfg = app.settings.config
        info = key_ops.generate(app, cfg.audit.key_label, "ec-p256", actor)
        click.echo(f"audit key {info.label!r} generated ({info.spki_sha256[:16]}...)", err=True)
        cred = key_ops.generate(app, cfg.ra.credential_label, "ec-p256", actor)
        click.echo(f"credential key {cred.label!r} generated in the token "
                   f"({cred.spki_sha256[:16]}...)", err=True)
        root_path = credential.root_file(app)
        root_path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        root_path.write_bytes(root_pem)
        csr = credential.make_csr(app, name)
        csr_path = credential.path_of(app, credential.CSR_FILE)
        csr_path.write_bytes(csr)
        with app.db.transaction() as db:
            app.audit_log().append(db, "ra.initialized", actor, object_ids={"ra": name},
                                   details={"upstream": upstream_url,
                                            "upstream_roots": [authz.fingerprint(r)
                                                               for r in roots],
                                            "credential_spki_sha256": cred.spki_sha256})
    finally:
        app.close()
    click.echo(f"credential CSR written to {csr_path}; on the upstream: appliance "
               f"provisioner add {name} --type ra --csr FILE, then here: appliance ra "
               f"import --dir {data} CHAIN.pem", err=True)
    click.echo(csr.decode(), nl=False)


@click.command("import")
@click.argument("chain", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@location_options
@pass_ctx
def import_cmd(ctx: CliContext, chain: Path) -> None:
    """Import the credential chain the upstream issued (leaf then intermediates)."""
    app = ctx.app()
    if app.settings.config.role != "ra":
        raise click.UsageError("ra import runs on an RA node (role: ra; see `ra init`)")
    actor = cli_actor()
    leaf = credential.import_chain(app, chain.read_bytes()[:credential.MAX_CHAIN_BYTES + 1],
                                   actor)
    click.echo(f"credential {leaf.serial_number:x} imported (valid until "
               f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z)", err=True)
    _provisioners(app, actor)


def _provisioners(app: Appliance, actor: Any) -> None:
    """``admin`` (jwk) and ``acme`` as quickstart makes them, if not there yet."""
    with app.db.sessions() as db:
        have = set(db.scalars(select(Provisioner.name)).all())
    if "admin" not in have:
        prov_ops.add(app, "admin", "jwk", ProvisionerSettings(), actor,
                     custody=prov_ops.KeyCustody.generated())
        base = app.settings.base_dir
        click.echo(f"provisioner 'admin' (jwk) added; token-signing key sealed in "
                   f"{prov_ops.sealed_key_path(base, 'admin')}, its password in "
                   f"{prov_ops.password_path(base, 'admin')}", err=True)
    if "acme" not in have:
        prov_ops.add(app, "acme", "acme", ProvisionerSettings(), actor)
        click.echo("provisioner 'acme' (acme) added", err=True)


ra.add_command(init_cmd)
ra.add_command(import_cmd)
