"""Bounded ACME state: orders (with their authorizations and challenges) that ended long
ago are deleted, and so are redeemed nonces that can no longer come back.

Why: every order leaves an order row, one authorization per name and up to three
challenges each; a busy CA would grow these tables for ever. What is deleted can no
longer matter to a client: an order that failed or expired cannot be finalized, and a
valid order only links its account to a certificate for revocation by account and for
ARI's ``replaces``, both pointless once the certificate has expired. The certificate
rows themselves, accounts and the audit log are never touched.

Each batch is deleted in one transaction with an audit record of what went (counts and
the cutoff), so the log says why rows are missing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import Table, delete, func, select

from appliance.acme import nonces
from appliance.audit.log import Actor
from appliance.runtime import Appliance
from appliance.store.models import AcmeOrder, AcmeUsedNonce, Certificate

BATCH = 1000
_ORDERS = cast(Table, AcmeOrder.__table__)
_CERTS = cast(Table, Certificate.__table__)
_NONCES = cast(Table, AcmeUsedNonce.__table__)


@dataclass
class Pruned:
    cutoff: str
    orders_ended: int = 0  # invalid, or expired before they became valid
    orders_expired_certificate: int = 0  # valid, certificate expired before the cutoff
    nonces: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _ended(cutoff: datetime) -> Any:
    return select(_ORDERS.c.id).where(_ORDERS.c.status != "valid",
                                      _ORDERS.c.expires_at < cutoff)


def _expired_certificate(cutoff: datetime) -> Any:
    return select(_ORDERS.c.id).select_from(_ORDERS.join(
        _CERTS, _CERTS.c.serial_hex == _ORDERS.c.certificate_serial, isouter=True)).where(
        _ORDERS.c.status == "valid",
        # a valid order whose certificate row is gone has nothing left to point at
        (_CERTS.c.not_after < cutoff) | _CERTS.c.id.is_(None))


def prune(app: Appliance, older_than: timedelta, actor: Actor, *, dry_run: bool = False,
          now: datetime | None = None) -> Pruned:
    """Delete what ended before ``now - older_than``; ``dry_run`` only counts."""
    if older_than < timedelta(0):
        raise ValueError("older_than must not be negative")
    now = now or datetime.now(UTC)
    cutoff = now - older_than
    result = Pruned(cutoff=cutoff.replace(microsecond=0).isoformat(), dry_run=dry_run)
    if dry_run:
        with app.db.read() as conn:
            for field, query in (("orders_ended", _ended(cutoff)),
                                 ("orders_expired_certificate", _expired_certificate(cutoff))):
                setattr(result, field, conn.execute(
                    select(func.count()).select_from(query.subquery())).scalar_one())
            result.nonces = conn.execute(select(func.count()).select_from(_NONCES).where(
                nonces.gone_by(now))).scalar_one()
        return result
    for field, query in (("orders_ended", _ended(cutoff)),
                         ("orders_expired_certificate", _expired_certificate(cutoff))):
        while True:
            with app.db.transaction() as db:
                ids = list(db.execute(query.limit(BATCH)).scalars())
                if not ids:
                    break
                # authorizations and challenges go with their order (ON DELETE CASCADE)
                db.execute(delete(_ORDERS).where(_ORDERS.c.id.in_(ids)))
                app.audit_log().append(db, "acme.pruned", actor, object_ids={}, details={
                    "what": field, "orders": len(ids), "cutoff": result.cutoff})
            setattr(result, field, getattr(result, field) + len(ids))
    with app.db.transaction() as db:
        result.nonces = nonces.prune_used(db.connection(), now)
        if result.nonces:
            app.audit_log().append(db, "acme.pruned", actor, object_ids={}, details={
                "what": "nonces", "nonces": result.nonces, "before": now.isoformat()})
    return result
