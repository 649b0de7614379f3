"""``appliance quickstart``: a working CA on the embedded defaults in one command.

The CA certificates it makes carry the URLs relying parties fetch CRLs, OCSP and CA
certificates from, and a signed certificate can never be changed: so the base URL is
chosen here (``--public-base-url``), written into the configuration and into every
certificate the ceremonies sign, and ``serve`` warns if the two later disagree.

With ``--offline-root`` the root lives on a node of its own (its own data directory,
token, database and audit log, ``role: offline-root``) that never serves: it makes the
root and its CRL, and signs the issuing CA's CSR; this node holds only the issuing and
OCSP keys, imports the signed issuing CA and the root's CRL, and is configured with
``hsm.root_offline`` so that it refuses to serve should a root key ever be in its token.
The token-touching steps of the offline node run in processes of their own: a PKCS#11
module reads its configuration (for SoftHSM: which token store) once per process.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import yaml

from appliance import config
from appliance.ca import keys as key_ops
from appliance.cli.ceremony import run_ceremony
from appliance.cli.context import CliContext, location_options, pass_ctx
from appliance.ops import fips as fips_ops
from appliance.ops import provisioners as prov_ops
from appliance.ops.init import init
from appliance.provisioners.settings import ProvisionerSettings
from appliance.revocation import crl
from appliance.runtime import Appliance, cli_actor

QUICKSTART = Path(__file__).resolve().parent.parent / "ceremony" / "quickstart.yaml"
# The base URL written in the shipped quickstart.yaml; replaced by --public-base-url.
SHIPPED_BASE_URL = "http://127.0.0.1:8080"
ORG = "Signing Appliance"


@click.command("quickstart")
@click.option("--script", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Ceremony to run instead of the built-in quickstart.yaml "
              "(run as it is: its URLs are its own).")
@click.option("--public-base-url", default=None, metavar="URL",
              help="Where relying parties fetch CRLs, OCSP and CA certificates (default "
                   f"{SHIPPED_BASE_URL}). It goes into the CA certificates, which cannot "
                   "change later: choose it now.")
@click.option("--offline-root", is_flag=True,
              help="Keep the root in a token of its own, on an offline node that never "
                   "serves (see --offline-dir); this node gets only the issuing CA.")
@click.option("--offline-dir", type=click.Path(path_type=Path), default=None,
              help="Data directory of the offline root (default: DIR.offline-root beside "
                   "DIR). Move it off this host, or at least out of the service's reach.")
@click.option("--fips", is_flag=True,
              help="A node in the FIPS-style mode (recorded at init, irreversible), with "
                   "trial crypto officers (secrets in DIR/secrets/) and a sealed manifest "
                   "of the installed code.")
@click.option("--database-url", default=None, metavar="URL",
              help="Database URL (default: SQLite in the data directory); a PostgreSQL one "
                   "(postgresql+psycopg://USER@HOST/DB) for a node that others can join "
                   "(`appliance cluster add-node`).")
@location_options
@pass_ctx
def quickstart_cmd(ctx: CliContext, script: Path | None, public_base_url: str | None,
                   offline_root: bool, offline_dir: Path | None, fips: bool,
                   database_url: str | None) -> None:
    """init + audit key + quickstart ceremony (P-256 root, issuing CA, OCSP signer)."""
    if ctx.data_dir is None:
        raise click.UsageError("quickstart needs --dir DIR")
    if script is not None and (offline_root or public_base_url):
        raise click.UsageError("--script runs a ceremony as it is: it cannot be combined with "
                               "--offline-root or --public-base-url")
    base = (public_base_url or SHIPPED_BASE_URL).rstrip("/")
    try:
        # The same check the configuration applies, before anything is created.
        config.ServiceConfig(public_base_url=base)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--public-base-url") from None
    data = Path(ctx.data_dir).absolute()
    offline = (offline_dir or data.with_name(data.name + ".offline-root")).absolute()
    if fips and offline_root:
        raise click.UsageError("--fips with --offline-root is not supported yet: the offline "
                               "node would need officers and a seal of its own")
    if offline_root and (offline.exists() and any(offline.iterdir())):
        raise click.UsageError(f"{offline} already exists and is not empty")
    actor = cli_actor()
    settings: dict[str, Any] = {"service": {"public_base_url": base}}
    if offline_root:
        settings["hsm"] = {"root_offline": True}
    path = init(data, actor, database_url=database_url, settings=settings, fips=fips)
    click.echo(f"initialised {path.parent}{' (FIPS mode)' if fips else ''}")
    app = Appliance(config.load(path))
    # FIPS mode: the integrity self-test needs a seal, the seal needs the audit key; this
    # process alone may pass it "not sealed yet", and seals right after the audit key.
    app.fips_allow_unsealed = fips
    try:
        info = key_ops.generate(app, app.settings.config.audit.key_label, "ec-p256", actor)
        click.echo(f"audit key {info.label!r} generated ({info.spki_sha256[:16]}...)")
        if fips:
            _fips_officers_and_seal(app, data, actor)
        if offline_root:
            _offline_hierarchy(app, data, offline, base, actor, fips=fips)
        elif script is not None:
            run_ceremony(app, script, None)
        else:
            text = QUICKSTART.read_text(encoding="utf-8").replace(SHIPPED_BASE_URL, base)
            run_ceremony(app, _write_script(data, "quickstart.yaml", text), None)
        if script is None:
            _provisioners(app, actor)
    finally:
        app.close()


def _provisioners(app: Appliance, actor: Any) -> None:
    prov_ops.add(app, "admin", "jwk", ProvisionerSettings(), actor,
                 custody=prov_ops.KeyCustody.generated())
    base = app.settings.base_dir
    click.echo(f"provisioner 'admin' (jwk) added; token-signing key sealed in "
               f"{prov_ops.sealed_key_path(base, 'admin')}, its password in "
               f"{prov_ops.password_path(base, 'admin')} (take both off this host)")
    prov_ops.add(app, "acme", "acme", ProvisionerSettings(), actor)
    with app.db.sessions() as db:
        directory = prov_ops.describe(app, db, prov_ops.get(db, "acme"))["directory"]
    click.echo(f"provisioner 'acme' (acme, EAB not required): {directory}")


def _fips_officers_and_seal(app: Appliance, data: Path, actor: Any) -> None:
    files = fips_ops.trial_officers_and_seal(app, data, actor)
    click.echo(f"FIPS mode: {len(files)} trial crypto officers registered (quorum "
               f"{app.settings.config.fips.quorum}); their secrets are in "
               f"{', '.join(str(f) for f in files)} (hand each to its officer)")
    click.echo("installed code sealed (appliance fips report shows the manifest hash)")
    operator = fips_ops.trial_operator(app, data, actor)
    click.echo(f"FIPS mode: trial operator {fips_ops.TRIAL_OPERATOR!r} registered; its secret "
               f"is in {operator} (operator commands need --operator "
               f"{fips_ops.TRIAL_OPERATOR}={operator} or $APPLIANCE_OPERATOR)")


def _offline_hierarchy(app: Appliance, data: Path, offline: Path, base: str,
                       actor: Any, *, fips: bool = False) -> None:
    """Root on the offline node, issuing CA here, signed from a CSR; the root's CRL
    imported. Every step is a ceremony with its own signed transcript on its own node."""
    init(offline, actor, node_id="offline-root", token_label="offline-root",  # noqa: S106
         settings={"role": "offline-root", "service": {"public_base_url": base}}, fips=fips)
    click.echo(f"initialised the offline root's node {offline} (role offline-root)")
    _offline_cli(offline, "hsm", "genkey", "--label", "audit-key", "--type", "ec-p256")
    root_dir = _record(offline, "offline-root")
    _offline_cli(offline, "ceremony", "run", str(_write_script(offline, "offline-root.yaml",
                 _dump(_root_script(base)))), "--out", str(root_dir))

    csr_script = _write_script(data, "issuing-csr.yaml", _dump(_csr_script()))
    csr_dir = _record(data, "issuing-csr")
    run_ceremony(app, csr_script, csr_dir)
    csr_file = csr_dir / "issuing-csr.csr.pem"

    sign_dir = _record(offline, "sign-issuing")
    _offline_cli(offline, "ceremony", "run", str(_write_script(
        offline, "sign-issuing.yaml", _dump(_sign_script(base, csr_file)))),
        "--out", str(sign_dir))

    import_script = _write_script(data, "issuing-import.yaml", _dump(_import_script(
        sign_dir / "issuing.pem", root_dir / "root.pem", csr_file)))
    run_ceremony(app, import_script, _record(data, "issuing-import"))
    published = crl.import_signed(app, "root", (root_dir / "root-crl.crl").read_bytes(), actor)
    click.echo(f"root CRL #{published.number} imported (next update "
               f"{published.next_update:%Y-%m-%d})")
    click.echo(f"the root's key is in the offline node's token ({offline}); this node's "
               "token holds no root key, and serve refuses to start if it ever does "
               "(hsm.root_offline). Take the offline node's folder off this host.")


def _offline_cli(directory: Path, *args: str) -> None:
    """One command on the offline node, in a process of its own (its own token store)."""
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    env.pop("APPLIANCE_CONFIG", None)
    proc = subprocess.run([sys.executable, "-m", "appliance", "--dir", str(directory), *args],
                          env=env, capture_output=True, text=True, check=False, timeout=600)
    for line in proc.stdout.splitlines():
        click.echo(f"  [offline] {line}")
    if proc.returncode != 0:
        raise click.ClickException(f"on the offline root's node: appliance {' '.join(args)} "
                                   f"failed:\n{proc.stderr.strip()[-2000:]}")


def _record(directory: Path, name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return directory / "ceremonies" / f"{stamp}-{name}"


def _write_script(directory: Path, name: str, text: str) -> Path:
    """The ceremony script as run, kept in the data directory (never overwritten)."""
    folder = directory / "ceremony-scripts"
    folder.mkdir(mode=0o750, exist_ok=True)
    path = folder / name
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)
    return path


def _dump(doc: dict[str, Any]) -> str:
    return ("# Made by `appliance quickstart --offline-root`; kept as it was run.\n"
            + yaml.safe_dump(doc, sort_keys=False))


def _root_script(base: str) -> dict[str, Any]:
    return {
        "version": 1, "name": "offline-root",
        "description": "Offline root of the quickstart hierarchy, and its first CRL",
        "operators": ["appliance quickstart"],
        "steps": [
            {"id": "root-key", "type": "key", "label": "root-ca", "key_type": "ec-p256"},
            {"id": "root", "type": "root", "key": "root-key", "authority": "root",
             "subject": {"O": ORG, "CN": f"{ORG} Root CA"}, "validity": {"days": 3650},
             "path_length": 1},
            {"id": "root-crl", "type": "crl", "issuer": "root", "next_update_days": 180,
             "crl_url": f"{base}/crl/root.crl"},
        ],
    }


def _csr_script() -> dict[str, Any]:
    return {
        "version": 1, "name": "issuing-csr",
        "description": "The online issuing CA's key, and its CSR for the offline root",
        "operators": ["appliance quickstart"],
        "steps": [
            {"id": "issuing-key", "type": "key", "label": "issuing-ca", "key_type": "ec-p256"},
            {"id": "issuing-csr", "type": "csr", "key": "issuing-key",
             "subject": {"O": ORG, "CN": f"{ORG} Issuing CA"}},
        ],
    }


def _sign_script(base: str, csr: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "sign-issuing",
        "description": "The offline root signs the online issuing CA's CSR",
        "operators": ["appliance quickstart"],
        "steps": [
            {"id": "issuing", "type": "sign-csr", "csr": str(csr),
             "csr_sha256": hashlib.sha256(csr.read_bytes()).hexdigest(), "issuer": "root",
             "authority": "issuing", "subject": {"O": ORG, "CN": f"{ORG} Issuing CA"},
             "validity": {"days": 1825}, "path_length": 0,
             "crl_urls": [f"{base}/crl/root.crl"],
             "ca_issuers_urls": [f"{base}/ca/root.crt"]},
        ],
    }


def _import_script(issuing: Path, root: Path, csr: Path) -> dict[str, Any]:
    return {
        "version": 1, "name": "issuing-import",
        "description": "Import the issuing CA the offline root signed; the OCSP responder",
        "operators": ["appliance quickstart"],
        "steps": [
            {"id": "import", "type": "import", "key": "issuing-ca", "authority": "issuing",
             "certificate": str(issuing), "root": str(root), "csr": str(csr),
             "root_authority": "root"},
            {"id": "ocsp-key", "type": "key", "label": "issuing-ocsp", "key_type": "ec-p256"},
            {"id": "ocsp", "type": "ocsp-signer", "key": "ocsp-key", "issuer": "import",
             "authority": "issuing-ocsp",
             "subject": {"O": ORG, "CN": f"{ORG} Issuing CA OCSP Responder"},
             "validity": {"days": 365}},
        ],
    }
