"""ACME finalize and certificate download (RFC 8555 §7.4, §7.4.2).

Finalize claims a ready order (ready -> processing exactly once) and hands the CSR to the
one issuance pipeline with the order's identifiers as the credential's names and the EAB
key's policy as an extra level: the pipeline checks that the CSR asks for exactly those
names, the policies, the template, lint and the CA chain (name constraints, path length,
policies), as for every other entry point. ACME keeps only its protocol's own rule (the
identifiers are DNS names and IP addresses) and what the order's state becomes:

- issued: the order is valid;
- refused for what it asks (policy, chain, template, lint): the order is invalid and carries
  the problem, as the client was told;
- a fault of ours (token, database, audit log) or a bug, or a CSR whose names are not the
  order's: the order stays ready, and the same finalize can be sent again;
- on an RA node, its upstream away (an error that says it is ``deferred``): the order stays
  processing with its CSR kept (``ra_pending_orders``), the client polls (Retry-After), and
  the node's retrier forwards it again until the upstream answers.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any, cast

from cryptography import x509
from sqlalchemy import Table, bindparam, delete, select, update

from appliance import policy
from appliance.acme import jws, queries
from appliance.acme.context import Ctx, Reply, Row, retry_after
from appliance.acme.identifiers import Identifier
from appliance.acme.orders import eab_level, order_json, order_status
from appliance.acme.problems import AcmeProblem, problem_of
from appliance.audit.log import Actor
from appliance.errors import ApplianceError, InputError
from appliance.issuance.csr import load_csr
from appliance.issuance.pipeline import CredentialNamesError, Issuer
from appliance.issuance.request import ProvisionerContext, SignRequest
from appliance.provisioners.authorize import context as prov_context
from appliance.rfc3339 import to_utc
from appliance.runtime import Appliance
from appliance.store.models import (
    AcmeAccount,
    AcmeOrder,
    Authority,
    Certificate,
    Provisioner,
    RaPendingOrder,
)

_ORDERS = queries.ORDERS
_CERTS = cast(Table, Certificate.__table__)
_AUTHORITIES = cast(Table, Authority.__table__)
_PENDING = cast(Table, RaPendingOrder.__table__)
RETRY_BATCH = 100  # orders re-forwarded per retrier period
# ready -> processing only from ready: on PostgreSQL two finalize requests can both read
# "ready" (no write lock on reads there); only one of them changes the row.
_CLAIM_ORDER = update(_ORDERS).where(_ORDERS.c.id == bindparam("b_id"),
                                     _ORDERS.c.status == "ready").values(status="processing")
_OWNED_CERT = select(_CERTS.c.der, _CERTS.c.authority_id).select_from(
    _ORDERS.join(_CERTS, _CERTS.c.serial_hex == _ORDERS.c.certificate_serial)).where(
    _ORDERS.c.account_id == bindparam("b_acct"), _ORDERS.c.certificate_serial == bindparam(
        "b_serial"), _ORDERS.c.status == "valid").limit(1)
_AUTHORITY_CERT = select(_AUTHORITIES.c.certificate_der, _AUTHORITIES.c.parent_id).where(
    _AUTHORITIES.c.id == bindparam("b_id"))


class Finalizer:
    """Finalize through the one pipeline, and the download of what it issued."""

    def __init__(self, app: Appliance, issuer: Issuer) -> None:
        self.app = app
        self.issuer = issuer

    def finalize(self, ctx: Ctx, acct: AcmeAccount, order_id: str, req: jws.Verified) -> Reply:
        payload = req.json()
        der = jws.b64decode(payload.get("csr"), "csr")
        try:
            csr = load_csr(der)
        except InputError as exc:
            raise AcmeProblem("badCSR", str(exc)) from None
        check_identifier_kinds(csr)
        with self.app.db.write() as db:  # Core: a read and a conditional update, no ORM
            found = db.execute(queries.ORDER_BY_ID, {"b_id": order_id}).first()
            if found is None or found.account_id != acct.id:
                raise AcmeProblem("malformed", "no such order", status=404)
            status = order_status(found)
            if status != "ready":
                raise AcmeProblem("orderNotReady", f"the order is {status}, not ready")
            idents = [Identifier(i["type"], i["value"]) for i in json.loads(found.identifiers)]
            # ready -> processing exactly once, whichever database and however many workers
            claimed = db.execute(_CLAIM_ORDER, {"b_id": order_id})
            if claimed.rowcount != 1:
                raise AcmeProblem("orderNotReady", "the order is being finalized already")
            not_before, not_after = found.not_before, found.not_after
        request = sign_request(self.app, ctx.prov, acct, order_id, csr, idents, not_before,
                               not_after)
        try:
            issued = self.issuer.issue(request)
        except BaseException as exc:
            if getattr(exc, "deferred", False):
                # An RA node whose upstream is away: the order stays processing with its
                # CSR kept; the node's retrier forwards it again (retry_pending_orders).
                with self.app.db.transaction() as db:
                    authz_ids = self._defer(db, order_id, der, acct, exc)
                body = order_json(ctx, Row({**found._asdict(), "status": "processing"}),
                                  list(authz_ids))
                return Reply(200, body, {"Location": ctx.url("order", order_id),
                                         **retry_after(self.app)})
            self._failed(order_id, exc)
            raise  # answered by the blueprint's handler (problem_of)
        with self.app.db.transaction() as db:
            authz_ids = self._valid(db, order_id, acct, issued.serial_hex, ctx.prov.name)
        body = order_json(ctx, Row({**found._asdict(), "status": "valid",
                                    "certificate_serial": issued.serial_hex}),
                          list(authz_ids))
        return Reply(200, body, {"Location": ctx.url("order", order_id)})

    def _valid(self, db: Any, order_id: str, acct: AcmeAccount, serial: str,
               provisioner: str) -> list[str]:
        db.execute(queries.SET_ORDER, {"b_id": order_id, "status": "valid",
                                       "certificate_serial": serial})
        self.app.audit_log().append(
            db, "acme.order.valid", Actor(f"acme:{acct.id}", "client"),
            object_ids={"order": order_id, "account": acct.id, "serial": serial,
                        "provisioner": provisioner}, details={})
        return list(db.execute(queries.AUTHZ_IDS, {"b_order": order_id}).scalars().all())

    def _defer(self, db: Any, order_id: str, der: bytes, acct: AcmeAccount,
               exc: BaseException) -> list[str]:
        db.merge(RaPendingOrder(order_id=order_id, csr_der=der, queued_at=datetime.now(UTC),
                                attempts=1))
        self.app.audit_log().append(
            db, "acme.order.deferred", Actor(f"acme:{acct.id}", "client"), outcome="failure",
            object_ids={"order": order_id, "account": acct.id},
            details={"error": getattr(exc, "code", type(exc).__name__),
                     "message": str(exc)[:300]})
        return list(db.execute(queries.AUTHZ_IDS, {"b_order": order_id}).scalars().all())

    def retry_pending(self) -> int:
        """Forward again the orders left processing (see ``_defer``); how many ended."""
        with self.app.db.sessions() as db:
            pending = db.scalars(select(RaPendingOrder).order_by(RaPendingOrder.queued_at)
                                 .limit(RETRY_BATCH)).all()
            work = [(p.order_id, bytes(p.csr_der)) for p in pending]
        ended = 0
        for order_id, der in work:
            ended += self._retry_one(order_id, der)
        return ended

    def _retry_one(self, order_id: str, der: bytes) -> int:
        with self.app.db.sessions() as db:
            order = db.get(AcmeOrder, order_id)
            acct = db.get(AcmeAccount, order.account_id) if order is not None else None
            prov = db.get(Provisioner, acct.provisioner_id) if acct is not None else None
            if order is None or acct is None or prov is None or order.status != "processing":
                stale = True
            else:
                stale = False
                idents = [Identifier(i["type"], i["value"]) for i in json.loads(order.identifiers)]
                not_before, not_after = order.not_before, order.not_after
                expires_at = order.expires_at
                db.expunge(acct)
        if stale:
            with self.app.db.transaction() as db:
                db.execute(delete(_PENDING).where(_PENDING.c.order_id == order_id))
            return 1
        assert acct is not None and prov is not None
        request = sign_request(self.app, prov_context(self.app, prov), acct, order_id,
                               load_csr(der), idents, not_before, not_after)
        if to_utc(expires_at) <= datetime.now(UTC):
            with self.app.db.transaction() as db:  # the client stopped waiting long ago
                db.execute(delete(_PENDING).where(_PENDING.c.order_id == order_id))
                order = db.get(AcmeOrder, order_id)
                if order is not None and order.status == "processing":
                    order.status = "invalid"
                    order.error = json.dumps(AcmeProblem(
                        "serverInternal", "the upstream did not answer before the order "
                        "expired; nothing was issued").document())
            return 1
        try:
            issued = self.issuer.issue(request)
        except BaseException as exc:
            if getattr(exc, "deferred", False):
                with self.app.db.transaction() as db:
                    db.execute(update(_PENDING).where(_PENDING.c.order_id == order_id)
                               .values(attempts=_PENDING.c.attempts + 1))
                return 0
            with self.app.db.transaction() as db:
                db.execute(delete(_PENDING).where(_PENDING.c.order_id == order_id))
            self._failed(order_id, exc)
            return 1
        with self.app.db.transaction() as db:
            db.execute(delete(_PENDING).where(_PENDING.c.order_id == order_id))
            self._valid(db, order_id, acct, issued.serial_hex, prov.name)
        return 1

    def _failed(self, order_id: str, exc: BaseException) -> None:
        """End the order, or leave it ready for another attempt (see the module's doc)."""
        with self.app.db.transaction() as db:
            order = db.get(AcmeOrder, order_id)
            if order is None or order.status != "processing":
                return
            if retryable(exc):
                order.status = "ready"
            else:
                order.status = "invalid"
                order.error = json.dumps(problem_of(exc).document())

    def certificate(self, ctx: Ctx, acct: AcmeAccount, serial: str) -> Reply:
        with self.app.db.read() as db:  # one snapshot, Core
            row = db.execute(_OWNED_CERT, {"b_acct": acct.id, "b_serial": serial}).first()
            if row is None or row.der is None:
                raise AcmeProblem("malformed", "no such certificate", status=404)
            chain = _chain_pem(db, row.authority_id)
        return Reply(200, pem(bytes(row.der)) + chain,
                     content_type="application/pem-certificate-chain")


def sign_request(app: Appliance, prov: ProvisionerContext, acct: AcmeAccount, order_id: str,
                 csr: x509.CertificateSigningRequest, idents: list[Identifier],
                 not_before: Any, not_after: Any) -> SignRequest:
    """What an order's finalize asks the pipeline (or an RA node's forwarder) for."""
    return SignRequest(
        csr=csr, provisioner=prov, requester=f"{prov.name}:acme:{acct.id}",
        credential_names=[i.value for i in idents],
        token_claims={"acme": {"account": acct.id, "order": order_id,
                               "eab_key": acct.eab_key_id}},
        not_before=to_utc(not_before) if not_before else None,
        not_after=to_utc(not_after) if not_after else None,
        extra_policy_levels=[eab_level(app, acct)])


def retry_pending_orders(app: Appliance, issuer: Any) -> int:
    """An RA node's retrier (one per node, ``serve``'s background jobs): re-forward the
    orders its upstream could not take; how many ended (valid, invalid, or gone)."""
    return Finalizer(app, issuer).retry_pending()


def retryable(exc: BaseException) -> bool:
    """Whether an order whose finalize failed with ``exc`` stays ready."""
    if isinstance(exc, AcmeProblem):
        return exc.status >= 500
    if isinstance(exc, ApplianceError):
        # Nothing was reserved or signed for a CSR that asks for other names than the
        # order's; the client may send one that asks for them (RFC 8555 §7.4).
        return exc.server_fault or isinstance(exc, CredentialNamesError)
    return True  # a bug, or the worker interrupted: nothing says the request was wrong


def check_identifier_kinds(csr: x509.CertificateSigningRequest) -> None:
    """An ACME order has DNS and IP identifiers only (RFC 8555 §7.1.3, RFC 8738), so a CSR
    asking for any other kind of name cannot be the order's (whether its names are exactly
    the order's is the pipeline's check)."""
    names = policy.Names.from_csr(csr)  # load_csr has read them: cannot raise here
    if names.email or names.uri or names.other:
        raise AcmeProblem("badCSR", "the CSR may only ask for DNS names and IP addresses")


def _chain_pem(db: Any, authority_id: int) -> str:
    """The issuing CA and its parents, without the self-signed root (the relying party has
    that one)."""
    out, parent = [], db.execute(_AUTHORITY_CERT, {"b_id": authority_id}).first()
    while parent is not None and parent.parent_id is not None:
        out.append(pem(bytes(parent.certificate_der)))
        parent = db.execute(_AUTHORITY_CERT, {"b_id": parent.parent_id}).first()
    return "".join(out)


def pem(der: bytes) -> str:
    """A DER certificate as PEM (64-character lines), without parsing it again."""
    text = base64.b64encode(der).decode()
    body = "\n".join(text[i:i + 64] for i in range(0, len(text), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"
