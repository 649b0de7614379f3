"""The offline-root boundary: this node's token must not be able to sign as a root.

With ``hsm.root_offline`` the root's key lives in a token of its own, opened only by
ceremonies on the offline root's node (``role: offline-root``), which signs this node's
CA certificates from CSRs (``sign-csr``) and its CRLs (``crl``). A compromise of the
online service must then not reach a root key, so before serving (and before a ceremony
could make one) the online token is searched for the private key of every self-signed CA
the database knows, ours or imported, by public key (labels can be renamed).
"""

from __future__ import annotations

from cryptography import x509
from sqlalchemy import select

from appliance.ca import authorities as authz
from appliance.errors import ConfigError
from appliance.hsm import keys
from appliance.runtime import Appliance
from appliance.store.models import Authority


def reachable_roots(app: Appliance) -> list[str]:
    """Self-signed CAs whose private key this node's token holds ("name (key label)")."""
    in_token = {k.spki_sha256: k.label for k in keys.list_keys(app.pool)}
    found = []
    with app.db.sessions() as db:
        for row in db.scalars(select(Authority).order_by(Authority.id)):
            cert = authz.certificate(row)
            if not _self_signed(cert):
                continue
            label = in_token.get(authz.spki_sha256(cert))
            if label is not None:
                found.append(f"{row.name} (token key {label!r})")
    return found


def require_offline(app: Appliance) -> None:
    """Refuse to go on when the configuration says the root is offline but it is not."""
    if app.settings.config.role == "offline-root":
        raise ConfigError("this data directory holds an offline root (role: offline-root): it "
                          "runs ceremonies only and never serves")
    if not app.settings.config.hsm.root_offline:
        return
    found = reachable_roots(app)
    if found:
        raise ConfigError(
            "the configuration says the root is offline (hsm.root_offline), but this node's "
            f"token holds the private key of: {', '.join(found)}; refusing to serve. Move the "
            "root key to its own token (destroy it here) or set hsm.root_offline: false")


def _self_signed(cert: x509.Certificate) -> bool:
    if cert.subject.public_bytes() != cert.issuer.public_bytes():
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, Exception):
        return False
    return True
