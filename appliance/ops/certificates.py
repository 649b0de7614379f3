"""Finding and inspecting the certificates the CA issued (``appliance cert``).

Only reads: nothing here changes state, so nothing is audited. "expired" is not a
stored status (no job flips issued rows when they run out), so it is derived from
``not_after`` at the moment of the query, and "issued" then means issued and not yet
expired: the two never overlap, and a list of issued certificates is a list of the
ones still in use.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Row, Select, func, select

from appliance import rfc3339
from appliance.errors import ApplianceError
from appliance.revocation.revoke import normalise_serial
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate, InventoryRecord

STATUSES = ("issued", "revoked", "expired", "failed", "reserved")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
MAX_NAME = 256

_C = Certificate
_Stmt = Select[*tuple[Any, ...]]
_Row = Row[*tuple[Any, ...]]
# Everything but the DER: a list of thousands of rows should not load every certificate.
_COLUMNS = (_C.id, _C.serial_hex, _C.status, _C.subject, _C.sans, _C.not_before, _C.not_after,
            _C.provisioner_name, _C.requester, _C.template, _C.inventory_record_id,
            _C.fingerprint_sha256, _C.renewed_from, _C.reserved_at, _C.issued_at,
            _C.revoked_at, _C.revocation_reason, Authority.name.label("authority"))


class NotFound(ApplianceError):
    """The certificate or authority asked about does not exist."""

    code = "not_found"
    status = 404


class CertificateQueryError(ApplianceError):
    """A filter out of its bounds; refused before the database is asked anything."""

    code = "bad_request"


def list_certificates(app: Appliance, *, provisioner: str | None = None,
                      authority: str | None = None, status: str | None = None,
                      name: str | None = None, expiring_within: int | None = None,
                      limit: int = DEFAULT_LIMIT, now: datetime | None = None
                      ) -> list[dict[str, Any]]:
    """Certificates matching every filter given, newest first, at most ``limit``.

    ``name`` is a case-insensitive substring of the subject or of any SAN (on SQLite
    only ASCII letters fold case). ``expiring_within`` (seconds) keeps issued
    certificates that are still valid and expire within that time.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise CertificateQueryError(f"limit must be between 1 and {MAX_LIMIT}")
    if status is not None and status not in STATUSES:
        raise CertificateQueryError(f"unknown status {status!r} (one of {', '.join(STATUSES)})")
    if name is not None and not 1 <= len(name) <= MAX_NAME:
        raise CertificateQueryError(f"name must be 1 to {MAX_NAME} characters")
    if expiring_within is not None and expiring_within <= 0:
        raise CertificateQueryError("expiring_within must be a positive number of seconds")
    now = now or datetime.now(UTC)
    stmt: _Stmt = (
        select(*_COLUMNS).join(Authority, Authority.id == _C.authority_id)
        .order_by(func.coalesce(_C.issued_at, _C.reserved_at).desc(), _C.id.desc()))
    if provisioner is not None:
        stmt = stmt.where(_C.provisioner_name == provisioner)
    if authority is not None:
        stmt = stmt.where(Authority.name == authority)
    stmt = _status_filter(stmt, status, now)
    if expiring_within is not None:
        stmt = stmt.where(_C.status == "issued", _C.not_after >= now,
                          _C.not_after <= now + timedelta(seconds=expiring_within))
    if name is not None:
        # The SANs are stored as JSON text, so the needle is matched in its JSON form. That
        # can also hit JSON escapes ("u00e9" inside "\\u00e9"), so the SQL match is only a
        # pre-filter that keeps the scan in the database; _matches below makes it exact.
        stmt = stmt.where(_C.subject.icontains(name, autoescape=True)
                          | _C.sans.icontains(json.dumps(name)[1:-1], autoescape=True))
    with app.db.read() as conn:
        if authority is not None and conn.execute(
                select(Authority.id).where(Authority.name == authority)).first() is None:
            raise NotFound(f"no authority named {authority!r}")
        if name is None:
            return [_view(r, now) for r in conn.execute(stmt.limit(limit)).all()]
        out: list[dict[str, Any]] = []
        offset = 0
        while True:  # more than one round only when the pre-filter let false matches in
            batch = conn.execute(stmt.limit(limit).offset(offset)).all()
            for r in batch:
                if _matches(r, name):
                    out.append(_view(r, now))
                    if len(out) == limit:
                        return out
            if len(batch) < limit:
                return out
            offset += limit


def show(app: Appliance, serial: str, *, now: datetime | None = None) -> dict[str, Any]:
    """Every stored fact of one certificate, its PEM included (``None`` if never signed)."""
    serial_hex = normalise_serial(serial)
    now = now or datetime.now(UTC)
    stmt: _Stmt = (
        select(*_COLUMNS, _C.der, _C.ra_path, InventoryRecord.name.label("inventory_record"))
        .join(Authority, Authority.id == _C.authority_id)
        .outerjoin(InventoryRecord, InventoryRecord.id == _C.inventory_record_id)
        .where(_C.serial_hex == serial_hex))
    with app.db.read() as conn:
        row = conn.execute(stmt).first()
    if row is None:
        raise NotFound(f"no certificate with serial {serial_hex}")
    out = _view(row, now)
    out["inventory_record"] = row.inventory_record
    # The registration authorities it came through, bottom first (None: asked for here).
    ra_path = json.loads(row.ra_path) if row.ra_path else None
    out["ra_path"] = [str(n) for n in ra_path] if isinstance(ra_path, list) else None
    out["pem"] = (x509.load_der_x509_certificate(row.der).public_bytes(
        serialization.Encoding.PEM).decode() if row.der is not None else None)
    return out


def _status_filter(stmt: _Stmt, status: str | None, now: datetime) -> _Stmt:
    if status == "issued":
        return stmt.where(_C.status == "issued", _C.not_after >= now)
    if status == "expired":
        return stmt.where(_C.status == "issued", _C.not_after < now)
    if status is not None:
        return stmt.where(_C.status == status)
    return stmt


def _sans(row: _Row) -> list[str]:
    sans = json.loads(row.sans or "[]")
    return [str(s) for s in sans] if isinstance(sans, list) else []


def _matches(row: _Row, name: str) -> bool:
    needle = name.casefold()
    return needle in (row.subject or "").casefold() or any(
        needle in s.casefold() for s in _sans(row))


def _utc(value: datetime | None) -> datetime | None:
    return rfc3339.to_utc(value) if value is not None else None


def _iso(value: datetime | None) -> str | None:
    when = _utc(value)
    return when.isoformat() if when is not None else None


def effective_status(stored: str, not_after: datetime | None, now: datetime) -> str:
    """The stored status, except that an issued certificate past its notAfter is expired."""
    end = _utc(not_after)
    if stored == "issued" and end is not None and end < now:
        return "expired"
    return stored


def _view(row: _Row, now: datetime) -> dict[str, Any]:
    return {
        "serial": row.serial_hex,
        "status": effective_status(row.status, row.not_after, now),
        "stored_status": row.status,
        "subject": row.subject,
        "sans": _sans(row),
        "not_before": _iso(row.not_before),
        "not_after": _iso(row.not_after),
        "authority": row.authority,
        "provisioner": row.provisioner_name,
        "requester": row.requester,
        "template": row.template,
        "inventory_record_id": row.inventory_record_id,
        "fingerprint_sha256": row.fingerprint_sha256,
        "renewed_from": row.renewed_from,
        "reserved_at": _iso(row.reserved_at),
        "issued_at": _iso(row.issued_at),
        "revoked_at": _iso(row.revoked_at),
        "revocation_reason": row.revocation_reason,
    }

