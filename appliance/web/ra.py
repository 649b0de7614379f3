"""``/1.0/ra/*``: requests of the registration authorities directly below this node.

Every request is authenticated first: the mTLS client certificate must be a registered,
enabled RA's credential and its hop assertion must verify for this operation and this
very subject (``ra.children``). Then an RA node forwards it upstream (``ra.node``); the CA
checks the whole path (``ra.path``) and acts through the same pipeline, revocation and
registration code as every other request, and audits each request (``ra.request``).

Errors carry ``hop``: the node that refused ("CA" here on the CA, the RA's name on an RA
node; a refusal passed down from upstream keeps the upstream's ``hop``).
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, jsonify, request
from sqlalchemy import select

from appliance import durations, logs, policy, rfc3339
from appliance.audit.log import Actor
from appliance.errors import ApplianceError, InputError
from appliance.issuance.csr import load_csr
from appliance.issuance.request import MAX_CERT_LIFETIME, ProvisionerContext, SignRequest
from appliance.ops import ra as ra_ops
from appliance.provisioners.authorize import context_of
from appliance.ra import assertion, children
from appliance.ra import registry as reg
from appliance.ra.path import RaPath, verify_path
from appliance.revocation import reasons
from appliance.revocation import revoke as revoke_mod
from appliance.runtime import Appliance
from appliance.store.models import Certificate, NamePolicy
from appliance.web import errors, refusals
from appliance.web.api import appliance, issuer, parse_object, peer_certificate

bp = Blueprint("ra", __name__, url_prefix="/1.0/ra")
log = logs.get("web.ra")
MAX_CERT_PEM = 65_536


@bp.before_request
def _fips_gate() -> None:
    appliance().fips_state.check()


@bp.errorhandler(ApplianceError)
def _error(exc: ApplianceError) -> Any:
    """As ``web.errors`` answers, plus ``code`` and the refusing ``hop``."""
    status = errors.status_of(exc)
    refusals.audit(exc, "ra")
    if exc.server_fault:
        log.error("RA request failed closed", extra={"fault": exc.code, "detail": str(exc)})
    doc = errors.body(status, exc.code, str(exc) if exc.public_detail else errors.FAULT_MESSAGE)
    doc["code"] = exc.code
    doc["hop"] = getattr(exc, "hop", None) or this_hop(appliance())
    if isinstance(exc, InputError):
        doc["field"] = exc.field
    return jsonify(doc), status


def this_hop(app: Appliance) -> str:
    """How this node names itself in a refusal: "CA", or the RA's own name."""
    if not ra_ops.is_ra_node(app):
        return "CA"
    ra = getattr(app.settings.config, "ra", None)
    return str(getattr(ra, "name", None) or "RA")


# -- the body ----------------------------------------------------------------------------

def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(key, "is required (a string)")
    return value


def _time(data: dict[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    try:
        return rfc3339.parse(value)
    except ValueError:
        raise InputError(key, "must be an RFC 3339 time") from None


def _lifetime(data: dict[str, Any]) -> int | None:
    value = data.get("lifetime")
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or \
            not 1 <= value <= MAX_CERT_LIFETIME:
        raise InputError("lifetime", f"must be whole seconds, 1 to {MAX_CERT_LIFETIME}")
    return value


def _template_data(data: dict[str, Any]) -> dict[str, Any] | None:
    value = data.get("templateData")
    if value is not None and not isinstance(value, dict):
        raise InputError("templateData", "must be an object")
    return value


def _certificate(data: dict[str, Any]) -> x509.Certificate:
    text = _text(data, "certificate")
    if len(text) > MAX_CERT_PEM or not text.isascii():
        raise InputError("certificate", f"a PEM certificate of at most {MAX_CERT_PEM} bytes")
    try:
        return x509.load_pem_x509_certificate(text.encode("ascii"))
    except ValueError:
        raise InputError("certificate", "not a PEM certificate") from None


def _der(item: x509.CertificateSigningRequest | x509.Certificate) -> bytes:
    return item.public_bytes(serialization.Encoding.DER)


# -- the routes --------------------------------------------------------------------------

@bp.post("/sign")
def sign() -> Any:
    data = parse_object(request.get_data(cache=False))
    csr = load_csr(_text(data, "csr"), "csr")
    subject = assertion.digest(_der(csr))
    return _dispatch("sign", data, subject, lambda path: _sign(path, data, csr))


@bp.post("/renew")
def renew() -> Any:
    data = parse_object(request.get_data(cache=False))
    cert = _certificate(data)
    subject = assertion.digest(_der(cert))
    return _dispatch("renew", data, subject, lambda path: _renew(path, cert))


@bp.post("/revoke")
def revoke() -> Any:
    data = parse_object(request.get_data(cache=False))
    serial = data.get("serial")
    if not isinstance(serial, str) or not serial:
        raise InputError("serial", "is required (hexadecimal string)")
    serial_hex = revoke_mod.normalise_serial(serial)
    reason = data.get("reasonCode", 0)
    if isinstance(reason, bool) or not isinstance(reason, int | str):
        raise InputError("reasonCode", "must be an RFC 5280 code")
    reason_name = reasons.parse(reason)
    subject = assertion.serial_digest(serial_hex)
    return _dispatch("revoke", data, subject,
                     lambda path: _revoke(path, serial_hex, reason_name))


@bp.post("/register")
def register() -> Any:
    data = parse_object(request.get_data(cache=False))
    csr = load_csr(_text(data, "csr"), "csr")
    subject = assertion.digest(_der(csr))
    return _dispatch("register", data, subject, lambda path: _register(path, csr))


@bp.post("/credential/renew")
def credential_renew() -> Any:
    data = parse_object(request.get_data(cache=False))
    csr = load_csr(_text(data, "csr"), "csr")
    subject = assertion.digest(_der(csr))
    return _dispatch("credential-renew", data, subject,
                     lambda path: _credential_renew(path, csr))


def _dispatch(op: str, data: dict[str, Any], subject: str, act: Any) -> Any:
    """Authenticate the child; forward (RA node) or verify the path and act (CA), with one
    ``ra.request`` record of the decision at the CA."""
    app = appliance()
    child = children.authenticate_child(app, peer_certificate(), data.get("assertion"), op,
                                        subject)
    if ra_ops.is_ra_node(app):
        status, doc = ra_ops.ra_node().forward_child(app, op, data, child)
        return jsonify(doc), status
    names: list[str] = [child.row.name]
    actor = Actor(f"ra:{child.row.name}", "ra")
    try:
        path = verify_path(app, child)
        names = path.names
        actor = Actor(_requester(path), "ra")
        for entry in path.rows[:-1]:
            reg.touch(app, entry, op)
        status, doc, serial = act(path)
    except ApplianceError as exc:
        ra_ops.audit_request(app, op, names, subject, actor, error=exc)
        raise
    ra_ops.audit_request(app, op, names, subject, actor, serial=serial)
    return jsonify(doc), status


# -- the CA's actions --------------------------------------------------------------------

def _requester(path: RaPath) -> str:
    """``edge-2 → edge-1: <whom edge-2 authenticated>``."""
    return f"{path.arrow()}: {path.bottom.requester}"[:256]


def _same_names(path: RaPath, item: x509.CertificateSigningRequest | x509.Certificate,
                what: str) -> None:
    if assertion.names_of(item) != tuple(path.bottom.names):
        raise reg.RaRefused(f"the {what}'s names are not the names RA {path.names[0]} "
                            "asserted")


def _provisioner(app: Appliance, path: RaPath) -> ProvisionerContext:
    """The direct child's ``ra`` provisioner (its claims), narrowed by every other hop's
    registered claims: a lower RA's ``--max-duration`` holds at the CA too."""
    direct = path.direct
    ctx = context_of(app, direct.id, direct.name, "ra", direct.config, direct.authority_id)
    claims = ctx.claims
    for entry in path.rows[:-1]:
        longest = entry.settings.claims.max_duration
        if longest is not None and longest < claims.max_duration:
            claims = replace(claims, max_duration=longest,
                             default_duration=min(claims.default_duration, longest),
                             min_duration=min(claims.min_duration, longest))
    return replace(ctx, claims=claims)


@lru_cache(maxsize=256)
def _parse(text: str, source: str) -> policy.Policy:
    return policy.parse_policy(text, source)


def _hop_levels(app: Appliance, path: RaPath) -> list[tuple[str, policy.Policy | None]]:
    """The ``ra`` provisioner policies at the CA of every hop but the direct child (the
    pipeline checks that one as the request's provisioner), bottom first."""
    lower = path.rows[:-1]
    if not lower:
        return []
    with app.db.read() as db:
        rows = db.execute(select(NamePolicy.provisioner_id, NamePolicy.source).where(
            NamePolicy.provisioner_id.in_([e.id for e in lower]))).all()
    by_id = {r.provisioner_id: r.source for r in rows}
    return [(f"provisioner {e.name}",
             _parse(by_id[e.id], f"{e.name} policy") if e.id in by_id else None)
            for e in lower]


def _claims(path: RaPath, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**(extra or {}), "ra": {"path": path.names, "provisioner": path.bottom.provisioner,
                                    "requester": path.bottom.requester}}


def _issued(issued: Any, path: RaPath) -> tuple[int, dict[str, Any], str]:
    chain = issued.chain_pem()
    return 201, {"crt": issued.pem(), "ca": chain[0], "certChain": [issued.pem(), *chain],
                 "serial": issued.serial_hex, "raPath": path.names}, issued.serial_hex


def _sign(path: RaPath, data: dict[str, Any], csr: x509.CertificateSigningRequest
          ) -> tuple[int, dict[str, Any], str]:
    app = appliance()
    _same_names(path, csr, "CSR")
    ctx = _provisioner(app, path)
    not_after, lifetime = _time(data, "notAfter"), _lifetime(data)
    if data.get("lifetimeIsDefault") is True and not_after is None and lifetime is not None:
        # An RA's default (nobody asked for it): a ceiling, clipped to this CA's cap as
        # the CA's own default is; never lengthened.
        lifetime = min(lifetime, ctx.claims.max_duration)
    return _issued(issuer().issue(SignRequest(
        csr=csr, provisioner=ctx, requester=_requester(path),
        credential_names=list(path.bottom.names), token_claims=_claims(path),
        not_before=_time(data, "notBefore"), not_after=not_after,
        lifetime=lifetime, template_data=_template_data(data),
        extra_policy_levels=_hop_levels(app, path), ra_path=path.names)), path)


def _stored(app: Appliance, serial_hex: str) -> Certificate:
    with app.db.sessions() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == serial_hex)).one_or_none()
        if row is not None:
            db.expunge(row)
    if row is None or row.status not in ("issued", "revoked"):
        raise revoke_mod.NotIssued(f"no issued certificate with serial {serial_hex}")
    return row


def _initiator_in_path(path: RaPath, row: Certificate, what: str) -> None:
    """Only an RA on a certificate's stored path may act on it through RAs: the one that
    initiated this request (the bottom hop) must be on it."""
    stored = ra_ops.stored_path(row.ra_path)
    if path.names[0] not in stored:
        raise reg.RaRefused(f"RA {path.names[0]} may not {what} certificate {row.serial_hex}: "
                            "it did not come through that RA")


def _renew(path: RaPath, cert: x509.Certificate) -> tuple[int, dict[str, Any], str]:
    app = appliance()
    serial = f"{cert.serial_number:x}"
    row = _stored(app, serial)
    if row.der != _der(cert):
        raise reg.RaRefused("this certificate was not issued by this CA")
    _initiator_in_path(path, row, "renew")
    if row.status == "revoked":
        raise reg.RaRefused("the certificate is revoked")
    _same_names(path, cert, "certificate")
    ctx = _provisioner(app, path)
    if ctx.claims.disable_renewal:
        raise reg.RaRefused(f"provisioner {ctx.name} does not allow renewal")
    now = datetime.now(UTC)
    expired = now > cert.not_valid_after_utc
    if expired and not ctx.claims.allow_renewal_after_expiry:
        raise reg.RaRefused(f"the certificate expired and provisioner {ctx.name} does not "
                            "allow renewal after expiry")
    issued_at = rfc3339.to_utc(row.issued_at or row.reserved_at)
    lifetime = round((cert.not_valid_after_utc - issued_at).total_seconds())
    lifetime = max(ctx.claims.min_duration, min(lifetime, ctx.claims.max_duration))
    stored = json.loads(row.request_context or "{}")
    return _issued(issuer().issue(SignRequest(
        csr=cert, provisioner=ctx, requester=_requester(path),
        credential_names=list(path.bottom.names),
        token_claims=_claims(path, stored.get("token") or {}),
        template_data=stored.get("data") or None, lifetime=lifetime, renewal_of=serial,
        after_expiry=expired, extra_policy_levels=_hop_levels(app, path),
        ra_path=path.names)), path)


def _revoke(path: RaPath, serial_hex: str, reason: str) -> tuple[int, dict[str, Any], str]:
    app = appliance()
    row = _stored(app, serial_hex)
    _initiator_in_path(path, row, "revoke")
    asserted = path.bottom.reason
    if asserted is not None and reasons.parse(asserted) != reason:
        raise reg.RaRefused(f"RA {path.names[0]} asserted reason {asserted}, not {reason}")
    done = revoke_mod.revoke(app, serial_hex, reason, Actor(_requester(path), "ra"))
    return 200, {"status": "ok", "serial": done.serial_hex, "reason": done.reason}, \
        done.serial_hex


def _register(path: RaPath, csr: x509.CertificateSigningRequest
              ) -> tuple[int, dict[str, Any], str]:
    app = appliance()
    asked = path.bottom.register
    if not asked:
        raise InputError("assertion", "a register assertion carries register")
    longest = asked.get("max_duration")
    try:
        max_duration = durations.parse(longest) if longest else None
    except ValueError as exc:
        raise InputError("assertion", f"register.max_duration: {exc}") from None
    issued = ra_ops.register(
        app, issuer(), str(asked["name"]), csr, Actor(_requester(path), "ra"),
        parent=path.names[0], max_duration=max_duration, policy_text=asked.get("policy"),
        ra_path=path.names)
    return _credential(issued)


def _credential_renew(path: RaPath, csr: x509.CertificateSigningRequest
                      ) -> tuple[int, dict[str, Any], str]:
    app = appliance()
    issued = ra_ops.renew_credential(app, issuer(), path.names[0], csr,
                                     Actor(_requester(path), "ra"), ra_path=path.names)
    return _credential(issued)


def _credential(issued: Any) -> tuple[int, dict[str, Any], str]:
    return 201, {"crt": issued.pem(), "certChain": [issued.pem(), *issued.chain_pem()],
                 "serial": issued.serial_hex}, issued.serial_hex
