"""ACME accounts as the operator sees them: list, show (with recent orders), revoke.

Why: without EAB anyone who reaches the directory can make an account, and with it an
account outlives the key that bound it only until the key is revoked. The operator needs
to see who holds accounts, what they ordered, and to shut one out (RFC 8555 §7.1.6:
"revoked" is the server-initiated end of an account; "deactivated" is the client's).
Revocation is audited; reads are not (the audit log records changes).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeEabKey, AcmeOrder, Provisioner

STATUSES = ("valid", "deactivated", "revoked")
MAX_LIST = 10_000
RECENT_ORDERS = 20
_ACCOUNT_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class AcmeAccountError(ApplianceError):
    code = "acme_account_error"


def _check_id(account_id: str) -> str:
    if not _ACCOUNT_ID.match(account_id):
        raise AcmeAccountError(f"{account_id[:40]!r} is not an ACME account id")
    return account_id


def _order_counts(db: Any, ids: list[str]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {i: {} for i in ids}
    if not ids:
        return out
    for acct, status, n in db.execute(
            select(AcmeOrder.account_id, AcmeOrder.status, func.count()).where(
                AcmeOrder.account_id.in_(ids)).group_by(AcmeOrder.account_id,
                                                        AcmeOrder.status)):
        out[acct][status] = n
    return out


def _account_dict(acct: AcmeAccount, provisioner: str, eab_reference: str | None,
                  orders: dict[str, int]) -> dict[str, Any]:
    return {"id": acct.id, "provisioner": provisioner, "status": acct.status,
            "contact": json.loads(acct.contact), "eab_key": acct.eab_key_id,
            "eab_reference": eab_reference, "thumbprint": acct.thumbprint,
            "created_at": acct.created_at.isoformat(),
            "orders": sum(orders.values()), "certificates": orders.get("valid", 0)}


def list_accounts(app: Appliance, provisioner: str | None = None, status: str | None = None,
                  limit: int = 100) -> list[dict[str, Any]]:
    """Newest first; ``limit`` bounds the answer (1..MAX_LIST)."""
    if not 1 <= limit <= MAX_LIST:
        raise AcmeAccountError(f"limit must be 1 to {MAX_LIST}")
    if status is not None and status not in STATUSES:
        raise AcmeAccountError(f"status must be one of {', '.join(STATUSES)}")
    with app.db.sessions() as db:
        q = select(AcmeAccount, Provisioner.name, AcmeEabKey.reference).join(
            Provisioner, Provisioner.id == AcmeAccount.provisioner_id).outerjoin(
            AcmeEabKey, AcmeEabKey.key_id == AcmeAccount.eab_key_id).order_by(
            AcmeAccount.created_at.desc(), AcmeAccount.id).limit(limit)
        if provisioner is not None:
            q = q.where(Provisioner.name == provisioner)
        if status is not None:
            q = q.where(AcmeAccount.status == status)
        rows = db.execute(q).all()
        counts = _order_counts(db, [a.id for a, _, _ in rows])
        return [_account_dict(a, p, ref, counts[a.id]) for a, p, ref in rows]


def show(app: Appliance, account_id: str) -> dict[str, Any]:
    """One account and its most recent orders (status, names, certificate serial)."""
    _check_id(account_id)
    with app.db.sessions() as db:
        found = db.execute(select(AcmeAccount, Provisioner.name, AcmeEabKey.reference).join(
            Provisioner, Provisioner.id == AcmeAccount.provisioner_id).outerjoin(
            AcmeEabKey, AcmeEabKey.key_id == AcmeAccount.eab_key_id).where(
            AcmeAccount.id == account_id)).first()
        if found is None:
            raise AcmeAccountError(f"no ACME account {account_id!r}")
        acct, prov, ref = found
        out = _account_dict(acct, prov, ref, _order_counts(db, [acct.id])[acct.id])
        orders = db.scalars(select(AcmeOrder).where(AcmeOrder.account_id == account_id)
                            .order_by(AcmeOrder.created_at.desc(), AcmeOrder.id)
                            .limit(RECENT_ORDERS)).all()
        out["recent_orders"] = [
            {"id": o.id, "status": o.status, "created_at": o.created_at.isoformat(),
             "identifiers": [i["value"] for i in json.loads(o.identifiers)],
             "certificate_serial": o.certificate_serial} for o in orders]
    return out


def revoke(app: Appliance, account_id: str, actor: Actor, reason: str) -> dict[str, Any]:
    """End an account from the CA's side: every later request with its key is refused
    (``unauthorized``), in every worker at once (the status is read on each request).
    Certificates it obtained stay valid; revoke them with ``appliance revoke``."""
    _check_id(account_id)
    if not 1 <= len(reason) <= 300 or not reason.isprintable():
        raise AcmeAccountError("--reason must be 1 to 300 printable characters")
    with app.db.transaction() as db:
        acct = db.get(AcmeAccount, account_id)
        if acct is None:
            raise AcmeAccountError(f"no ACME account {account_id!r}")
        if acct.status != "valid":
            raise AcmeAccountError(f"ACME account {account_id!r} is already {acct.status}")
        prov = db.get(Provisioner, acct.provisioner_id)
        assert prov is not None  # the account's foreign key (ON DELETE CASCADE)
        acct.status = "revoked"
        now = datetime.now(UTC).replace(microsecond=0)
        app.audit_log().append(
            db, "acme.account.revoked", actor,
            object_ids={"account": account_id, "provisioner": prov.name},
            details={"reason": reason, "eab_key": acct.eab_key_id,
                     "revoked_at": now.isoformat()})
    return {"id": account_id, "status": "revoked", "revoked_at": now.isoformat()}
