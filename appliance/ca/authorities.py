"""Registering and finding the CAs the appliance knows (and the keys behind them)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import rfc3339
from appliance.errors import ApplianceError
from appliance.hsm.keys import KeyInfo
from appliance.store.models import Authority, HsmKey
from appliance.x509.path import Link


class AuthorityError(ApplianceError):
    code = "authority_error"


@dataclass(frozen=True)
class AuthorityView:
    """What ``authority list`` shows."""

    name: str
    kind: str
    subject: str
    key_label: str | None
    algorithm: str | None
    not_before: datetime
    not_after: datetime
    parent: str | None
    fingerprint_sha256: str
    serial: str
    status: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "kind": self.kind, "subject": self.subject,
            "key_label": self.key_label, "algorithm": self.algorithm,
            "not_before": self.not_before.isoformat(), "not_after": self.not_after.isoformat(),
            "parent": self.parent, "fingerprint_sha256": self.fingerprint_sha256,
            "serial": self.serial, "status": self.status,
        }


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def spki_sha256(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def key_row(session: Session, info: KeyInfo) -> HsmKey:
    """The database row of a token key; it must be the key the appliance generated."""
    row = session.scalars(select(HsmKey).where(HsmKey.label == info.label)).one_or_none()
    if row is None:
        raise AuthorityError(f"token key {info.label!r} is not registered with the appliance")
    if row.spki_sha256 != info.spki_sha256 or row.ck_id != info.id.hex():
        raise AuthorityError(
            f"token key {info.label!r} does not match the key registered under that label"
        )
    return row


def register(session: Session, *, name: str, kind: str, cert: x509.Certificate,
             key: HsmKey | None, parent: Authority | None, ceremony: str | None) -> Authority:
    if session.scalars(select(Authority).where(Authority.name == name)).one_or_none():
        raise AuthorityError(f"an authority named {name!r} already exists")
    fp = fingerprint(cert)
    if session.scalars(select(Authority).where(Authority.fingerprint_sha256 == fp)).first():
        raise AuthorityError(f"certificate {fp} is already registered")
    row = Authority(
        name=name, kind=kind, key_id=key.id if key else None,
        parent_id=parent.id if parent else None, subject=cert.subject.rfc4514_string(),
        certificate_der=cert.public_bytes(serialization.Encoding.DER), fingerprint_sha256=fp,
        not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
        status="active", serial_hex=f"{cert.serial_number:x}", ceremony=ceremony,
        created_at=datetime.now(UTC),
    )
    session.add(row)
    session.flush()
    return row


def get(session: Session, name: str) -> Authority:
    row = session.scalars(select(Authority).where(Authority.name == name)).one_or_none()
    if row is None:
        raise AuthorityError(f"no authority named {name!r}")
    return row


def certificate(row: Authority) -> x509.Certificate:
    return x509.load_der_x509_certificate(row.certificate_der)


def chain_links(session: Session, row: Authority) -> list[Link]:
    """``row``'s chain, itself first, up through its registered parents to the root."""
    links = [Link(row.name, certificate(row))]
    seen = {row.id}
    parent_id = row.parent_id
    while parent_id is not None and parent_id not in seen:
        parent = session.get(Authority, parent_id)
        if parent is None:
            break
        seen.add(parent.id)
        links.append(Link(parent.name, certificate(parent)))
        parent_id = parent.parent_id
    return links


def list_all(session: Session) -> list[AuthorityView]:
    rows = session.scalars(select(Authority).order_by(Authority.id)).all()
    keys = {k.id: k for k in session.scalars(select(HsmKey)).all()}
    names = {r.id: r.name for r in rows}
    out = []
    for r in rows:
        key = keys.get(r.key_id) if r.key_id is not None else None
        out.append(AuthorityView(
            name=r.name, kind=r.kind, subject=r.subject,
            key_label=key.label if key else None, algorithm=key.key_type if key else None,
            not_before=rfc3339.to_utc(r.not_before), not_after=rfc3339.to_utc(r.not_after),
            parent=names.get(r.parent_id) if r.parent_id else None,
            fingerprint_sha256=r.fingerprint_sha256, serial=r.serial_hex, status=r.status,
        ))
    return out
