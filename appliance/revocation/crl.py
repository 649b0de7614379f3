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
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import String, func, select, type_coerce
from sqlalchemy.exc import IntegrityError

from appliance import durations, lint, logs
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import ApplianceError, SignatureCheckError
from appliance.hsm import keys
from appliance.hsm.signer import token_private_key
from appliance.revocation.reasons import FLAGS
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, Crl, HsmKey
from appliance.x509 import algorithms, signing

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


@dataclass
class _Entries:
    """The CRL entries and, for the lint, a sample with every reason in it."""

    revoked: list[x509.RevokedCertificate]
    sample: list[x509.RevokedCertificate]


def _reason_extensions() -> dict[str | None, list[x509.Extension[x509.ExtensionType]]]:
    """One shared, immutable extension list per reason (1,000,000 entries with 8 reasons
    need 8 extension objects, not 1,000,000)."""
    out: dict[str | None, list[x509.Extension[x509.ExtensionType]]] = {
        None: [], "unspecified": []}
    for name, flag in FLAGS.items():
        if name != "unspecified":
            out[name] = [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(flag))]
    return out


def _naive_utc(value: Any, default: datetime) -> datetime:
    """A database timestamp (SQLite: text, naive UTC or with an offset; PostgreSQL: an
    aware datetime) as the naive UTC datetime the entry builder stores."""
    if isinstance(value, str) and value.endswith("+00:00"):
        value = value[:-6]  # already UTC: skip the conversion below
    when: datetime = default if value is None else (
        value if isinstance(value, datetime) else datetime.fromisoformat(str(value)))
    if when.tzinfo is not None:
        when = when.astimezone(UTC).replace(tzinfo=None)
    return when


def _entries(db: Any, ca: Authority, now: datetime) -> _Entries:
    """Why not the ORM and the builder's setters: at 1,000,000 entries the ORM's
    timestamp parsing, three builder copies per entry and an extension object per entry
    were most of the publish time and memory. Rows are streamed (never all held), the
    timestamp is read as text and parsed in C, each entry is built from the
    constructor with its reason's shared extension list, and the checks the setters
    would make (serial positive and under 160 bits, a known reason) are made here."""
    exts = _reason_extensions()
    naive_now = now.astimezone(UTC).replace(tzinfo=None)
    rows = db.connection().execute(  # Core, not the ORM's row loading
        select(Certificate.serial_hex, type_coerce(Certificate.revoked_at, String),
               Certificate.revocation_reason)
        .where(Certificate.authority_id == ca.id, Certificate.status == "revoked",
               Certificate.not_after > now)
        .order_by(Certificate.id)
    )
    subs = db.execute(
        select(Authority.serial_hex, Authority.created_at)
        .where(Authority.parent_id == ca.id, Authority.status == "revoked",
               Authority.not_after > now)
    ).all()
    build = x509.RevokedCertificateBuilder
    revoked: list[x509.RevokedCertificate] = []
    first_of: dict[str | None, x509.RevokedCertificate] = {}
    for serial_hex, revoked_at, reason in itertools.chain(
            rows, ((s, c, "cessationOfOperation") for s, c in subs)):
        serial = int(serial_hex, 16)
        if serial <= 0 or serial.bit_length() >= 160:
            raise CrlError(f"serial {serial_hex} cannot be a CRL entry")
        ext = exts.get(reason)
        if ext is None:
            raise CrlError(f"unknown revocation reason {reason!r} for serial {serial_hex}")
        entry = build(serial, _naive_utc(revoked_at, naive_now), ext).build()
        revoked.append(entry)
        if reason not in first_of:
            first_of[reason] = entry
    sample = list(first_of.values()) + revoked[:SAMPLE]
    return _Entries(revoked, sample)


def _builder(ca: Authority, cert: x509.Certificate, url: str, number: int, now: datetime,
             next_update: datetime, entries: list[x509.RevokedCertificate]
             ) -> x509.CertificateRevocationListBuilder:
    return (
        x509.CertificateRevocationListBuilder(
            issuer_name=cert.subject, last_update=now, next_update=next_update,
            revoked_certificates=entries)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            signing.ca_public_key(cert)), critical=False)
        .add_extension(x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(url)], relative_name=None,
            only_contains_user_certs=ca.kind != "root", only_contains_ca_certs=ca.kind == "root",
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False),
            critical=True)
    )


Progress = Callable[[str], None]
"""Told each step of a long publication ("issuing: signing 1000000 entries") as it starts."""


def _quiet(_step: str) -> None:
    pass


def publish(app: Appliance, authority: str, actor: Actor, *,
            progress: Progress = _quiet) -> Published:
    """Build, lint, sign, store and audit a new full CRL of ``authority``."""
    progress(f"{authority}: reading revoked certificates")
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
        found = _entries(db, ca, now)
        entries = found.revoked
        url = _scope_url(app, db, ca)
        db.expunge(ca)
    pool = app.signing_pool()
    public = signing.ca_public_key(cert)
    signer = token_private_key(pool, keys.find_key(pool, key_row.label, public))
    algo = algorithms.ca_signature_hash(public)
    next_update = min(now + validity, cert.not_valid_after_utc)
    for attempt in range(5):
        with app.db.sessions() as db:
            number = int(db.scalar(select(func.max(Crl.number)).where(
                Crl.authority_id == ca.id)) or 0) + 1
        builder = _builder(ca, cert, url, number, now, next_update, entries)
        if len(entries) <= cfg.crl_full_lint_max_entries:
            progress(f"{authority}: building, linting and signing CRL #{number} "
                     f"({len(entries)} entries)")
            crl = signing.sign_crl(builder, signer, algo, None, public, [], f"CRL of {authority}")
        else:
            progress(f"{authority}: linting a sample of CRL #{number}")
            _lint_sample(ca, cert, url, number, now, next_update, found.sample, public, algo)
            progress(f"{authority}: building and signing CRL #{number} "
                     f"({len(entries)} entries)")
            crl = builder.sign(signer, algo)
            if not crl.is_signature_valid(public):
                raise SignatureCheckError(f"CRL of {authority}: signature does not verify")
        der = crl.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).hexdigest()
        progress(f"{authority}: storing CRL #{number} ({len(der)} bytes)")
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
                 next_update: datetime, sample: list[x509.RevokedCertificate], public: Any,
                 algo: Any) -> None:
    """Lint a trial CRL with the same extensions and a sample of entries (every reason
    present in the CRL, then the first :data:`SAMPLE`), signed by a throw-away key."""
    trial = _builder(ca, cert, url, number, now, next_update, sample).sign(
        signing.throwaway_key(public), algo)
    lint.require_clean(lint.lint_crl(
        trial.public_bytes(serialization.Encoding.DER)), f"CRL of {ca.name} (sample)")


MAX_IMPORTED_CRL_BYTES = 10_000_000  # Microsoft's advice for a CRL's size; an ARL is tiny


def import_signed(app: Appliance, authority: str, data: bytes, actor: Actor) -> Published:
    """Publish a CRL that ``authority``'s key signed elsewhere (an offline root's ``crl``
    ceremony): checked against the registered CA certificate, never older than what is
    published, then stored and audited like one signed here."""
    if len(data) > MAX_IMPORTED_CRL_BYTES:
        raise CrlError(f"the CRL is larger than {MAX_IMPORTED_CRL_BYTES} bytes")
    try:
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
               else x509.load_der_x509_crl(data))
        number_ext = crl.extensions.get_extension_for_class(x509.CRLNumber).value
        entries = len(crl)
    except x509.ExtensionNotFound:
        raise CrlError("the CRL has no CRL number") from None
    except ValueError as exc:
        raise CrlError(f"not a CRL (PEM or DER): {exc}") from None
    now = datetime.now(UTC)
    with app.db.transaction() as db:
        ca = authz.get(db, authority)
        cert = authz.certificate(ca)
        if crl.issuer.public_bytes() != cert.subject.public_bytes():
            raise CrlError(f"the CRL's issuer {crl.issuer.rfc4514_string()!r} is not "
                           f"{authority} ({cert.subject.rfc4514_string()!r})")
        if not crl.is_signature_valid(signing.ca_public_key(cert)):
            raise CrlError(f"the CRL is not signed by {authority}'s key")
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
        if next_update is None or next_update <= now:
            raise CrlError("the CRL has expired (or has no nextUpdate); sign a new one")
        if this_update > now + timedelta(minutes=5):
            raise CrlError("the CRL's thisUpdate lies in the future")
        newest = db.scalar(select(func.max(Crl.number)).where(Crl.authority_id == ca.id))
        if newest is not None and number_ext.crl_number <= newest:
            raise CrlError(f"CRL #{number_ext.crl_number} is not newer than the published "
                           f"#{newest} of {authority}")
        der = crl.public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).hexdigest()
        db.add(Crl(authority_id=ca.id, number=number_ext.crl_number, this_update=this_update,
                   next_update=next_update, entries=entries, der=der, created_at=now))
        db.flush()
        app.audit_log().append(db, "crl.imported", actor, object_ids={
            "authority": authority, "crl_number": number_ext.crl_number},
            details={"entries": entries, "this_update": this_update.isoformat(),
                     "next_update": next_update.isoformat(), "sha256": digest})
    return Published(authority, number_ext.crl_number, entries, this_update, next_update,
                     digest)


def publish_all(app: Appliance, actor: Actor, *, progress: Progress = _quiet
                ) -> list[Published]:
    """A new CRL for every active CA with a key (roots and intermediates)."""
    with app.db.sessions() as db:
        names = list(db.scalars(select(Authority.name).where(
            Authority.kind.in_(("root", "intermediate")), Authority.key_id.is_not(None),
            Authority.status == "active").order_by(Authority.id)))
    done = []
    for i, name in enumerate(names, 1):
        def step(text: str, i: int = i) -> None:
            progress(f"[{i}/{len(names)}] {text}")
        done.append(publish(app, name, actor, progress=step))
    return done
