"""ACME accounts (RFC 8555 §7.3): create (optionally bound to an EAB key), update or
deactivate, change key, list orders. Every change is audited in its own transaction."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, update

from appliance.acme import eab, jws
from appliance.acme.context import Ctx, Reply, new_id
from appliance.acme.problems import AcmeProblem
from appliance.audit.log import Actor
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeEabKey, AcmeOrder

MAX_CONTACTS = 4


class Accounts:
    """The account resources of every ACME directory (provisioner) of one appliance."""

    def __init__(self, app: Appliance) -> None:
        self.app = app

    def account_json(self, ctx: Ctx, acct: AcmeAccount) -> dict[str, Any]:
        out: dict[str, Any] = {"status": acct.status, "contact": json.loads(acct.contact),
                               "orders": ctx.url("account", acct.id, "orders")}
        if acct.eab_key_id:
            out["externalAccountBinding"] = {"kid": acct.eab_key_id}
        return out

    def new(self, ctx: Ctx, req: jws.Verified) -> Reply:
        payload = req.json()
        jwk_json = req.envelope.protected["jwk"]
        tp = jws.thumbprint(req.jwk)
        with self.app.db.sessions() as db:
            existing = db.scalars(select(AcmeAccount).where(
                AcmeAccount.provisioner_id == ctx.prov.id,
                AcmeAccount.thumbprint == tp)).one_or_none()
            if existing is not None:
                return Reply(200, self.account_json(ctx, existing),
                             {"Location": ctx.url("account", existing.id)})
        if payload.get("onlyReturnExisting") is True:
            raise AcmeProblem("accountDoesNotExist", "no account exists for this key")
        contact = contacts(payload.get("contact", []))
        binding = payload.get("externalAccountBinding")
        key_id: str | None = None
        if binding is not None:
            key_id = eab.binding_key_id(binding)
            with self.app.db.sessions() as db:
                key = db.get(AcmeEabKey, key_id)
                if key is None or key.provisioner_id != ctx.prov.id:
                    raise AcmeProblem("unauthorized", "unknown EAB key id")
                if key.revoked_at is not None or key.account_id is not None:
                    raise AcmeProblem("unauthorized", "this EAB key is revoked or already used")
                sealed = key.hmac_sealed
            eab.check_binding(binding, account_jwk=jwk_json, url=ctx.url("new-account"),
                              hmac_key=eab.unseal(self.app.settings.base_dir, key_id, sealed))
        elif ctx.settings.require_eab:
            raise AcmeProblem("externalAccountRequired",
                              "this directory requires an externalAccountBinding")
        acct_id, now = new_id(), datetime.now(UTC)
        with self.app.db.transaction() as db:
            acct = AcmeAccount(id=acct_id, provisioner_id=ctx.prov.id, thumbprint=tp,
                               jwk=json.dumps(req.jwk.to_json(), sort_keys=True),
                               status="valid", contact=json.dumps(contact), eab_key_id=key_id,
                               created_at=now)
            db.add(acct)
            if key_id is not None:
                bound = db.execute(update(AcmeEabKey).where(
                    AcmeEabKey.key_id == key_id, AcmeEabKey.account_id.is_(None),
                    AcmeEabKey.revoked_at.is_(None)).values(account_id=acct_id, bound_at=now))
                if bound.rowcount != 1:  # type: ignore[attr-defined]
                    raise AcmeProblem("unauthorized", "this EAB key was used a moment ago")
            self.app.audit_log().append(
                db, "acme.account.created", Actor(f"acme:{acct_id}", "client"),
                object_ids={"account": acct_id, "provisioner": ctx.prov.name,
                            "eab_key": key_id},
                details={"thumbprint": tp, "contact": contact})
            body = self.account_json(ctx, acct)
        return Reply(201, body, {"Location": ctx.url("account", acct_id)})

    def update(self, ctx: Ctx, acct: AcmeAccount, account_id: str,
                       req: jws.Verified) -> Reply:
        if acct.id != account_id:
            raise AcmeProblem("unauthorized", "an account can only change itself")
        payload = req.json()
        changes: dict[str, Any] = {}
        if "contact" in payload:
            changes["contact"] = contacts(payload["contact"])
        status = payload.get("status")
        if status is not None and status != "deactivated":
            raise AcmeProblem("malformed", "an account's status can only become deactivated")
        with self.app.db.transaction() as db:
            row = db.get(AcmeAccount, acct.id)
            assert row is not None
            if changes or status:
                if "contact" in changes:
                    row.contact = json.dumps(changes["contact"])
                if status:
                    row.status = "deactivated"
                self.app.audit_log().append(
                    db, "acme.account.deactivated" if status else "acme.account.updated",
                    Actor(f"acme:{acct.id}", "client"),
                    object_ids={"account": acct.id, "provisioner": ctx.prov.name},
                    details=changes)
            body = self.account_json(ctx, row)
        return Reply(200, body, {"Location": ctx.url("account", acct.id)})

    def key_change(self, ctx: Ctx, acct: AcmeAccount, req: jws.Verified) -> Reply:
        inner = jws.parse(req.json(), "keyChange inner")
        p = inner.protected
        if "jwk" not in p or "kid" in p or "nonce" in p:
            raise AcmeProblem("malformed", "the inner JWS carries the new key (jwk), no kid or "
                              "nonce")
        if p.get("url") != ctx.url("key-change"):
            raise AcmeProblem("malformed", "the inner JWS url must be the keyChange URL")
        new_jwk = jws.load_jwk(p["jwk"])
        jws.check_signature(inner, new_jwk)
        body = jws.payload_json(inner.payload, "the inner payload")
        if not isinstance(body, dict) or body.get("account") != req.kid:
            raise AcmeProblem("malformed", "the inner payload must name this account")
        old = jws.load_jwk(body.get("oldKey"))
        if jws.thumbprint(old) != acct.thumbprint:
            raise AcmeProblem("unauthorized", "oldKey is not the account's current key")
        new_tp = jws.thumbprint(new_jwk)
        with self.app.db.transaction() as db:
            other = db.scalars(select(AcmeAccount).where(
                AcmeAccount.provisioner_id == ctx.prov.id,
                AcmeAccount.thumbprint == new_tp)).one_or_none()
            if other is not None:
                raise AcmeProblem("malformed", "another account already uses the new key",
                                  status=409,
                                  headers={"Location": ctx.url("account", other.id)})
            row = db.get(AcmeAccount, acct.id)
            assert row is not None
            row.jwk = json.dumps(new_jwk.to_json(), sort_keys=True)
            row.thumbprint = new_tp
            self.app.audit_log().append(
                db, "acme.account.key_changed", Actor(f"acme:{acct.id}", "client"),
                object_ids={"account": acct.id, "provisioner": ctx.prov.name},
                details={"old_thumbprint": acct.thumbprint, "new_thumbprint": new_tp})
            out = self.account_json(ctx, row)
        return Reply(200, out, {"Location": ctx.url("account", acct.id)})

    def orders(self, ctx: Ctx, acct: AcmeAccount, account_id: str) -> Reply:
        if acct.id != account_id:
            raise AcmeProblem("unauthorized", "an account can only list its own orders")
        with self.app.db.sessions() as db:
            ids = db.scalars(select(AcmeOrder.id).where(
                AcmeOrder.account_id == acct.id,
                AcmeOrder.status.in_(("pending", "ready", "processing", "valid")),
                AcmeOrder.expires_at > datetime.now(UTC)).order_by(
                AcmeOrder.created_at).limit(1000)).all()
        return Reply(200, {"orders": [ctx.url("order", i) for i in ids]})


def contacts(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_CONTACTS:
        raise AcmeProblem("invalidContact", f"contact must be a list of at most {MAX_CONTACTS}")
    out = []
    for item in value:
        if not isinstance(item, str) or len(item) > 254:
            raise AcmeProblem("invalidContact", "a contact is a mailto: URL of at most 254 "
                              "characters")
        if not item.startswith("mailto:"):
            raise AcmeProblem("unsupportedContact", "only mailto: contacts are supported")
        addr = item[7:]
        if "@" not in addr or "," in addr or "?" in addr or any(c.isspace() for c in addr):
            raise AcmeProblem("invalidContact", f"{item!r} is not one mailto: address")
        out.append(item)
    return out


