"""The API's TLS certificate, issued at every start by the appliance's own issuing CA.

Its key is a software key in the data directory (mode 0600), never a CA key;
the certificate goes through the same issuance pipeline (template
``tls-server``, policy, lint, audit) as any other.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from sqlalchemy import select

from appliance import logs
from appliance.ca import authorities as authz
from appliance.issuance.pipeline import Issuer
from appliance.issuance.request import EffectiveClaims, ProvisionerContext, SignRequest
from appliance.ra import credential
from appliance.ra.errors import UpstreamUnavailable
from appliance.ra.node import Forwarder
from appliance.runtime import Appliance
from appliance.store.models import Authority

DAY = 86400
log = logs.get("web.tls")


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path
    key: Path
    roots: Path


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def issue_api_certificate(app: Appliance) -> TlsFiles:
    svc = app.settings.config.service
    folder = svc.tls_dir if svc.tls_dir.is_absolute() else app.settings.base_dir / svc.tls_dir
    folder.mkdir(mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    # No "localhost": a one-label name fails RFC 5280 linting (pkilint), and clients use the IP.
    for name in svc.api_tls_names():
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, svc.api_hostname)]))
           .add_extension(x509.SubjectAlternativeName(names), critical=False)
           .sign(key, hashes.SHA256()))
    if app.settings.config.role == "ra":
        return _issue_through_upstream(app, folder, key, csr)
    with app.db.sessions() as db:
        ca = authz.get(db, svc.issuing_authority)
        # Trust anchors for the API's clients and for client certificates (mTLS renewal):
        # our roots and our own CAs, so a client presenting only its leaf is verified too,
        # and a root whose key is elsewhere (offline, or an outside root we were signed by).
        roots = db.scalars(select(Authority).where(
            (Authority.kind.in_(("root", "intermediate")) & Authority.key_id.is_not(None))
            | (Authority.kind == "external-root"), Authority.status == "active")).all()
        root_pem = b"".join(authz.certificate(r).public_bytes(serialization.Encoding.PEM)
                            for r in roots)
    ctx = ProvisionerContext(
        id=None, name="appliance-tls", type="internal",
        claims=EffectiveClaims(min_duration=3600, max_duration=90 * DAY,
                               default_duration=30 * DAY, disable_renewal=True,
                               allow_renewal_after_expiry=False, renewal_grace=None),
        authority_id=ca.id, template="tls-server")
    issued = Issuer(app).issue(SignRequest(csr=csr, provisioner=ctx, requester="appliance:serve",
                                           credential_names=None))
    chain = [issued.certificate, *issued.chain[:-1]]  # the leaf and intermediates, not the root
    files = TlsFiles(folder / "api.crt", folder / "api.key", folder / "roots.pem")
    _write_private(files.key, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    _write_private(files.certificate, b"".join(c.public_bytes(serialization.Encoding.PEM)
                                               for c in chain), 0o644)
    _write_private(files.roots, root_pem, 0o644)
    return files


def _issue_through_upstream(app: Appliance, folder: Path, key: ec.EllipticCurvePrivateKey,
                            csr: x509.CertificateSigningRequest) -> TlsFiles:
    """An RA node's API certificate: issued THROUGH its upstream (the RA signs nothing), so
    its clients trust the CA's root; the client-certificate roots are the upstream root
    (the CA issues every certificate a client of this node can present)."""
    svc = app.settings.config.service
    with app.db.sessions() as db:
        ca = authz.get(db, svc.issuing_authority)
    ctx = ProvisionerContext(
        id=None, name="appliance-tls", type="internal",
        claims=EffectiveClaims(min_duration=3600, max_duration=90 * DAY,
                               default_duration=DAY, disable_renewal=True,
                               allow_renewal_after_expiry=False, renewal_grace=None),
        authority_id=ca.id, template="tls-server")
    files = TlsFiles(folder / "api.crt", folder / "api.key", folder / "roots.pem")
    try:
        issued = Forwarder(app).issue(SignRequest(csr=csr, provisioner=ctx,
                                                  requester="appliance:serve",
                                                  credential_names=None))
    except UpstreamUnavailable:
        # The upstream is away at this start: the certificate it issued last time serves
        # while it still has an hour to run (the node forwards nothing meanwhile anyway).
        if _still_valid(files, hours=1):
            log.warning("the upstream is unavailable; serving with the previous API "
                        "certificate")
            return files
        raise
    roots = credential.upstream_roots(app)
    chain = [issued.certificate, *(c for c in issued.chain if c not in roots)]
    _write_private(files.key, key.private_bytes(serialization.Encoding.PEM,
                                                serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    _write_private(files.certificate, b"".join(c.public_bytes(serialization.Encoding.PEM)
                                               for c in chain), 0o644)
    _write_private(files.roots, b"".join(r.public_bytes(serialization.Encoding.PEM)
                                         for r in roots), 0o644)
    return files


def _still_valid(files: TlsFiles, *, hours: int) -> bool:
    """Whether the API certificate on disk (with its key and roots) is valid for ``hours``
    more and is for the key beside it."""
    try:
        cert = x509.load_pem_x509_certificates(files.certificate.read_bytes())[0]
        key = serialization.load_pem_private_key(files.key.read_bytes(), None)
        files.roots.stat()
    except (OSError, ValueError, IndexError):
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    same = cert.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        key.public_key().public_bytes(serialization.Encoding.DER, spki)
    now = datetime.now(UTC)
    return same and cert.not_valid_before_utc <= now and \
        cert.not_valid_after_utc > now + timedelta(hours=hours)


def stale_ca_urls(app: Appliance) -> list[str]:
    """URLs in the issuing CA's certificate (CRL DP, AIA) outside ``public_base_url``.

    A CA certificate cannot change: after ``public_base_url`` moved, leaves point at the
    new place but relying parties still fetch the CA's own status from the old one, until a
    new CA certificate is made. Worth saying at every start."""
    svc = app.settings.config.service
    base = svc.public_base_url.rstrip("/") + "/"
    with app.db.sessions() as db:
        try:
            cert = authz.certificate(authz.get(db, svc.issuing_authority))
        except authz.AuthorityError:
            return []
    names: list[x509.GeneralName] = []
    with contextlib.suppress(x509.ExtensionNotFound, ValueError):
        for dp in cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value:
            names += dp.full_name or []
    with contextlib.suppress(x509.ExtensionNotFound, ValueError):
        names += [a.access_location for a in cert.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess).value]
    urls = [n.value for n in names if isinstance(n, x509.UniformResourceIdentifier)]
    stale = [u for u in urls if not u.startswith(base)]
    if not stale:
        return []
    return [f"the issuing CA {svc.issuing_authority!r} points relying parties at "
            f"{', '.join(stale)}, outside service.public_base_url ({svc.public_base_url}); "
            "its CRL/issuer certificate must stay reachable there, or make a new issuing CA "
            "with the new URLs (quickstart --public-base-url chooses them up front)"]
