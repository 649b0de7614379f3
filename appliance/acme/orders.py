"""ACME orders (RFC 8555 §7.4): identifiers refused early, orders with their
authorizations and challenges created in one audited transaction, and the order as the
client reads it.

Identifiers are judged at newOrder by the same levels the pipeline applies at finalize (the
EAB key's, the provisioner's, the authority's policy, and the CA chain's name constraints),
so a name that can never be certified is refused before the client proves control of it;
finalize leaves the final word to the pipeline.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import Table, bindparam, select

from appliance import policy, rfc3339
from appliance.acme import ari, jws, queries
from appliance.acme.context import Ctx, Reply, new_id, retry_after
from appliance.acme.identifiers import Identifier, parse_list
from appliance.acme.problems import AcmeProblem, subproblem
from appliance.audit.log import Actor
from appliance.issuance.pipeline import Issuer
from appliance.rfc3339 import format_z, to_utc
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeEabKey, AcmeOrder
from appliance.x509.path import PathError

_EAB_KEYS = cast(Table, AcmeEabKey.__table__)
_EAB_POLICY = select(_EAB_KEYS.c.policy).where(_EAB_KEYS.c.key_id == bindparam("b_key"))


class Orders:
    """newOrder and order reads; ``lifetime`` is how long an order (and its
    authorizations) may take to become valid."""

    def __init__(self, app: Appliance, issuer: Issuer, lifetime: timedelta) -> None:
        self.app = app
        self.issuer = issuer
        self.lifetime = lifetime

    def _check_identifiers(self, ctx: Ctx, acct: AcmeAccount,
                           idents: list[Identifier]) -> None:
        """EAB-key policy, then provisioner policy, then authority policy (issue order)."""
        with self.app.db.read() as db:
            levels = self.issuer.policy_levels(db, ctx.prov)
        ordered = [eab_level(self.app, acct), *reversed(levels)]
        # The CA's own chain too: an identifier its name constraints forbid can never be
        # certified, so it is refused now rather than after the client proved control.
        chain = self.issuer.chain_constraints(ctx.prov.authority_id)
        refused: list[dict[str, Any]] = []
        for ident in idents:
            try:
                policy.check(ident.names(), ordered)
                if ident.type == "ip":
                    chain.check_names(ips=[ipaddress.ip_address(ident.value)],
                                      what=f"identifier {ident.value}")
                else:
                    chain.check_names(dns=[ident.value], what=f"identifier {ident.value}")
            except (policy.PolicyError, PathError) as exc:
                refused.append(subproblem("rejectedIdentifier", str(exc), ident.json()))
        if refused:
            raise AcmeProblem("rejectedIdentifier",
                              "; ".join(s["detail"] for s in refused), subproblems=refused)

    def new_order(self, ctx: Ctx, acct: AcmeAccount, req: jws.Verified) -> Reply:
        payload = req.json()
        idents = parse_list(payload.get("identifiers"))
        not_before = parse_time(payload.get("notBefore"), "notBefore")
        not_after = parse_time(payload.get("notAfter"), "notAfter")
        replaces = payload.get("replaces")
        if replaces is not None:
            self._check_replaces(acct, replaces)
        offered = ctx.settings.challenges
        for ident in idents:
            kinds = challenge_types(ident, offered)
            if not kinds:
                raise AcmeProblem("rejectedIdentifier", f"no offered challenge type can "
                                  f"validate {ident.value}", subproblems=[subproblem(
                                      "unsupportedIdentifier", "no challenge type fits",
                                      ident.json())])
        self._check_identifiers(ctx, acct, idents)
        now = datetime.now(UTC).replace(microsecond=0)
        expires = now + self.lifetime
        order_id = new_id()
        values: dict[str, Any] = dict(
            id=order_id, account_id=acct.id, status="pending",
            identifiers=json.dumps([i.json() for i in idents]), not_before=not_before,
            not_after=not_after, expires_at=expires, error=None, certificate_serial=None,
            replaces=replaces, created_at=now)
        authz_rows: list[dict[str, Any]] = []
        chall_rows: list[dict[str, Any]] = []
        for ident in idents:
            authz_id = new_id()
            authz_rows.append(dict(
                id=authz_id, order_id=order_id, account_id=acct.id,
                identifier_type=ident.type, identifier_value=ident.base,
                wildcard=ident.wildcard, status="pending", expires_at=expires))
            chall_rows += [dict(id=new_id(), authorization_id=authz_id, type=kind,
                                token=secrets.token_urlsafe(32), status="pending",
                                validated_at=None, error=None)
                           for kind in challenge_types(ident, offered)]
        authz_ids = [r["id"] for r in authz_rows]
        with self.app.db.transaction() as db:
            # Core, in foreign-key order: the order, its authorizations, their challenges.
            db.execute(queries.INSERT_ORDER, values)
            db.execute(queries.INSERT_AUTHZ, authz_rows)
            db.execute(queries.INSERT_CHALL, chall_rows)
            self.app.audit_log().append(
                db, "acme.order.created", Actor(f"acme:{acct.id}", "client"),
                object_ids={"order": order_id, "account": acct.id,
                            "provisioner": ctx.prov.name},
                details={"identifiers": [i.json() for i in idents], "replaces": replaces})
        body = order_json(ctx, AcmeOrder(**values), authz_ids)
        return Reply(201, body, {"Location": ctx.url("order", order_id)})

    def _check_replaces(self, acct: AcmeAccount, replaces: Any) -> None:
        cid = ari.parse_cert_id(replaces)
        with self.app.db.sessions() as db:
            owned = db.scalar(select(AcmeOrder.id).where(
                AcmeOrder.account_id == acct.id,
                AcmeOrder.certificate_serial == cid.serial_hex).limit(1))
        if owned is None:
            raise AcmeProblem("malformed", "replaces names a certificate this account did not "
                              "order")

    def get_order(self, ctx: Ctx, acct: AcmeAccount, order_id: str) -> Reply:
        with self.app.db.read() as db:  # Core, one snapshot: every order poll runs this
            found = db.execute(queries.ORDER_BY_ID, {"b_id": order_id}).first()
            if found is None or found.account_id != acct.id:
                raise AcmeProblem("malformed", "no such order", status=404)
            authz_ids = db.execute(queries.AUTHZ_IDS, {"b_order": order_id}).scalars().all()
        body = order_json(ctx, found, list(authz_ids))
        headers = retry_after(self.app) if body["status"] in ("pending", "processing") else {}
        return Reply(200, body, headers)


def eab_level(app: Appliance, acct: AcmeAccount) -> tuple[str, policy.Policy | None]:
    """The policy level of the account's EAB key (none without one), checked first."""
    if not acct.eab_key_id:
        return ("ACME account", None)
    with app.db.read() as db:  # Core, built once: every newOrder and finalize of the account
        text = db.execute(_EAB_POLICY, {"b_key": acct.eab_key_id}).scalar()
    return (f"EAB key {acct.eab_key_id}", _parse_policy(text) if text else None)


@lru_cache(maxsize=256)
def _parse_policy(text: str) -> policy.Policy:
    return policy.parse_policy(text, "EAB key policy")


def order_json(ctx: Ctx, order: Any, authz_ids: list[str]) -> dict[str, Any]:
    status = order_status(order)
    out: dict[str, Any] = {
        "status": status, "expires": format_z(order.expires_at),
        "identifiers": json.loads(order.identifiers),
        "authorizations": [ctx.url("authz", a) for a in authz_ids],
        "finalize": ctx.url("order", order.id, "finalize"),
    }
    if order.not_before:
        out["notBefore"] = format_z(order.not_before)
    if order.not_after:
        out["notAfter"] = format_z(order.not_after)
    if order.replaces:
        out["replaces"] = order.replaces
    if order.error:
        out["error"] = json.loads(order.error)
    elif status != order.status:
        out["error"] = {"type": "urn:ietf:params:acme:error:malformed",
                        "detail": "the order expired"}
    if order.certificate_serial and status == "valid":
        out["certificate"] = ctx.url("cert", order.certificate_serial)
    return out



def order_status(order: Any) -> str:
    """The status a client sees: a pending or ready order past its expiry is invalid."""
    if order.status in ("pending", "ready") and to_utc(order.expires_at) <= datetime.now(UTC):
        return "invalid"
    return str(order.status)




def challenge_types(ident: Identifier, offered: tuple[str, ...]) -> list[str]:
    """dns-01 only for DNS names (and the only one for wildcards); http-01 and tls-alpn-01
    for names and IP addresses (RFC 8738)."""
    if ident.wildcard:
        return [k for k in offered if k == "dns-01"]
    if ident.type == "ip":
        return [k for k in offered if k != "dns-01"]
    return list(offered)




def parse_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return rfc3339.parse(value)
    except ValueError:
        raise AcmeProblem("malformed", f"{what} must be an RFC 3339 time") from None


