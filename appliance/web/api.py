"""``/1.0/*``: sign, roots, health, readiness, provisioners (request shapes follow
step-ca's); and ``/metrics`` (Prometheus) for the API's workers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import Blueprint, Response, current_app, jsonify, request
from sqlalchemy import select

from appliance import bounded_json, metrics, rfc3339
from appliance.audit.log import Actor
from appliance.ca import authorities as authz
from appliance.errors import InputError
from appliance.issuance.csr import load_csr
from appliance.issuance.pipeline import Issuer
from appliance.issuance.request import SignRequest
from appliance.ops import provisioners as prov_ops
from appliance.provisioners import authorize, renewal, tokens
from appliance.ra import node
from appliance.revocation import reasons
from appliance.revocation import revoke as revoke_mod
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate
from appliance.web.errors import ApiError
from appliance.web.health import ServiceHealth, metrics_dir

bp = Blueprint("api", __name__, url_prefix="/1.0")
ops_bp = Blueprint("ops", __name__)
FIPS_UNGATED = ("api.health", "api.ready")


@bp.before_request
def _fips_gate() -> None:
    """The FIPS error state: every endpoint but health and readiness answers 503
    ``fips_error`` (a no-op outside FIPS mode: the state is never entered there)."""
    if request.endpoint not in FIPS_UNGATED:
        appliance().fips_state.check()


def service_health() -> ServiceHealth | None:
    health: ServiceHealth | None = current_app.extensions.get("health")
    return health


def appliance() -> Appliance:
    app: Appliance = current_app.extensions["appliance"]
    return app


def issuer() -> Issuer:
    iss: Issuer = current_app.extensions["issuer"]
    return iss


def peer_certificate() -> bytes | None:
    """The client's TLS certificate (DER), verified by the handshake against the API's
    roots, as the API server put it in the environ; None without one."""
    der = request.environ.get("appliance.peer_certificate")
    return der if isinstance(der, bytes) and der else None


def parse_object(raw: bytes) -> dict[str, Any]:
    """A request body: one JSON object, within the bounds of ``bounded_json``."""
    data = bounded_json.loads(raw, "body")
    if not isinstance(data, dict):
        raise ApiError(400, "bad_request", "the body must be a JSON object")
    return data


@dataclass(frozen=True)
class SignBody:
    """A ``/1.0/sign`` body, read completely (the CSR too) before the token is looked at."""

    csr: x509.CertificateSigningRequest
    ott: str
    not_before: datetime | None
    not_after: datetime | None
    template_data: dict[str, Any] | None


def parse_sign_body(raw: bytes) -> SignBody:
    data = parse_object(raw)
    csr_text, ott = data.get("csr"), data.get("ott")
    if not isinstance(csr_text, str) or not isinstance(ott, str):
        raise ApiError(400, "bad_request", "csr and ott are required strings")
    template_data = data.get("templateData")
    if template_data is not None and not isinstance(template_data, dict):
        raise ApiError(400, "bad_request", "templateData must be an object")
    return SignBody(csr=load_csr(csr_text, "csr"), ott=ott,
                    not_before=_time(data, "notBefore"), not_after=_time(data, "notAfter"),
                    template_data=template_data)


def token_lifetime(claims: dict[str, Any]) -> int | None:
    """The token's ``cert_lifetime`` (seconds), as the token check let it through."""
    tokens.check_cert_lifetime(claims)
    value = claims.get("cert_lifetime")
    return value if isinstance(value, int) else None


@dataclass(frozen=True)
class RevokeBody:
    serial: str  # normalised hexadecimal
    reason: str  # canonical RFC 5280 name
    ott: str | None


def parse_revoke_body(raw: bytes) -> RevokeBody:
    data = parse_object(raw)
    serial = data.get("serial")
    if not isinstance(serial, str) or not serial:
        raise ApiError(400, "bad_request", "serial is required (hexadecimal string)")
    reason = data.get("reasonCode", data.get("reason", 0))
    if isinstance(reason, bool) or not isinstance(reason, int | str):
        raise ApiError(400, "bad_request", "reasonCode must be an RFC 5280 code")
    ott = data.get("ott")
    if ott is not None and not isinstance(ott, str):
        raise ApiError(400, "bad_request", "ott must be a string")
    return RevokeBody(revoke_mod.normalise_serial(serial), reasons.parse(reason), ott or None)


def _time(data: dict[str, Any], key: str) -> datetime | None:
    value = data.get(key)
    if value in (None, ""):
        return None
    try:
        return rfc3339.parse(value)
    except ValueError:
        raise InputError(key, "must be an RFC 3339 time between the years "
                         f"{rfc3339.MIN_YEAR} and {rfc3339.MAX_YEAR}") from None


@bp.get("/health")
def health() -> Any:
    """Liveness; in the FIPS error state a 503 that names the failed self-tests (only a
    restart whose self-tests pass leaves it)."""
    failed = appliance().fips_state.failed
    if failed:
        return jsonify({"status": "fips_error", "failed": list(failed),
                        "node": appliance().node_id, "pid": os.getpid()}), 503
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Any:
    """Whether this worker can sign now, from its background checks only (the token
    watcher, the database probe): answers at once whatever the token or database do."""
    app = appliance()
    health = service_health()
    if health is None:
        checks = {"token": "unavailable: not watched", "database": "unavailable: not probed"}
        ready_now, retry = False, 2
    else:
        state = health.readiness()
        checks, ready_now, retry = state.checks, state.ready, state.retry_after
    doc = {"status": "ready" if ready_now else "unavailable", "checks": checks,
           "node": app.node_id, "pid": os.getpid()}
    response = jsonify(doc)
    if not ready_now:
        response.status_code = 503
        response.headers["Retry-After"] = str(retry)
    return response


@ops_bp.get("/metrics")
def metrics_text() -> Any:
    """Counters summed over every API worker of this server, gauges over live ones
    (:mod:`appliance.metrics`), whichever worker the scrape reached."""
    health = service_health()
    folder = health.metrics.directory if health is not None and health.metrics else None
    body = metrics.exposition(folder or metrics_dir(appliance()), os.getppid())
    return Response(body, content_type="text/plain; version=0.0.4; charset=utf-8")


@bp.get("/roots")
def roots() -> Any:
    with appliance().db.sessions() as db:
        # Ours and imported ones (an offline or outside root): what clients must trust.
        rows = db.query(Authority).filter(Authority.kind.in_(("root", "external-root")),
                                          Authority.status == "active").all()
        pems = [authz.certificate(r).public_bytes(serialization.Encoding.PEM).decode()
                for r in rows]
    return jsonify({"crts": pems})


@bp.get("/provisioners")
def provisioners() -> Any:
    app = appliance()
    with app.db.sessions() as db:
        return jsonify({"provisioners": prov_ops.list_all(app, db, public=True)})


@bp.post("/sign")
def sign() -> Any:
    body = parse_sign_body(request.get_data(cache=False))
    app = appliance()
    verified = authorize.verify_one_time_token(app, body.ott)
    ctx, claims = verified.ctx, verified.claims
    try:
        # The token is spent by the pipeline, in the transaction that reserves the serial
        # (or that audits a refusal): a replay is refused there, having reserved nothing.
        issued = issuer().issue(SignRequest(
            csr=body.csr, provisioner=ctx, requester=f"{ctx.name}:{claims.subject}",
            credential_names=list(claims.sans), token_claims=claims.raw,
            not_before=body.not_before, not_after=body.not_after,
            lifetime=token_lifetime(claims.raw), template_data=body.template_data,
            token_spend=verified.spend, epochs=verified.epochs))
    except tokens.TokenError as exc:  # a replay, found by the spend
        authorize.replayed(app, verified, exc)
        raise
    return _issued(issued)


@bp.post("/renew")
def renew() -> Any:
    auth = request.headers.get("Authorization", "")
    bearer = auth[7:].strip() if auth[:7].lower() == "bearer " else None
    peer = peer_certificate()
    grant = renewal.authenticate(appliance(), peer_der=peer, bearer=bearer)
    return _issued(issuer().issue(grant.request))


@bp.post("/revoke")
def revoke() -> Any:
    """``{"serial", "reasonCode"?, "reason"?, "ott"?}``: a one-time token of the provisioner that
    issued the certificate (``sub`` = the serial), or mTLS by the certificate itself."""
    body = parse_revoke_body(request.get_data(cache=False))
    target, reason, ott = body.serial, body.reason, body.ott
    app = appliance()
    if ott:
        ctx, claims = authorize.one_time_token(app, ott, "/1.0/revoke")
        if revoke_mod.normalise_serial(claims.subject) != target:
            raise ApiError(401, "unauthorized", "the token is for another serial")
        if app.settings.config.role == "ra":  # the CA revokes; this node's copy follows
            _issued_here_by(app, target, ctx.name)
            return jsonify(node.forward_revoke(app, target, reason, f"{ctx.name}:revoke",
                                               {"name": ctx.name, "type": ctx.type})), 200
        done = revoke_mod.revoke(app, target, reason, Actor(f"{ctx.name}:revoke", "service"),
                                 provisioner=ctx.name)
    else:
        peer = peer_certificate()
        if not peer:
            raise ApiError(401, "unauthorized", "revocation needs an ott or a client certificate")
        cert = x509.load_der_x509_certificate(peer)
        if f"{cert.serial_number:x}" != target:
            raise ApiError(403, "forbidden", "a certificate can only revoke itself")
        if app.settings.config.role == "ra":
            _issued_here_by(app, target, None, peer)
            return jsonify(node.forward_revoke(app, target, reason, f"mtls:{target}",
                                               {"name": "mtls", "type": "mtls"})), 200
        done = revoke_mod.revoke(app, target, reason, Actor(f"mtls:{target}", "service"))
    return jsonify({"status": "ok", "serial": done.serial_hex, "reason": done.reason}), 200


def _issued_here_by(app: Appliance, serial: str, provisioner: str | None,
                    der: bytes | None = None) -> None:
    """An RA node's local rule before a revocation is forwarded: this node issued the
    certificate (its copy), under ``provisioner`` (an ott) or as exactly ``der`` (mTLS)."""
    with app.db.sessions() as db:
        row = db.scalars(select(Certificate).where(
            Certificate.serial_hex == serial)).one_or_none()
    if row is None or row.status != "issued" or (
            provisioner is not None and row.provisioner_name != provisioner) or (
            der is not None and row.der != der):
        raise ApiError(404, "not_found", f"no issued certificate with serial {serial}"
                       + (f" issued by {provisioner}" if provisioner else "") + " here")


def _issued(issued: Any) -> Any:
    chain = issued.chain_pem()  # the signer's, encoded once per signer (``Issued.chain_pems``)
    crt = issued.pem()
    return jsonify({"crt": crt, "ca": chain[0], "certChain": [crt, *chain],
                    "serial": issued.serial_hex}), 201
