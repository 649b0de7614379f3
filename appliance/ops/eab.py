"""Operator-made External Account Binding keys: add (the HMAC key is shown once), list,
revoke. Each change is audited; the HMAC key never is."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import select

from appliance import policy
from appliance.acme import eab
from appliance.audit.log import Actor
from appliance.errors import ApplianceError
from appliance.ops import provisioners as prov_ops
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeEabKey, Provisioner

_T = TypeVar("_T")


class EabError(ApplianceError):
    code = "eab_error"


@dataclass(frozen=True)
class NewEabKey:
    key_id: str
    hmac_key_b64: str
    provisioner: str
    reference: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _no_leading_dash(make: Callable[[], _T], text: Callable[[_T], str] = str) -> _T:
    """Draw again while the printed form starts with "-": base64url may, and a client's
    command line (certbot --eab-hmac-key -x..., lego --kid -x...) then takes the value for
    an option (1 key in 64). Costs 0.02 bits of the key's 256."""
    while True:
        value = make()
        if not text(value).startswith("-"):
            return value


def add(app: Appliance, provisioner: str, reference: str, actor: Actor, *,
        policy_text: str | None = None) -> NewEabKey:
    if not 1 <= len(reference) <= 128 or not reference.isprintable():
        raise EabError("--reference must be 1 to 128 printable characters")
    if policy_text is not None:
        policy.parse_policy(policy_text, "EAB key policy")  # refused before anything changes
    key_id = _no_leading_dash(lambda: secrets.token_urlsafe(16))
    hmac_key = _no_leading_dash(lambda: os.urandom(32), _b64)
    with app.db.transaction() as db:
        prov = prov_ops.get(db, provisioner)
        if prov.type != "acme":
            raise EabError(f"provisioner {provisioner!r} is {prov.type}, not acme")
        db.add(AcmeEabKey(key_id=key_id, provisioner_id=prov.id, reference=reference,
                          hmac_sealed=eab.seal(app.settings.base_dir, key_id, hmac_key),
                          policy=policy_text, created_at=datetime.now(UTC)))
        app.audit_log().append(db, "acme.eab.added", actor,
                               object_ids={"eab_key": key_id, "provisioner": provisioner},
                               details={"reference": reference,
                                        "policy": policy_text is not None})
    return NewEabKey(key_id, _b64(hmac_key),
                     provisioner, reference)


def list_all(app: Appliance, provisioner: str | None = None) -> list[dict[str, Any]]:
    with app.db.sessions() as db:
        q = select(AcmeEabKey, Provisioner.name).join(
            Provisioner, Provisioner.id == AcmeEabKey.provisioner_id).order_by(
            AcmeEabKey.created_at)
        if provisioner is not None:
            q = q.where(Provisioner.name == provisioner)
        rows = db.execute(q).all()
        return [{"key_id": k.key_id, "provisioner": name, "reference": k.reference,
                 "policy": k.policy is not None,
                 "created_at": k.created_at.isoformat(),
                 "bound_at": k.bound_at.isoformat() if k.bound_at else None,
                 "account": k.account_id,
                 "status": "revoked" if k.revoked_at else ("bound" if k.account_id
                                                             else "unused")}
                for k, name in rows]


def revoke(app: Appliance, key_id: str, actor: Actor) -> None:
    """An unused key can no longer bind; an account bound to it is deactivated for good."""
    with app.db.transaction() as db:
        row = db.get(AcmeEabKey, key_id)
        if row is None:
            raise EabError(f"no EAB key {key_id!r}")
        if row.revoked_at is not None:
            raise EabError(f"EAB key {key_id!r} is already revoked")
        row.revoked_at = datetime.now(UTC)
        account = db.get(AcmeAccount, row.account_id) if row.account_id else None
        if account is not None:
            account.status = "revoked"
        app.audit_log().append(db, "acme.eab.revoked", actor, object_ids={"eab_key": key_id},
                               details={"reference": row.reference,
                                        "account": row.account_id})
