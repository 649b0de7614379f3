"""Full CRLs per issuing authority.

- Entries: every revoked certificate of the authority that has not expired yet
  (and, for a CA that issued CAs, its revoked subordinate authorities).
- The number strictly increases per authority, across restarts and nodes: it
  is ``max(number) + 1`` under the ``(authority, number)`` unique constraint,
  retried on a collision.
- A critical Issuing Distribution Point names exactly the URL the
  certificates carry in their CRL DP (``{public_base_url}/crl/{name}.crl``),
  scoped to end-entity certificates for an issuing CA, CA certificates for a
  root.
- nextUpdate = thisUpdate + ``revocation.crl_validity`` (at most 10 days).
- The whole list goes to the builder's constructor at once (adding entries one
  by one is quadratic), and the CRL is linted on a trial signature first; above
  ``crl_full_lint_max_entries`` a representative sample is linted instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from appliance import durations, logs
from appliance.audit.log import Actor
from appliance.ceremony import x509build as xb
from appliance.errors import ApplianceError, SignatureCheckError
from appliance.hsm import keys
from appliance.hsm.signer import token_private_key
from appliance.lint import pkilint_gate
from appliance.ops import authorities as authz
from appliance.revocation.reasons import FLAGS
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, Crl, HsmKey

log = logs.get("revocation.crl")
SAMPLE = 1000


class CrlError(ApplianceError):
    code = "crl_error"


@dataclass(frozen=True)
class Published:
    authority: str
    number: int
    entries: int
    this_update: datetime
    next_update: datetime
    sha256: str


def crl_url(app: Appliance, authority: str) -> str:
    """Where the pipeline points leaf certificates of ``authority`` (their CRL DP)."""
    return f"{app.settings.config.service.public_base_url.rstrip('/')}/crl/{authority}.crl"


def _scope_url(app: Appliance, db: Any, ca: Authority) -> str:
    """The URL the IDP must name: exactly the CRL DP the covered certificates carry. A
    root's are CA certificates made at ceremonies, so their own CRL DP is authoritative."""
    if ca.kind == "root":
        for der in db.scalars(select(Authority.certificate_der).where(
                Authority.parent_id == ca.id).order_by(Authority.id)):
            try:
                points = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
                    x509.CRLDistributionPoints).value
            except x509.ExtensionNotFound:
                continue
            for point in points:
                for name in point.full_name or []:
                    if isinstance(name, x509.UniformResourceIdentifier):
                        return str(name.value)
    return crl_url(app, ca.name)


def _entries(db: Any, ca: Authority, now: datetime) -> list[x509.RevokedCertificate]:
    rows = db.execute(
        select(Certificate.serial_hex, Certificate.revoked_at, Certificate.revocation_reason)
        .where(Certificate.authority_id == ca.id, Certificate.status == "revoked",
               Certificate.not_after > now)
        .order_by(Certificate.id)
    ).all()
    subs = db.execute(
        select(Authority.serial_hex, Authority.created_at)
        .where(Authority.parent_id == ca.id, Authority.status == "revoked",
               Authority.not_after > now)
    ).all()
    out = []
    for serial_hex, revoked_at, reason in rows:
        out.append(_entry(int(serial_hex, 16), revoked_at or now, reason))
    for serial_hex, created_at in subs:
        out.append(_entry(int(serial_hex, 16), created_at or now, "cessationOfOperation"))
    return out


def _entry(serial: int, when: datetime, reason: str | None) -> x509.RevokedCertificate:
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    b = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when)
    if reason and reason != "unspecified":
        b = b.add_extension(x509.CRLReason(FLAGS[reason]), critical=False)
    return b.build()


def _builder(ca: Authority, cert: x509.Certificate, url: str, number: int, now: datetime,
             next_update: datetime, entries: list[x509.RevokedCertificate]
             ) -> x509.CertificateRevocationListBuilder:
    return (
        x509.CertificateRevocationListBuilder(
            issuer_name=cert.subject, last_update=now, next_update=next_update,
            revoked_certificates=entries)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            xb.ca_public_key(cert)), critical=False)
        .add_extension(x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url)], relative_name=None,
            only_contains_user_certs=ca.kind != "root", only_contains_ca_certs=ca.kind == "root",
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False),
            critical=True)
    )


def publish(app: Appliance, authority: str, actor: Actor) -> Published:
    """Build, lint, sign, store and audit a new full CRL of ``authority``."""
    cfg = app.settings.config.revocation
    validity = timedelta(seconds=durations.parse(cfg.crl_validity))
    with app.db.sessions() as db:
        ca = authz.get(db, authority)
        if ca.key_id is None or ca.kind not in ("root", "intermediate"):
            raise CrlError(f"{authority} is not a CA with a key in this token")
        key_row = db.get(HsmKey, ca.key_id)
        assert key_row is not None
        cert = authz.certificate(ca)
        now = datetime.now(UTC).replace(microsecond=0)
        entries = _entries(db, ca, now)
        url = _scope_url(app, db, ca)
        db.expunge(ca)
    pool = app.signing_pool()
    public = xb.ca_public_key(cert)
    signer = token_private_key(pool, keys.find_key(pool, key_row.label, public))
    algo = xb.HASHES[xb.default_hash(public)]
    next_update = min(now + validity, cert.not_valid_after_utc)
    for attempt in range(5):
        with app.db.sessions() as db:
            number = int(db.scalar(select(func.max(Crl.number)).where(
                Crl.authority_id == ca.id)) or 0) + 1
        builder = _builder(ca, cert, url, number, now, next_update, entries)
        if len(entries) <= cfg.crl_full_lint_max_entries:
            crl = xb.sign_crl(builder, signer, algo, None, public, [], f"CRL of {authority}")
        else:
            _lint_sample(ca, cert, url, number, now, next_update, entries, public, algo)
            crl = builder.sign(signer, algo)
            if not crl.is_signature_valid(public):
                raise SignatureCheckError(f"CRL of {authority}: signature does not verify")
        der = crl.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).hexdigest()
        try:
            with app.db.transaction() as db:
                db.add(Crl(authority_id=ca.id, number=number, this_update=now,
                           next_update=next_update, entries=len(entries), der=der,
                           created_at=datetime.now(UTC)))
                db.flush()
                app.audit_log().append(db, "crl.signed", actor, object_ids={
                    "authority": authority, "crl_number": number},
                    details={"entries": len(entries), "this_update": now.isoformat(),
                             "next_update": next_update.isoformat(), "sha256": digest})
        except IntegrityError:
            log.info("CRL number taken by another node; retrying",
                     extra={"authority": authority, "attempt": attempt + 1})
            continue
        return Published(authority, number, len(entries), now, next_update, digest)
    raise CrlError(f"could not allocate a CRL number for {authority} after 5 attempts")


def _lint_sample(ca: Authority, cert: x509.Certificate, url: str, number: int, now: datetime,
                 next_update: datetime, entries: list[x509.RevokedCertificate], public: Any,
                 algo: Any) -> None:
    """Lint a trial CRL with the same extensions and a sample of entries (every reason kept)."""
    seen: dict[Any, x509.RevokedCertificate] = {}
    for e in entries:
        try:
            reason = e.extensions.get_extension_for_class(x509.CRLReason).value.reason
        except x509.ExtensionNotFound:
            reason = None
        seen.setdefault(reason, e)
    sample = list(seen.values()) + entries[:SAMPLE]
    trial = _builder(ca, cert, url, number, now, next_update, sample).sign(
        xb.throwaway_key(public), algo)
    pkilint_gate.require_clean(pkilint_gate.lint_crl(
        trial.public_bytes(serialization.Encoding.DER)), f"CRL of {ca.name} (sample)")


def publish_all(app: Appliance, actor: Actor) -> list[Published]:
    """A new CRL for every active CA with a key (roots and intermediates)."""
    with app.db.sessions() as db:
        names = list(db.scalars(select(Authority.name).where(
            Authority.kind.in_(("root", "intermediate")), Authority.key_id.is_not(None),
            Authority.status == "active").order_by(Authority.id)))
    return [publish(app, name, actor) for name in names]
