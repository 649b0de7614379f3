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
  order's: the order stays ready, and the same finalize can be sent again.
"""

from __future__ import annotations

import base64
import json
from typing import Any, cast

from cryptography import x509
from sqlalchemy import Table, bindparam, select, update

from appliance import policy
from appliance.acme import jws, queries
from appliance.acme.context import Ctx, Reply, Row
from appliance.acme.identifiers import Identifier
from appliance.acme.orders import eab_level, order_json, order_status
from appliance.acme.problems import AcmeProblem, problem_of
from appliance.audit.log import Actor
from appliance.errors import ApplianceError, InputError
from appliance.issuance.csr import load_csr
from appliance.issuance.pipeline import CredentialNamesError, Issuer
from appliance.issuance.request import SignRequest
from appliance.rfc3339 import to_utc
from appliance.runtime import Appliance
from appliance.store.models import AcmeAccount, AcmeOrder, Authority, Certificate

_ORDERS = queries.ORDERS
_CERTS = cast(Table, Certificate.__table__)
_AUTHORITIES = cast(Table, Authority.__table__)
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
        with self.app.db.transaction() as db:
            found = db.execute(queries.ORDER_BY_ID, {"b_id": order_id}).first()
            if found is None or found.account_id != acct.id:
                raise AcmeProblem("malformed", "no such order", status=404)
            status = order_status(found)
            if status != "ready":
                raise AcmeProblem("orderNotReady", f"the order is {status}, not ready")
            idents = [Identifier(i["type"], i["value"]) for i in json.loads(found.identifiers)]
            # ready -> processing exactly once, whichever database and however many workers
            claimed = db.execute(_CLAIM_ORDER, {"b_id": order_id})
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                raise AcmeProblem("orderNotReady", "the order is being finalized already")
            not_before, not_after = found.not_before, found.not_after
        try:
            issued = self.issuer.issue(SignRequest(
                csr=csr, provisioner=ctx.prov, requester=f"{ctx.prov.name}:acme:{acct.id}",
                credential_names=[i.value for i in idents],
                token_claims={"acme": {"account": acct.id, "order": order_id,
                                       "eab_key": acct.eab_key_id}},
                not_before=to_utc(not_before) if not_before else None,
                not_after=to_utc(not_after) if not_after else None,
                extra_policy_levels=[eab_level(self.app, acct)]))
        except BaseException as exc:
            self._failed(order_id, exc)
            raise  # answered by the blueprint's handler (problem_of)
        with self.app.db.transaction() as db:
            db.execute(queries.SET_ORDER, {"b_id": order_id, "status": "valid",
                                           "certificate_serial": issued.serial_hex})
            self.app.audit_log().append(
                db, "acme.order.valid", Actor(f"acme:{acct.id}", "client"),
                object_ids={"order": order_id, "account": acct.id, "serial": issued.serial_hex,
                            "provisioner": ctx.prov.name}, details={})
            authz_ids = db.execute(queries.AUTHZ_IDS, {"b_order": order_id}).scalars().all()
        body = order_json(ctx, Row({**found._asdict(), "status": "valid",
                                    "certificate_serial": issued.serial_hex}),
                          list(authz_ids))
        return Reply(200, body, {"Location": ctx.url("order", order_id)})

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
