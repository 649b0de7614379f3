"""The RA node's credential: its token key, its certificate files, import and renewal.

An RA node authenticates to its upstream (the CA or a parent RA) by mutual TLS with an
EC key that never leaves its token (label ``ra.credential_label``), and signs its hop
assertions with the same key. Its certificate is short-lived (the upstream's
``ra.credential_lifetime``), so the node renews it itself, through its upstream
(``/1.0/ra/credential/renew``), once ``ra.renew_fraction`` of its lifetime has elapsed:
one background thread per node does it (``CredentialRenewer``, run by ``serve``'s parent
process), and every worker re-reads the file when it changes (``current``), so a renewed
credential is used without a restart.

Files (relative paths against the data directory): ``ra.upstream_root`` (the upstream's
root, PEM), ``ra.credential_cert`` (leaf then intermediates) and ``ra/credential.csr``.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from sqlalchemy import select

from appliance import logs
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import ApplianceError, ConfigError
from appliance.hsm import keys
from appliance.hsm.signer import TokenECPrivateKey, token_private_key
from appliance.runtime import Appliance
from appliance.store.models import Authority

log = logs.get("ra.credential")
CSR_FILE = Path("ra/credential.csr")
MAX_CHAIN_BYTES = 64 * 1024
MAX_CHAIN_CERTS = 10


class CredentialError(ApplianceError):
    """A credential certificate that cannot be this node's (wrong key, chain, usage)."""

    code = "ra_credential_invalid"


class NotImported(ConfigError):
    """The RA node has no credential certificate yet (``ra import`` has not run)."""

    code = "ra_not_imported"
    public_detail = True


def uri_of(name: str) -> str:
    """The SAN URI of an RA's credential (what the upstream's template puts in)."""
    return f"urn:appliance:ra:{name}"


def path_of(app: Appliance, path: Path) -> Path:
    return path if path.is_absolute() else app.settings.base_dir / path


def root_file(app: Appliance) -> Path:
    return path_of(app, app.settings.config.ra.upstream_root)


def cert_file(app: Appliance) -> Path:
    return path_of(app, app.settings.config.ra.credential_cert)


def load_pems(data: bytes, what: str) -> list[x509.Certificate]:
    """Certificates of a PEM file, bounded; a file without one is refused."""
    if len(data) > MAX_CHAIN_BYTES:
        raise CredentialError(f"{what}: larger than {MAX_CHAIN_BYTES} bytes")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CredentialError(f"{what}: not PEM certificates") from None
    if not certs or len(certs) > MAX_CHAIN_CERTS:
        raise CredentialError(f"{what}: expected 1 to {MAX_CHAIN_CERTS} certificates")
    return certs


def upstream_roots(app: Appliance) -> list[x509.Certificate]:
    path = root_file(app)
    try:
        return load_pems(path.read_bytes(), str(path))
    except OSError as exc:
        raise ConfigError(f"the upstream root {path} cannot be read: {exc.strerror}") from None


def token_key(app: Appliance) -> tuple[keys.KeyInfo, TokenECPrivateKey]:
    """The credential key in the token (a handle: the private key never leaves it)."""
    pool = app.signing_pool()
    info = keys.find_key(pool, app.settings.config.ra.credential_label)
    key = token_private_key(pool, info)
    if not isinstance(key, TokenECPrivateKey):
        raise CredentialError("the RA credential key must be an EC key (P-256 or P-384)")
    return info, key


def make_csr(app: Appliance, name: str) -> bytes:
    """A CSR (PEM) for the credential key, signed in the token: CN = the RA's name and
    SAN URI ``urn:appliance:ra:<name>`` (the upstream's template decides the rest)."""
    _, key = token_key(app)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName(
               [x509.UniformResourceIdentifier(uri_of(name))]), critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM)


def chain_reaches(leaf: x509.Certificate, chain: list[x509.Certificate],
                  roots: list[x509.Certificate], *, at: datetime | None = None) -> None:
    """``leaf`` verifies through ``chain`` (its issuer first) to one of ``roots``, every
    certificate valid at ``at``; raises ``CredentialError`` naming what fails."""
    now = at or datetime.now(UTC)
    by_subject = {r.subject.public_bytes(): r for r in roots}
    current = leaf
    for cert in [leaf, *chain]:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise CredentialError(f"{cert.subject.rfc4514_string()} is not valid now")
    for issuer in [*chain, None]:
        root = by_subject.get(current.issuer.public_bytes())
        if root is not None:
            try:
                current.verify_directly_issued_by(root)
            except (ValueError, TypeError, Exception):  # an InvalidSignature as well
                raise CredentialError(f"{current.subject.rfc4514_string()}: its signature "
                                      "does not verify with the upstream root") from None
            return
        if issuer is None:
            break
        try:
            current.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, Exception):
            raise CredentialError(f"{current.subject.rfc4514_string()} is not issued by "
                                  f"{issuer.subject.rfc4514_string()}") from None
        current = issuer
    raise CredentialError("the chain does not reach the upstream root")


def check_credential(app: Appliance, chain: list[x509.Certificate]) -> x509.Certificate:
    """The leaf of ``chain`` if it can be this node's credential: its key is the token key,
    it is for client authentication, and it chains to the upstream root."""
    leaf = chain[0]
    info, _ = token_key(app)
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    if spki != info.spki_der:
        raise CredentialError("the certificate's public key is not this node's credential key")
    try:
        eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CredentialError("the certificate has no extended key usage (clientAuth "
                              "needed)") from None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise CredentialError("the certificate is not for client authentication (EKU "
                              "clientAuth)")
    chain_reaches(leaf, chain[1:], upstream_roots(app))
    return leaf


def write_chain(app: Appliance, chain: list[x509.Certificate]) -> Path:
    """Replace the credential file atomically (readers see the old file or the new one)."""
    path = cert_file(app)
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
    os.replace(tmp, path)
    return path


def store_authorities(app: Appliance, db: Any, chain: list[x509.Certificate],
                      roots: list[x509.Certificate], ceremony: str) -> Authority:
    """The upstream's CAs (the chain's intermediates and the root) as authority rows
    WITHOUT keys, root first; returns the row of the credential's issuer. The lowest gets
    ``service.issuing_authority``'s name, so this node's provisioners point at it."""
    leaf_issuer = chain[0].issuer.public_bytes()
    top = chain[-1] if len(chain) > 1 else chain[0]
    root = next((r for r in roots if r.subject.public_bytes() == top.issuer.public_bytes()),
                roots[0])
    cas = [root, *reversed(chain[1:])]
    parent: Authority | None = None
    issuing = app.settings.config.service.issuing_authority
    for i, cert in enumerate(cas):
        existing = db.scalars(select(Authority).where(
            Authority.fingerprint_sha256 == authz.fingerprint(cert))).one_or_none()
        if existing is not None:
            parent = existing
            continue
        lowest = i == len(cas) - 1
        name = issuing if lowest else ("upstream-root" if i == 0 else f"upstream-ca{i}")
        if db.scalars(select(Authority.id).where(Authority.name == name)).first():
            name = f"{name}-{authz.fingerprint(cert)[:8]}"  # a new CA of the upstream's
        parent = authz.register(db, name=name, kind="external-root" if i == 0 else
                                "external-ca", cert=cert, key=None, parent=parent,
                                ceremony=ceremony)
    assert parent is not None
    if authz.certificate(parent).subject.public_bytes() != leaf_issuer:
        raise CredentialError("the credential's issuer is not in the chain")
    return parent


def import_chain(app: Appliance, pem: bytes, actor: Actor) -> x509.Certificate:
    """``ra import``: check the chain the upstream issued, record the upstream's CAs, write
    the credential file; audited (a refusal too)."""
    try:
        chain = load_pems(pem, "the credential chain")
        leaf = check_credential(app, chain)
    except ApplianceError as exc:
        with app.db.transaction() as db:
            app.audit_log().append(db, "ra.credential.import_refused", actor,
                                   outcome="denied", details={"reason": str(exc)[:500]})
        raise
    roots = upstream_roots(app)
    with app.db.transaction() as db:
        issuer = store_authorities(app, db, chain, roots, "ra import")
        app.audit_log().append(db, "ra.credential.imported", actor, object_ids={
            "serial": f"{leaf.serial_number:x}", "issuer": issuer.name},
            details={"subject": leaf.subject.rfc4514_string(),
                     "not_after": leaf.not_valid_after_utc.isoformat(),
                     "fingerprint_sha256": authz.fingerprint(leaf)})
        write_chain(app, chain)  # inside: no file without its audit record
    return leaf


@dataclass(frozen=True)
class Credential:
    """The credential as the file holds it now."""

    chain: list[x509.Certificate]  # leaf first
    mtime_ns: int

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]


_cache: dict[Path, Credential] = {}
_cache_lock = threading.Lock()


def current(app: Appliance) -> Credential:
    """The credential file, re-read when it changed (a renewal by the node's renewer)."""
    path = cert_file(app)
    try:
        st = path.stat()
    except OSError:
        raise NotImported(f"this RA node has no credential certificate ({path}): run "
                          "`appliance ra import` with the chain its upstream issued") from None
    with _cache_lock:
        found = _cache.get(path)
        if found is not None and found.mtime_ns == st.st_mtime_ns:
            return found
    chain = load_pems(path.read_bytes(), str(path))
    cred = Credential(chain, st.st_mtime_ns)
    with _cache_lock:
        _cache[path] = cred
    return cred


def require_usable(app: Appliance) -> Credential:
    """``serve`` on an RA node: the credential is imported and still valid (an expired one
    cannot be renewed: the upstream authenticates the renewal with it)."""
    cred = current(app)
    leaf = cred.leaf
    if leaf.not_valid_after_utc <= datetime.now(UTC):
        raise NotImported(
            f"this RA node's credential expired at {leaf.not_valid_after_utc:%Y-%m-%d %H:%M}Z "
            "and cannot be renewed any more: have the upstream register this node again "
            "and run `appliance ra import` with the new chain")
    return cred


def renewal_due(cert: x509.Certificate, fraction: float, now: datetime | None = None
                ) -> datetime:
    """When ``cert`` is to be renewed: ``fraction`` of its lifetime after its start."""
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return start + timedelta(seconds=(end - start).total_seconds() * fraction)


def renew(app: Appliance, post: Any, actor: Actor) -> x509.Certificate:
    """Renew the credential through the upstream: a CSR for the same token key (the
    upstream knows this RA by that key), the answer checked as at import, the file
    replaced, audited ``ra.credential.renewed``. ``post(path, body) -> (status, body)``
    is the upstream client's (with a hop assertion made by the caller)."""
    name = app.settings.config.ra.name or ""
    csr_pem = make_csr(app, name)
    old = current(app).leaf
    try:
        reply = post("/1.0/ra/credential/renew", csr_pem)
        pems = "".join(reply.get("certChain") or [reply.get("crt", "")]).encode()
        chain = load_pems(pems, "the renewed credential")
        leaf = check_credential(app, chain)
    except ApplianceError as exc:
        with app.db.transaction() as db:
            app.audit_log().append(db, "ra.credential.renewed", actor, outcome="failure",
                                   object_ids={"serial": f"{old.serial_number:x}"},
                                   details={"error": exc.code, "message": str(exc)[:500]})
        raise
    with app.db.transaction() as db:
        app.audit_log().append(db, "ra.credential.renewed", actor, object_ids={
            "serial": f"{leaf.serial_number:x}", "renewed": f"{old.serial_number:x}"},
            details={"not_after": leaf.not_valid_after_utc.isoformat(),
                     "fingerprint_sha256": hashlib.sha256(
                         leaf.public_bytes(serialization.Encoding.DER)).hexdigest()})
        write_chain(app, chain)
    return leaf
