"""The ACME server's state machine (RFC 8555 §7): accounts, orders, authorizations,
challenges, finalization through the one issuance pipeline, revocation and ARI.

The web layer (``appliance.web.acme``) only turns HTTP into calls here and ``Reply``
objects back into HTTP; every rule and every state change lives in this module, and
every state change is audited in the transaction that makes it.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import secrets
from concurrent import futures
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from josepy.jwk import JWK
from sqlalchemy import Table, bindparam, insert, select, update

from appliance import durations, logs, policy, rfc3339
from appliance.acme import ari, eab, jws, validation
from appliance.acme.identifiers import Identifier, parse_list
from appliance.acme.nonces import Nonces
from appliance.acme.problems import AcmeProblem, subproblem
from appliance.acme.validation_pool import ValidationPool
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import ApplianceError, InputError
from appliance.inventory.match import InventoryError
from appliance.issuance.csr import load_csr
from appliance.issuance.pipeline import (
    AuthorityUnavailable,
    IssuanceError,
    Issuer,
)
from appliance.issuance.request import ProvisionerContext, SignRequest
from appliance.lint.pkilint_gate import LintError
from appliance.provisioners.authorize import context_of as provisioner_context_of
from appliance.provisioners.authorize import settings_of
from appliance.provisioners.settings import ProvisionerSettings
from appliance.revocation import revoke as revoke_mod
from appliance.rfc3339 import format_z, to_utc
from appliance.runtime import Appliance
from appliance.store.models import (
    AcmeAccount,
    AcmeAuthorization,
    AcmeChallenge,
    AcmeEabKey,
    AcmeOrder,
    Authority,
    Certificate,
    Provisioner,
)
from appliance.templates import build as template_build
from appliance.templates.errors import TemplateError, TemplateInputError
from appliance.templates.render import TemplateRefusal
from appliance.x509.path import PathError

log = logs.get("acme")
MAX_CONTACTS = 4
# An attempt is bounded by the validation timeout; one older than that plus this margin
# (clock differences between nodes, the recording transaction) belongs to a process that
# died. Restarting early is harmless anyway: only the attempt holding the claim records.
STALE_MARGIN_SECONDS = 10
_PROVISIONERS = cast(Table, Provisioner.__table__)
_ACCOUNTS = cast(Table, AcmeAccount.__table__)
# Per-request reads, built once (values bound per call).
_PROVISIONER_BY_NAME = select(*(_PROVISIONERS.c[k] for k in (
    "id", "name", "type", "config", "authority_id"))).where(
    _PROVISIONERS.c.name == bindparam("b_name"))
_ACCOUNT_BY_ID = select(_ACCOUNTS).where(_ACCOUNTS.c.id == bindparam("b_id"))
_ORDERS = cast(Table, AcmeOrder.__table__)
_AUTHZS = cast(Table, AcmeAuthorization.__table__)
_CHALLS = cast(Table, AcmeChallenge.__table__)
_CERTS = cast(Table, Certificate.__table__)
_AUTHORITIES = cast(Table, Authority.__table__)
_INSERT_ORDER = insert(_ORDERS)
_INSERT_AUTHZ = insert(_AUTHZS)
_INSERT_CHALL = insert(_CHALLS)
_ORDER_BY_ID = select(_ORDERS).where(_ORDERS.c.id == bindparam("b_id"))
_SET_ORDER = update(_ORDERS).where(_ORDERS.c.id == bindparam("b_id"))
# ready -> processing only from ready: on PostgreSQL two finalize requests can both read
# "ready" (no write lock on reads there); only one of them changes the row.
_CLAIM_ORDER = update(_ORDERS).where(_ORDERS.c.id == bindparam("b_id"),
                                     _ORDERS.c.status == "ready").values(status="processing")
_SET_AUTHZ = update(_AUTHZS).where(_AUTHZS.c.id == bindparam("b_id"))
_SET_CHALL = update(_CHALLS).where(_CHALLS.c.id == bindparam("b_id"))
# pending -> processing, or a stale processing attempt restarted, only from exactly the
# state the request read: of two POSTs racing on any database, one wins.
_CLAIM_CHALL = update(_CHALLS).where(
    _CHALLS.c.id == bindparam("b_id"), _CHALLS.c.status == "pending").values(
    status="processing", processing_since=bindparam("b_started"))
_RECLAIM_CHALL = update(_CHALLS).where(
    _CHALLS.c.id == bindparam("b_id"), _CHALLS.c.status == "processing",
    _CHALLS.c.processing_since == bindparam("b_since")).values(
    processing_since=bindparam("b_started"))
_AUTHZ_IDS = select(_AUTHZS.c.id).where(_AUTHZS.c.order_id == bindparam("b_order")).order_by(
    _AUTHZS.c.identifier_value)
_AUTHZ_STATUSES = select(_AUTHZS.c.status).where(_AUTHZS.c.order_id == bindparam("b_order"))
_AUTHZ_BY_ID = select(_AUTHZS).where(_AUTHZS.c.id == bindparam("b_id"))
_CHALLS_OF = select(_CHALLS).where(_CHALLS.c.authorization_id == bindparam("b_authz")).order_by(
    _CHALLS.c.type)
_CHALL_AND_AUTHZ = select(
    _CHALLS.c.id, _CHALLS.c.authorization_id, _CHALLS.c.type, _CHALLS.c.token,
    _CHALLS.c.status, _CHALLS.c.validated_at, _CHALLS.c.error, _CHALLS.c.processing_since,
    _AUTHZS.c.account_id, _AUTHZS.c.order_id, _AUTHZS.c.status.label("authz_status"),
    _AUTHZS.c.expires_at, _AUTHZS.c.identifier_type, _AUTHZS.c.identifier_value,
    _AUTHZS.c.wildcard,
).select_from(_CHALLS.join(_AUTHZS, _AUTHZS.c.id == _CHALLS.c.authorization_id)).where(
    _CHALLS.c.id == bindparam("b_id"))
_OWNED_CERT = select(_CERTS.c.der, _CERTS.c.authority_id).select_from(
    _ORDERS.join(_CERTS, _CERTS.c.serial_hex == _ORDERS.c.certificate_serial)).where(
    _ORDERS.c.account_id == bindparam("b_acct"), _ORDERS.c.certificate_serial == bindparam(
        "b_serial"), _ORDERS.c.status == "valid").limit(1)
_AUTHORITY_CERT = select(_AUTHORITIES.c.certificate_der, _AUTHORITIES.c.parent_id).where(
    _AUTHORITIES.c.id == bindparam("b_id"))


@dataclass
class Reply:
    status: int
    body: Any  # a JSON-able object, or str for a PEM chain, or None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass(frozen=True)
class Ctx:
    """One request's provisioner and the absolute URL prefix the client used."""

    prov: ProvisionerContext
    settings: ProvisionerSettings  # the ACME ones: EAB required, challenges offered
    base: str  # https://host:port/acme/<provisioner>

    def url(self, *parts: str) -> str:
        return "/".join((self.base, *parts))


def _new_id() -> str:
    """An id for URLs and for the operator's CLI, which would read a leading '-' as an
    option (1 id in 64 did; `acme account show -x...` failed)."""
    while (value := secrets.token_urlsafe(16)).startswith("-"):
        pass
    return value


@lru_cache(maxsize=4096)
def _account_jwk(text: str) -> JWK:
    return cast(JWK, JWK.from_json(json.loads(text)))


@lru_cache(maxsize=256)
def _parse_policy(text: str) -> policy.Policy:
    return policy.parse_policy(text, "EAB key policy")


class AcmeService:
    def __init__(self, app: Appliance, issuer: Issuer) -> None:
        self.app = app
        self.issuer = issuer
        self.nonces = Nonces(app)
        cfg = app.settings.config.acme
        self.validation = validation.ValidationSettings(
            http_port=cfg.http01_port, tls_alpn_port=cfg.tls_alpn01_port,
            resolvers=tuple(cfg.resolvers), timeout=cfg.validation_timeout_seconds,
            caa_identities=tuple(cfg.caa_identities))
        self.order_lifetime = timedelta(seconds=durations.parse(cfg.order_lifetime))
        self.pool = ValidationPool(cfg.max_concurrent_validations)

    # -- context ----------------------------------------------------------------

    def context(self, name: str, base: str) -> Ctx:
        # Read on every request (Core, the few columns needed): a changed or removed
        # provisioner takes effect at once in every worker.
        with self.app.db.read() as db:
            row = db.execute(_PROVISIONER_BY_NAME, {"b_name": name}).first()
        if row is None or row.type != "acme":
            raise AcmeProblem("malformed", f"no ACME provisioner named {name!r}", status=404)
        return Ctx(provisioner_context_of(self.app, row.id, row.name, row.type, row.config,
                                          row.authority_id), settings_of(row.config), base)

    def directory(self, ctx: Ctx) -> Reply:
        return Reply(200, {
            "newNonce": ctx.url("new-nonce"), "newAccount": ctx.url("new-account"),
            "newOrder": ctx.url("new-order"), "revokeCert": ctx.url("revoke-cert"),
            "keyChange": ctx.url("key-change"), "renewalInfo": ctx.url("renewal-info"),
            "meta": {"externalAccountRequired": ctx.settings.require_eab,
                     **({"caaIdentities": list(self.validation.caa_identities)}
                        if self.validation.caa_identities else {})},
        })

    def account_key(self, ctx: Ctx, kid: str) -> tuple[AcmeAccount, JWK]:
        prefix = ctx.url("account", "")
        if not kid.startswith(prefix):
            raise AcmeProblem("accountDoesNotExist", "kid is not an account of this directory")
        # Read on every request (status, key): a deactivated account or a changed key
        # takes effect at once; only the parsing of the stored key is cached, by its text.
        with self.app.db.read() as db:
            row = db.execute(_ACCOUNT_BY_ID, {"b_id": kid[len(prefix):]}).first()
        if row is None or row.provisioner_id != ctx.prov.id:
            raise AcmeProblem("accountDoesNotExist", "no such account")
        acct = AcmeAccount(**row._asdict())  # transient: never added to a session
        if acct.status != "valid":
            raise AcmeProblem("unauthorized", f"the account is {acct.status}")
        return acct, _account_jwk(acct.jwk)

    # -- accounts ---------------------------------------------------------------

    def account_json(self, ctx: Ctx, acct: AcmeAccount) -> dict[str, Any]:
        out: dict[str, Any] = {"status": acct.status, "contact": json.loads(acct.contact),
                               "orders": ctx.url("account", acct.id, "orders")}
        if acct.eab_key_id:
            out["externalAccountBinding"] = {"kid": acct.eab_key_id}
        return out

    def new_account(self, ctx: Ctx, req: jws.Verified) -> Reply:
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
        contact = _contacts(payload.get("contact", []))
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
        acct_id, now = _new_id(), datetime.now(UTC)
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

    def update_account(self, ctx: Ctx, acct: AcmeAccount, account_id: str,
                       req: jws.Verified) -> Reply:
        if acct.id != account_id:
            raise AcmeProblem("unauthorized", "an account can only change itself")
        payload = req.json()
        changes: dict[str, Any] = {}
        if "contact" in payload:
            changes["contact"] = _contacts(payload["contact"])
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

    def account_orders(self, ctx: Ctx, acct: AcmeAccount, account_id: str) -> Reply:
        if acct.id != account_id:
            raise AcmeProblem("unauthorized", "an account can only list its own orders")
        with self.app.db.sessions() as db:
            ids = db.scalars(select(AcmeOrder.id).where(
                AcmeOrder.account_id == acct.id,
                AcmeOrder.status.in_(("pending", "ready", "processing", "valid")),
                AcmeOrder.expires_at > datetime.now(UTC)).order_by(
                AcmeOrder.created_at).limit(1000)).all()
        return Reply(200, {"orders": [ctx.url("order", i) for i in ids]})

    # -- policy -------------------------------------------------------------------

    def _eab_level(self, acct: AcmeAccount) -> tuple[str, policy.Policy | None]:
        if not acct.eab_key_id:
            return ("ACME account", None)
        with self.app.db.sessions() as db:
            text = db.scalar(select(AcmeEabKey.policy).where(
                AcmeEabKey.key_id == acct.eab_key_id))
        return (f"EAB key {acct.eab_key_id}", _parse_policy(text) if text else None)

    def _check_identifiers(self, ctx: Ctx, acct: AcmeAccount,
                           idents: list[Identifier]) -> None:
        """EAB-key policy, then provisioner policy, then authority policy (issue order)."""
        with self.app.db.read() as db:
            levels = self.issuer.policy_levels(db, ctx.prov)
        ordered = [self._eab_level(acct), *reversed(levels)]
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

    # -- orders -------------------------------------------------------------------

    def new_order(self, ctx: Ctx, acct: AcmeAccount, req: jws.Verified) -> Reply:
        payload = req.json()
        idents = parse_list(payload.get("identifiers"))
        not_before = _time(payload.get("notBefore"), "notBefore")
        not_after = _time(payload.get("notAfter"), "notAfter")
        replaces = payload.get("replaces")
        if replaces is not None:
            self._check_replaces(acct, replaces)
        offered = ctx.settings.challenges
        for ident in idents:
            kinds = _challenge_types(ident, offered)
            if not kinds:
                raise AcmeProblem("rejectedIdentifier", f"no offered challenge type can "
                                  f"validate {ident.value}", subproblems=[subproblem(
                                      "unsupportedIdentifier", "no challenge type fits",
                                      ident.json())])
        self._check_identifiers(ctx, acct, idents)
        now = datetime.now(UTC).replace(microsecond=0)
        expires = now + self.order_lifetime
        order_id = _new_id()
        values: dict[str, Any] = dict(
            id=order_id, account_id=acct.id, status="pending",
            identifiers=json.dumps([i.json() for i in idents]), not_before=not_before,
            not_after=not_after, expires_at=expires, error=None, certificate_serial=None,
            replaces=replaces, created_at=now)
        authz_rows: list[dict[str, Any]] = []
        chall_rows: list[dict[str, Any]] = []
        for ident in idents:
            authz_id = _new_id()
            authz_rows.append(dict(
                id=authz_id, order_id=order_id, account_id=acct.id,
                identifier_type=ident.type, identifier_value=ident.base,
                wildcard=ident.wildcard, status="pending", expires_at=expires))
            chall_rows += [dict(id=_new_id(), authorization_id=authz_id, type=kind,
                                token=secrets.token_urlsafe(32), status="pending",
                                validated_at=None, error=None)
                           for kind in _challenge_types(ident, offered)]
        authz_ids = [r["id"] for r in authz_rows]
        with self.app.db.transaction() as db:
            # Core, in foreign-key order: the order, its authorizations, their challenges.
            db.execute(_INSERT_ORDER, values)
            db.execute(_INSERT_AUTHZ, authz_rows)
            db.execute(_INSERT_CHALL, chall_rows)
            self.app.audit_log().append(
                db, "acme.order.created", Actor(f"acme:{acct.id}", "client"),
                object_ids={"order": order_id, "account": acct.id,
                            "provisioner": ctx.prov.name},
                details={"identifiers": [i.json() for i in idents], "replaces": replaces})
        body = self._order_json(ctx, AcmeOrder(**values), authz_ids)
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

    def _order_json(self, ctx: Ctx, order: Any, authz_ids: list[str]) -> dict[str, Any]:
        status = _order_status(order)
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

    def get_order(self, ctx: Ctx, acct: AcmeAccount, order_id: str) -> Reply:
        with self.app.db.sessions() as db:
            found = db.execute(_ORDER_BY_ID, {"b_id": order_id}).first()
            if found is None or found.account_id != acct.id:
                raise AcmeProblem("malformed", "no such order", status=404)
            authz_ids = db.execute(_AUTHZ_IDS, {"b_order": order_id}).scalars().all()
        body = self._order_json(ctx, found, list(authz_ids))
        headers = {"Retry-After": str(self.app.settings.config.acme.retry_after_seconds)} \
            if body["status"] in ("pending", "processing") else {}
        return Reply(200, body, headers)

    # -- authorizations and challenges -------------------------------------------

    def _challenge_json(self, ctx: Ctx, ch: Any) -> dict[str, Any]:
        out: dict[str, Any] = {"type": ch.type, "url": ctx.url("chall", ch.id),
                               "status": ch.status, "token": ch.token}
        if ch.validated_at:
            out["validated"] = format_z(ch.validated_at)
        if ch.error:
            out["error"] = json.loads(ch.error)
        return out

    def _authz_json(self, ctx: Ctx, az: Any, challenges: list[Any]) -> dict[str, Any]:
        status = az.status
        if status == "pending" and to_utc(az.expires_at) <= datetime.now(UTC):
            status = "expired"
        out: dict[str, Any] = {
            "identifier": {"type": az.identifier_type, "value": az.identifier_value},
            "status": status, "expires": format_z(az.expires_at),
            "challenges": [self._challenge_json(ctx, c) for c in challenges],
        }
        if az.wildcard:
            out["wildcard"] = True
        return out

    def _load_authz(self, db: Any, acct: AcmeAccount, authz_id: str) -> AcmeAuthorization:
        az = db.get(AcmeAuthorization, authz_id)
        if az is None or az.account_id != acct.id:
            raise AcmeProblem("malformed", "no such authorization", status=404)
        return az  # type: ignore[no-any-return]

    def authorization(self, ctx: Ctx, acct: AcmeAccount, authz_id: str,
                      req: jws.Verified) -> Reply:
        payload = req.json()
        if payload and payload != {"status": "deactivated"}:
            raise AcmeProblem("malformed", "an authorization can only be deactivated")
        if not payload:  # a read (POST-as-GET): Core, one snapshot
            with self.app.db.read() as conn:
                found = conn.execute(_AUTHZ_BY_ID, {"b_id": authz_id}).first()
                if found is None or found.account_id != acct.id:
                    raise AcmeProblem("malformed", "no such authorization", status=404)
                rows = conn.execute(_CHALLS_OF, {"b_authz": authz_id}).all()
            # A client polling an authorization whose challenge is being validated is told
            # when to look again (RFC 8555 §8.2), as it is by the challenge itself.
            headers = {"Retry-After": str(self.app.settings.config.acme.retry_after_seconds)
                       } if any(r.status == "processing" for r in rows) else {}
            return Reply(200, self._authz_json(ctx, found, list(rows)), headers)
        with self.app.db.transaction() as db:
            az = self._load_authz(db, acct, authz_id)
            if payload:
                if az.status not in ("pending", "valid"):
                    raise AcmeProblem("malformed", f"the authorization is {az.status}")
                az.status = "deactivated"
                order = db.get(AcmeOrder, az.order_id)
                if order is not None and order.status in ("pending", "ready"):
                    order.status = "invalid"
                self.app.audit_log().append(
                    db, "acme.authorization.deactivated", Actor(f"acme:{acct.id}", "client"),
                    object_ids={"authorization": az.id, "account": acct.id},
                    details={"identifier": az.identifier_value})
            challenges = db.scalars(select(AcmeChallenge).where(
                AcmeChallenge.authorization_id == authz_id).order_by(AcmeChallenge.type)).all()
            body = self._authz_json(ctx, az, list(challenges))
        return Reply(200, body)

    def challenge(self, ctx: Ctx, acct: AcmeAccount, chall_id: str,
                  req: jws.Verified) -> Reply:
        """POST {} starts validation; POST-as-GET only reads.

        The attempt runs in the bounded validation pool (a slow or silent target does
        not hold a request worker); the request waits up to
        ``acme.validation_wait_seconds`` for the outcome and otherwise answers
        "processing" with Retry-After (RFC 8555 §7.5.1), the client polls. A challenge
        left "processing" by a process that died can be started again once its attempt
        is older than the validation timeout plus a margin.
        """
        start = not req.post_as_get
        if start:
            req.json()  # must be a JSON object (normally {})
        with self.app.db.read() as conn:
            ch = conn.execute(_CHALL_AND_AUTHZ, {"b_id": chall_id}).first()
        if ch is None or ch.account_id != acct.id:
            raise AcmeProblem("malformed", "no such challenge", status=404)
        up = {"Link": f'<{ctx.url("authz", ch.authorization_id)}>;rel="up"'}
        now = datetime.now(UTC)
        if not start or ch.authz_status != "pending" or not (
                ch.status == "pending" or self._stale(ch, now)):
            return self._challenge_reply(ctx, ch, up)
        if to_utc(ch.expires_at) <= now:
            raise AcmeProblem("malformed", "the authorization has expired")
        started = now.replace(microsecond=0)
        reserved = False
        try:
            with self.app.db.transaction() as db:
                if ch.status == "pending":
                    claimed = db.execute(_CLAIM_CHALL, {"b_id": ch.id, "b_started": started})
                else:
                    claimed = db.execute(_RECLAIM_CHALL, {
                        "b_id": ch.id, "b_since": ch.processing_since, "b_started": started})
                if claimed.rowcount == 1:  # type: ignore[attr-defined]
                    # A slot is taken before the claim commits: a full pool undoes the
                    # claim, and nobody ever sees an attempt that will not run.
                    if not self.pool.reserve():
                        raise AcmeProblem(
                            "rateLimited", "too many validations are running; retry later",
                            headers={"Retry-After": str(
                                self.app.settings.config.acme.retry_after_seconds)})
                    reserved = True
                    if ch.status == "processing":
                        self.app.audit_log().append(
                            db, "acme.challenge.restarted",
                            Actor(f"acme:{acct.id}", "client"),
                            object_ids={"challenge": ch.id,
                                        "authorization": ch.authorization_id,
                                        "account": acct.id, "provisioner": ctx.prov.name},
                            details={"interrupted_attempt_started": format_z(
                                ch.processing_since)})
        except BaseException:
            if reserved:
                self.pool.release()
            raise
        if not reserved:  # another request claimed it first: show where its attempt is
            return self._current_challenge(ctx, ch.id, up)
        job = _Validation(self, ctx.prov.name, acct.id, acct.thumbprint, ch, started,
                          ctx.url("account", acct.id))
        future = self.pool.submit(job.run)
        wait = self.app.settings.config.acme.validation_wait_seconds
        if wait > 0:  # done or not, the row says where the attempt is
            futures.wait([future], timeout=wait)
        return self._current_challenge(ctx, ch.id, up)

    def _current_challenge(self, ctx: Ctx, chall_id: str, up: dict[str, str]) -> Reply:
        with self.app.db.read() as conn:
            return self._challenge_reply(
                ctx, conn.execute(_CHALL_AND_AUTHZ, {"b_id": chall_id}).one(), up)

    def _stale(self, ch: Any, now: datetime) -> bool:
        """A "processing" attempt older than any live one can be (its process died)."""
        if ch.status != "processing" or ch.processing_since is None:
            return False
        limit = self.validation.timeout + STALE_MARGIN_SECONDS
        return bool(to_utc(ch.processing_since) + timedelta(seconds=limit) < now)

    def _challenge_reply(self, ctx: Ctx, ch: Any, up: dict[str, str]) -> Reply:
        headers = dict(up)
        if ch.status == "processing":
            headers["Retry-After"] = str(self.app.settings.config.acme.retry_after_seconds)
        return Reply(200, self._challenge_json(ctx, ch), headers)

    def record_validation(self, prov_name: str, account_id: str, ch: Any,
                          started: datetime, checked: str,
                          error: dict[str, Any] | None) -> None:
        """Store one attempt's outcome and audit it, in one transaction; only the attempt
        that holds the claim (same start time, still processing) changes the rows."""
        now = datetime.now(UTC).replace(microsecond=0)
        with self.app.db.transaction() as db:
            row: Any = db.execute(_CHALL_AND_AUTHZ, {"b_id": ch.id}).one()
            mine = row.status == "processing" and row.processing_since is not None and \
                to_utc(row.processing_since) == started
            recorded = False
            if mine:
                new = {"status": "invalid" if error else "valid",
                       "error": json.dumps(error) if error else None,
                       "validated_at": None if error else now, "processing_since": None}
                if row.authz_status != "pending":  # deactivated or expired meanwhile
                    new = {"status": "invalid", "processing_since": None, "validated_at": None,
                           "error": json.dumps(AcmeProblem(
                               "malformed",
                               f"the authorization became {row.authz_status}").document())}
                db.execute(_SET_CHALL, {"b_id": ch.id, **new})
                if row.authz_status == "pending":
                    db.execute(_SET_AUTHZ, {"b_id": ch.authorization_id,
                                            "status": new["status"]})
                    self._advance_order(db, row.order_id)
                recorded = True
            self.app.audit_log().append(
                db, "acme.challenge.validated" if not error else "acme.challenge.failed",
                Actor(f"acme:{account_id}", "client"), outcome="success" if not error else
                "failure", object_ids={"challenge": ch.id,
                                       "authorization": ch.authorization_id,
                                       "account": account_id, "provisioner": prov_name},
                details={"type": ch.type, "identifier": {"type": ch.identifier_type,
                                                         "value": ch.identifier_value},
                         "checked": checked, "error": error, "started": format_z(started),
                         "recorded": recorded})

    def _advance_order(self, db: Any, order_id: str) -> None:
        order = db.execute(_ORDER_BY_ID, {"b_id": order_id}).first()
        if order is None or order.status != "pending":
            return
        statuses = db.execute(_AUTHZ_STATUSES, {"b_order": order_id}).scalars().all()
        if any(s in ("invalid", "deactivated", "revoked") for s in statuses):
            db.execute(_SET_ORDER, {"b_id": order_id, "status": "invalid", "error": json.dumps(
                {"type": "urn:ietf:params:acme:error:unauthorized",
                 "detail": "an authorization failed"})})
        elif all(s == "valid" for s in statuses):
            db.execute(_SET_ORDER, {"b_id": order_id, "status": "ready"})

    # -- finalize and certificates -------------------------------------------------

    def finalize(self, ctx: Ctx, acct: AcmeAccount, order_id: str, req: jws.Verified) -> Reply:
        payload = req.json()
        der = jws.b64decode(payload.get("csr"), "csr")
        try:
            csr = load_csr(der)
        except (IssuanceError, InputError) as exc:
            raise AcmeProblem("badCSR", str(exc)) from None
        with self.app.db.transaction() as db:
            found = db.execute(_ORDER_BY_ID, {"b_id": order_id}).first()
            if found is None or found.account_id != acct.id:
                raise AcmeProblem("malformed", "no such order", status=404)
            status = _order_status(found)
            if status != "ready":
                raise AcmeProblem("orderNotReady", f"the order is {status}, not ready")
            idents = [Identifier(i["type"], i["value"]) for i in json.loads(found.identifiers)]
            _check_csr_names(csr, idents)
            # ready -> processing exactly once, whichever database and however many workers
            claimed = db.execute(_CLAIM_ORDER, {"b_id": order_id})
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise AcmeProblem("orderNotReady", "the order is being finalized already")
            not_before, not_after = found.not_before, found.not_after
        eab_level = self._eab_level(acct)
        try:
            issued = self.issuer.issue(SignRequest(
                csr=csr, provisioner=ctx.prov, requester=f"{ctx.prov.name}:acme:{acct.id}",
                credential_names=[i.value for i in idents],
                token_claims={"acme": {"account": acct.id, "order": order_id,
                                       "eab_key": acct.eab_key_id}},
                not_before=to_utc(not_before) if not_before else None,
                not_after=to_utc(not_after) if not_after else None,
                extra_policy_levels=[eab_level]))
        except BaseException as exc:
            self._finalize_failed(order_id, exc)
            raise _as_problem(exc) from exc
        with self.app.db.transaction() as db:
            db.execute(_SET_ORDER, {"b_id": order_id, "status": "valid",
                                    "certificate_serial": issued.serial_hex})
            self.app.audit_log().append(
                db, "acme.order.valid", Actor(f"acme:{acct.id}", "client"),
                object_ids={"order": order_id, "account": acct.id, "serial": issued.serial_hex,
                            "provisioner": ctx.prov.name}, details={})
            authz_ids = db.execute(_AUTHZ_IDS, {"b_order": order_id}).scalars().all()
        body = self._order_json(ctx, _Row({**found._asdict(), "status": "valid",
                                           "certificate_serial": issued.serial_hex}),
                                list(authz_ids))
        return Reply(200, body, {"Location": ctx.url("order", order_id)})

    def _finalize_failed(self, order_id: str, exc: BaseException) -> None:
        """A request that cannot succeed ends the order; a fault on our side leaves it
        ready for the client to try again."""
        ours = not isinstance(exc, (ApplianceError, AcmeProblem)) or isinstance(
            exc, AuthorityUnavailable) or type(exc).__name__ in ("HsmError", "DatabaseError")
        with self.app.db.transaction() as db:
            order = db.get(AcmeOrder, order_id)
            if order is None or order.status != "processing":
                return
            if ours:
                order.status = "ready"
            else:
                problem = _as_problem(exc)
                order.status = "invalid"
                order.error = json.dumps(problem.document())

    def certificate(self, ctx: Ctx, acct: AcmeAccount, serial: str) -> Reply:
        with self.app.db.read() as db:  # one snapshot, Core
            row = db.execute(_OWNED_CERT, {"b_acct": acct.id, "b_serial": serial}).first()
            if row is None or row.der is None:
                raise AcmeProblem("malformed", "no such certificate", status=404)
            chain = self._chain_pem(db, row.authority_id)
        return Reply(200, _pem(bytes(row.der)) + chain,
                     content_type="application/pem-certificate-chain")

    def _chain_pem(self, db: Any, authority_id: int) -> str:
        """The issuing CA and its parents, without the self-signed root (the relying party
        has that one)."""
        out, parent = [], db.execute(_AUTHORITY_CERT, {"b_id": authority_id}).first()
        while parent is not None and parent.parent_id is not None:
            out.append(_pem(bytes(parent.certificate_der)))
            parent = db.execute(_AUTHORITY_CERT, {"b_id": parent.parent_id}).first()
        return "".join(out)

    # -- revocation and renewal information -------------------------------------------

    def revoke_cert(self, ctx: Ctx, req: jws.Verified, acct: AcmeAccount | None) -> Reply:
        payload = req.json()
        der = jws.b64decode(payload.get("certificate"), "certificate")
        try:
            cert = x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion):
            raise AcmeProblem("malformed", "certificate is not DER") from None
        serial = f"{cert.serial_number:x}"
        with self.app.db.sessions() as db:
            row = db.scalars(select(Certificate).where(
                Certificate.serial_hex == serial)).one_or_none()
            if row is None or row.der != der:
                raise AcmeProblem("malformed", "this CA did not issue that certificate",
                                  status=404)
            if acct is not None:
                owned = db.scalar(select(AcmeOrder.id).where(
                    AcmeOrder.account_id == acct.id,
                    AcmeOrder.certificate_serial == serial).limit(1))
                if owned is None:
                    raise AcmeProblem("unauthorized", "the account did not order that "
                                      "certificate")
        if acct is None:
            spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            if req.jwk.key._wrapped.public_bytes(*spki) != cert.public_key().public_bytes(*spki):
                raise AcmeProblem("unauthorized", "the JWS key is not the certificate's key")
        reason = payload.get("reason", 0)
        if not isinstance(reason, int) or isinstance(reason, bool) or reason in (2, 6, 7, 8,
                                                                                   10):
            raise AcmeProblem("badRevocationReason", f"reason {reason!r} is not accepted "
                              "(0, 1, 3, 4, 5, 9)")
        who = f"acme:{acct.id}" if acct else f"acme:certificate-key:{serial}"
        try:
            revoke_mod.revoke(self.app, serial, reason, Actor(who, "client"),
                              provisioner=row.provisioner_name)
        except revoke_mod.RevocationError as exc:
            kind = "alreadyRevoked" if "already revoked" in str(exc) else "badRevocationReason"
            raise AcmeProblem(kind, str(exc)) from None
        return Reply(200, None)

    def renewal_info(self, ctx: Ctx, cert_id: str) -> Reply:
        cid = ari.parse_cert_id(cert_id)
        with self.app.db.sessions() as db:
            row = db.scalars(select(Certificate).where(
                Certificate.serial_hex == cid.serial_hex)).one_or_none()
            ca = db.get(Authority, row.authority_id) if row is not None else None
            if row is None or ca is None or row.not_before is None or row.not_after is None \
                    or template_build.authority_key_identifier(
                        authz.certificate(ca)).key_identifier != cid.key_identifier:
                raise AcmeProblem("malformed", "no certificate with that certID", status=404)
            start, end = ari.window(to_utc(row.not_before), to_utc(row.not_after),
                                    to_utc(row.revoked_at) if row.revoked_at else None)
        retry = self.app.settings.config.acme.ari_retry_after_seconds
        return Reply(200, {"suggestedWindow": {"start": format_z(start), "end": format_z(end)}},
                     {"Retry-After": str(retry)})


class _Validation:
    """One attempt, run on a pool thread: validate, then record (never raises to the pool
    for a validation failure; those are outcomes)."""

    def __init__(self, service: AcmeService, prov_name: str, account_id: str,
                 thumbprint: str, ch: Any, started: datetime, account_uri: str) -> None:
        self.service, self.prov_name, self.account_id = service, prov_name, account_id
        self.thumbprint, self.ch, self.started = thumbprint, ch, started
        self.account_uri = account_uri

    def run(self) -> None:
        ch = self.ch
        key_auth = validation.key_authorization(ch.token, self.thumbprint)
        error: dict[str, Any] | None = None
        # A wildcard is proven at its base name, but CAA reads issuewild for it.
        ident = f"*.{ch.identifier_value}" if ch.wildcard else ch.identifier_value
        try:
            checked = validation.validate(ch.type, ch.identifier_type, ident, ch.token,
                                          key_auth, self.service.validation,
                                          account_uri=self.account_uri)
        except validation.ValidationError as exc:
            checked = ""
            error = AcmeProblem(exc.problem, str(exc)).document()
        except Exception as exc:  # a bug must not leave the challenge looking alive
            log.exception("validation of challenge %s raised", ch.id)
            checked = ""
            error = AcmeProblem("serverInternal", "validation failed on the server: "
                                f"{type(exc).__name__}").document()
        self.service.record_validation(self.prov_name, self.account_id, ch, self.started,
                                       checked, error)


class _Row:
    """A row's values by attribute, for the JSON builders (as an ORM object would give)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


def _order_status(order: Any) -> str:
    """The status a client sees: a pending or ready order past its expiry is invalid."""
    if order.status in ("pending", "ready") and to_utc(order.expires_at) <= datetime.now(UTC):
        return "invalid"
    return str(order.status)


def _pem(der: bytes) -> str:
    """A DER certificate as PEM (64-character lines), without parsing it again."""
    text = base64.b64encode(der).decode()
    body = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def _challenge_types(ident: Identifier, offered: tuple[str, ...]) -> list[str]:
    """dns-01 only for DNS names (and the only one for wildcards); http-01 and tls-alpn-01
    for names and IP addresses (RFC 8738)."""
    if ident.wildcard:
        return [k for k in offered if k == "dns-01"]
    if ident.type == "ip":
        return [k for k in offered if k != "dns-01"]
    return list(offered)


def _contacts(value: Any) -> list[str]:
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


def _time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return rfc3339.parse(value)
    except ValueError:
        raise AcmeProblem("malformed", f"{what} must be an RFC 3339 time") from None


def _check_csr_names(csr: x509.CertificateSigningRequest, idents: list[Identifier]) -> None:
    """The CSR asks for exactly the order's identifiers (RFC 8555 §7.4); a CN, if any, must
    be one of them."""
    try:
        names = policy.Names.from_csr(csr)
    except ValueError as exc:
        raise AcmeProblem("badCSR", f"the CSR's extensions do not parse: {exc}") from None
    if names.email or names.uri or names.other:
        raise AcmeProblem("badCSR", "the CSR may only ask for DNS names and IP addresses")
    asked = {("dns", d.lower()) for d in names.dns} | {("ip", str(i)) for i in names.ip}
    wanted = {(i.type, i.value) for i in idents}
    if asked != wanted:
        missing = sorted(v for _, v in wanted - asked)
        extra = sorted(v for _, v in asked - wanted)
        raise AcmeProblem("badCSR", "the CSR's names must equal the order's identifiers"
                          + (f"; missing: {', '.join(missing)}" if missing else "")
                          + (f"; not in the order: {', '.join(extra)}" if extra else ""))
    if names.cn and names.cn.lower() not in {i.value for i in idents}:
        raise AcmeProblem("badCSR", f"the CSR's common name {names.cn!r} is not an identifier "
                          "of the order")


def _as_problem(exc: BaseException) -> AcmeProblem:
    if isinstance(exc, AcmeProblem):
        return exc
    if isinstance(exc, policy.PolicyError):
        ident = {"type": "ip" if exc.name_type == "ip" else "dns", "value": exc.name}
        return AcmeProblem("rejectedIdentifier", str(exc),
                           subproblems=[subproblem("rejectedIdentifier", str(exc), ident)])
    if isinstance(exc, IssuanceError):
        return AcmeProblem("badCSR", str(exc))
    if isinstance(exc, PathError):
        # The CA's own chain forbids it (its name constraints, most often): the identifier
        # is one this CA can never certify.
        kind = "rejectedIdentifier" if exc.constraint == "name_constraints" else "unauthorized"
        return AcmeProblem(kind, str(exc))
    if isinstance(exc, (TemplateError, TemplateInputError, InputError)):
        # What the template made of this CSR is no certificate (the template was checked
        # when it was added): the CSR's content is at fault, as for the REST API's 422.
        return AcmeProblem("badCSR", str(exc))
    if isinstance(exc, (TemplateRefusal, InventoryError, LintError)):
        return AcmeProblem("unauthorized", str(exc), status=403)
    if isinstance(exc, AuthorityUnavailable):
        return AcmeProblem("serverInternal", str(exc), status=503)
    if isinstance(exc, ApplianceError):
        return AcmeProblem("serverInternal", "the CA cannot sign right now; nothing was issued",
                           status=503)
    return AcmeProblem("serverInternal", "internal error; nothing was issued", status=500)
