"""The registration authorities this node knows: provisioner rows of type ``ra``.

An RA is registered (``provisioner add NAME --type ra --csr F``, or ``/1.0/ra/register``
from an RA above it) with its credential: the certificate issued for the key in the RA's
token. The row keeps only public facts: its settings (claims, ``disabled``, ``ra_parent``:
the RA it was registered through, None for one that reports here directly) and, in
``credential``, the current credential certificate and its key's SPKI digest. A child is
recognised by that SPKI (its mTLS certificate), never by a name it claims.

Rows are read on every request (a disabled RA is refused at once in every worker); the
last contact is kept apart (``ra_contacts``), written at most every
:data:`CONTACT_EVERY` seconds per RA.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Table, bindparam, select, update
from sqlalchemy.orm import Session

from appliance.errors import ApplianceError
from appliance.provisioners.authorize import settings_of
from appliance.provisioners.settings import ProvisionerSettings
from appliance.runtime import Appliance
from appliance.store.models import Certificate, Provisioner, RaContact

CONTACT_EVERY = 10.0  # seconds: at most one last-contact write per RA in this interval
MAX_DEPTH = 8  # hops on a path (the hop assertion's bound)
_PROVISIONERS = cast(Table, Provisioner.__table__)
_CONTACTS = cast(Table, RaContact.__table__)
_CERTS = cast(Table, Certificate.__table__)
_RA_ROWS = select(*(_PROVISIONERS.c[k] for k in (
    "id", "name", "config", "credential", "authority_id"))).where(
    _PROVISIONERS.c.type == "ra")
_RA_BY_NAME = _RA_ROWS.where(_PROVISIONERS.c.name == bindparam("b_name"))
_CERT_STATUS = select(_CERTS.c.status, _CERTS.c.der, _CERTS.c.not_after).where(
    _CERTS.c.serial_hex == bindparam("b_serial"))
_TOUCH = update(_CONTACTS).where(_CONTACTS.c.provisioner_id == bindparam("b_id"))


class RaUnknown(ApplianceError):
    """The caller is not a registered RA (no credential, or one no registered RA holds)."""

    code = "unauthorized"
    status = 401
    acme_type = "unauthorized"


class RaRefused(ApplianceError):
    """A registered RA may not do this now: it, or an RA above it, is disabled; its
    credential is revoked or expired; or it is not where the path says it is."""

    code = "forbidden"
    status = 403
    acme_type = "unauthorized"


class RegistryError(ApplianceError):
    """An RA cannot be registered as asked (name or key already registered, bad CSR)."""

    code = "bad_request"


def spki_digest(key: Any) -> str:
    """Hex SHA-256 of a public key's SubjectPublicKeyInfo DER: how an RA is recognised."""
    der: bytes = key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class RaEntry:
    """One registered RA as read on this request."""

    id: int
    name: str
    config: str
    authority_id: int
    spki_sha256: str
    certificate: x509.Certificate | None  # its current credential

    @property
    def type(self) -> str:
        """Always ``ra``: so an entry reads like its provisioner row (``authorize.context``)."""
        return "ra"

    @property
    def settings(self) -> ProvisionerSettings:
        return settings_of(self.config)

    @property
    def parent(self) -> str | None:
        return self.settings.ra_parent

    @property
    def disabled(self) -> bool:
        return self.settings.disabled

    @property
    def serial(self) -> str | None:
        return f"{self.certificate.serial_number:x}" if self.certificate else None


def credential_doc(cert: x509.Certificate) -> str:
    """What ``provisioners.credential`` holds for an RA: public facts only."""
    return json.dumps({
        "spki_sha256": spki_digest(cert.public_key()),
        "serial": f"{cert.serial_number:x}",
        "not_after": cert.not_valid_after_utc.isoformat(),
        "certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }, sort_keys=True)


def _entry(row: Any) -> RaEntry:
    try:
        doc = json.loads(row.credential or "{}")
        pem = doc.get("certificate")
        cert = x509.load_pem_x509_certificate(pem.encode()) if pem else None
        spki = str(doc.get("spki_sha256") or "")
    except (ValueError, AttributeError, TypeError):
        cert, spki = None, ""  # an unreadable credential recognises nobody (fail closed)
    return RaEntry(row.id, row.name, row.config, row.authority_id, spki, cert)


def all_entries(db: Session | Any) -> list[RaEntry]:
    return [_entry(r) for r in db.execute(_RA_ROWS.order_by(_PROVISIONERS.c.name)).all()]


def by_name(db: Session | Any, name: str) -> RaEntry | None:
    row = db.execute(_RA_BY_NAME, {"b_name": name}).first()
    return _entry(row) if row is not None else None


def by_spki(db: Session | Any, spki_sha256: str) -> RaEntry | None:
    """The RA whose credential key this is (at most one: registration refuses a key twice).
    The RAs of one node are few; they are scanned, so nothing is cached across requests."""
    found = [e for e in all_entries(db) if e.spki_sha256 and e.spki_sha256 == spki_sha256]
    return found[0] if len(found) == 1 else None


def children(db: Session | Any, name: str) -> list[RaEntry]:
    return [e for e in all_entries(db) if e.parent == name]


def lineage(db: Session | Any, entry: RaEntry) -> list[RaEntry]:
    """``entry`` and the registered RAs above it (its parent, the parent's parent...), each
    read now. A parent that is named but no longer registered, or a loop, refuses."""
    out = [entry]
    while out[-1].parent is not None:
        if len(out) >= MAX_DEPTH:
            raise RaRefused(f"RA {entry.name} is registered more than {MAX_DEPTH} hops deep")
        parent = by_name(db, out[-1].parent)
        if parent is None:
            raise RaRefused(f"RA {out[-1].name} was registered through RA {out[-1].parent}, "
                            "which is no longer registered")
        if any(p.id == parent.id for p in out):
            raise RaRefused(f"RA {entry.name}'s registration loops through {parent.name}")
        out.append(parent)
    return out


def require_enabled(db: Session | Any, entry: RaEntry) -> None:
    """RaRefused if ``entry`` or any RA above it is disabled: disabling an RA cuts it and
    every RA chained below it at once."""
    for e in lineage(db, entry):
        if e.disabled:
            if e.id == entry.id:
                raise RaRefused(f"RA {entry.name} is disabled")
            raise RaRefused(f"RA {entry.name} is cut off: RA {e.name} above it is disabled")


def credential_state(db: Session | Any, entry: RaEntry, now: datetime | None = None) -> str:
    """The state of the RA's current credential (:func:`credential_state_of`), or
    ``missing`` without one."""
    if entry.certificate is None:
        return "missing"
    return credential_state_of(db, entry.certificate, now)


def credential_state_of(db: Session | Any, cert: x509.Certificate,
                        now: datetime | None = None) -> str:
    """``issued`` if this node issued ``cert`` and it is neither revoked nor expired; else
    why not: ``revoked``, ``expired``, or ``unknown`` (not a certificate of this node: on an
    RA node, a child's credential, which the CA issued)."""
    now = now or datetime.now(UTC)
    row = db.execute(_CERT_STATUS, {"b_serial": f"{cert.serial_number:x}"}).first()
    if row is None or row.der != cert.public_bytes(serialization.Encoding.DER):
        return "expired" if cert.not_valid_after_utc <= now else "unknown"
    if row.status == "revoked":
        return "revoked"
    if row.status != "issued":
        return str(row.status)
    return "expired" if cert.not_valid_after_utc <= now else "issued"


def state(db: Session | Any, entry: RaEntry, now: datetime | None = None) -> str:
    """What ``ra list`` shows: ``disabled``, ``cut off (RA X above it is disabled)``,
    ``revoked``, ``expired`` or ``enabled``: as the path check would decide now."""
    if entry.disabled:
        return "disabled"
    above = next((e for e in lineage(db, entry) if e.disabled and e.id != entry.id), None)
    if above is not None:
        return f"cut off (RA {above.name} above it is disabled)"
    cred = credential_state(db, entry, now)
    if cred in ("revoked", "expired"):
        return cred
    if cred == "missing":
        return "no credential"
    return "enabled"


def last_contacts(db: Session | Any) -> dict[int, tuple[datetime, str]]:
    rows = db.execute(select(_CONTACTS.c.provisioner_id, _CONTACTS.c.last_contact_at,
                             _CONTACTS.c.last_op)).all()
    return {r.provisioner_id: (r.last_contact_at, r.last_op) for r in rows}


# Per Appliance (a process may serve, or test, several): RA id -> when last written.
_last_touch: weakref.WeakKeyDictionary[Appliance, dict[int, float]] = \
    weakref.WeakKeyDictionary()


def touch(app: Appliance, entry: RaEntry, op: str) -> None:
    """Record that ``entry`` called (for ``ra list``): at most one write per RA every
    :data:`CONTACT_EVERY` seconds in this process; a failed write is not the request's
    failure (the contact time is information, not state any decision reads)."""
    now = datetime.now(UTC)
    stamp = now.timestamp()
    written = _last_touch.setdefault(app, {})
    if stamp - written.get(entry.id, 0.0) < CONTACT_EVERY:
        return
    written[entry.id] = stamp
    try:
        with app.db.write() as db:
            done = db.execute(_TOUCH, {"b_id": entry.id, "last_contact_at": now,
                                       "last_op": op[:32]})
            if done.rowcount == 0:
                db.execute(_CONTACTS.insert(), {"provisioner_id": entry.id,
                                                "last_contact_at": now, "last_op": op[:32]})
    except Exception:
        written.pop(entry.id, None)


def record(db: Session, name: str, cert: x509.Certificate, *, authority_id: int,
           settings: ProvisionerSettings) -> Provisioner:
    """Add the registered RA's row (inside the caller's transaction, which audits it).
    A name or credential key registered already refuses."""
    if db.scalars(select(Provisioner).where(Provisioner.name == name)).first() is not None:
        raise RegistryError(f"a provisioner named {name!r} already exists")
    spki = spki_digest(cert.public_key())
    if any(e.spki_sha256 == spki for e in all_entries(db)):
        raise RegistryError("this credential key is already registered for another RA")
    now = datetime.now(UTC)
    row = Provisioner(name=name, type="ra", config=settings.model_dump_json(),
                      credential=credential_doc(cert), authority_id=authority_id,
                      created_at=now, updated_at=now)
    db.add(row)
    db.flush()
    return row


def set_credential(db: Session, name: str, cert: x509.Certificate) -> None:
    """Make ``cert`` the RA's current credential (a renewal: the same key)."""
    row = db.scalars(select(Provisioner).where(Provisioner.name == name,
                                               Provisioner.type == "ra")).one_or_none()
    if row is None:
        raise RegistryError(f"no RA named {name!r}")
    if json.loads(row.credential or "{}").get("spki_sha256") != spki_digest(cert.public_key()):
        raise RegistryError(f"the new credential of RA {name} is for another key")
    row.credential = credential_doc(cert)
    row.updated_at = datetime.now(UTC)

