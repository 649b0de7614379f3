"""``/acme/<provisioner>/…``: RFC 8555 over HTTP. Parsing, JWS checks and response shapes;
the rules are in ``appliance.acme`` (composed by ``appliance.acme.service``), and every error
is answered as the problem its classification names (``appliance.acme.problems``)."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, current_app, g, request
from werkzeug.exceptions import HTTPException

from appliance import logs
from appliance.acme import jws
from appliance.acme.context import Ctx, Reply
from appliance.acme.problems import AcmeProblem, problem_of
from appliance.acme.service import AcmeService
from appliance.errors import ApplianceError
from appliance.store.models import AcmeAccount
from appliance.web import refusals

log = logs.get("acme")
bp = Blueprint("acme", __name__, url_prefix="/acme/<provisioner>")
RATE_LIMITED = ("new-account", "new-order", "finalize", "revoke-cert", "key-change")


def service() -> AcmeService:
    svc: AcmeService = current_app.extensions["acme"]
    return svc


def ctx() -> Ctx:
    c: Ctx | None = g.get("acme_ctx")
    if c is None:  # a signed request refused before its nonce was spent: read it now
        c = g.acme_ctx = service().context(g.acme_provisioner, g.acme_base)
    return c


@bp.url_value_preprocessor
def _provisioner(_endpoint: str | None, values: dict[str, Any] | None) -> None:
    g.acme_provisioner = (values or {}).pop("provisioner", "")


@bp.url_defaults
def _defaults(_endpoint: str, values: dict[str, Any]) -> None:
    values.setdefault("provisioner", g.get("acme_provisioner", ""))


@bp.before_request
def _context() -> None:
    # The FIPS error state: every ACME request is a 503 problem (FipsError is a fault).
    current_app.extensions["appliance"].fips_state.check()
    name = g.acme_provisioner
    parts = request.path.rsplit("/", 2)
    # Challenge POSTs too: each makes the CA connect to a host the client names.
    if request.method == "POST" and (parts[-1] in RATE_LIMITED or parts[-2] == "chall"):
        limiter = current_app.extensions.get("rate_limiter")
        if limiter is not None and not limiter.allow(request.remote_addr or "?"):
            raise AcmeProblem("rateLimited", "too many requests; slow down",
                              headers={"Retry-After": "10"})
    # From the configuration, never from Host (hostcheck refused any other Host already).
    g.acme_base = f"{_external_url()}/acme/{name}"
    # Every POST is a signed request: its provisioner is read with its nonce (_verified).
    g.acme_ctx = None if request.method == "POST" else service().context(name, g.acme_base)


def _external_url() -> str:
    url: str = current_app.extensions["appliance"].settings.config.service.external_base_url()
    return url


@bp.after_request
def _headers(response: Response) -> Response:
    if g.get("host_refused"):
        return response
    if getattr(g, "acme_ctx", None) is not None:
        response.headers.add("Link", f'<{ctx().url("directory")}>;rel="index"')
    if request.method in ("POST", "HEAD") or request.path.endswith("/new-nonce"):
        try:
            response.headers["Replay-Nonce"] = service().nonces.new()
        except Exception:  # no nonce store: the answer stands, the client asks again
            log.exception("making a nonce failed")
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.errorhandler(Exception)
def _problem(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        problem = AcmeProblem("malformed", exc.description or exc.name, status=exc.code or 400)
    else:
        if not isinstance(exc, (ApplianceError, AcmeProblem)):
            log.exception("unexpected error in an ACME request")
        elif isinstance(exc, ApplianceError) and exc.server_fault:
            log.error("ACME request failed closed", extra={"fault": exc.code,
                                                           "detail": str(exc)})
        problem = problem_of(exc)
        refusals.audit(exc, "acme")
    resp = Response(json.dumps(problem.document()), problem.status,
                    mimetype="application/problem+json")
    for k, v in problem.headers.items():
        resp.headers[k] = v
    return resp


def _reply(r: Reply) -> Response:
    if r.body is None:
        resp = Response(status=r.status)
    elif isinstance(r.body, str):
        resp = Response(r.body, r.status, content_type=r.content_type)
    else:
        resp = Response(json.dumps(r.body), r.status, mimetype=r.content_type)
    for k, v in r.headers.items():
        resp.headers[k] = v
    return resp


def _verified(want: str = "kid") -> tuple[jws.Verified, AcmeAccount | None]:
    try:
        return _verify(want)
    except AcmeProblem:
        # Refused before the provisioner was read (content type, envelope, url, kid/jwk,
        # nonce): an unknown or disabled provisioner is still what the client is told.
        if g.get("acme_ctx") is None:
            ctx()
        raise


def _verify(want: str) -> tuple[jws.Verified, AcmeAccount | None]:
    if request.mimetype != "application/jose+json":
        raise AcmeProblem("malformed", "Content-Type must be application/jose+json", status=415)
    env = jws.parse(jws.read_body(request.get_data(cache=False)))
    found: dict[str, Any] = {}
    kid = env.protected.get("kid")
    if not isinstance(kid, str) or len(kid) > 512:
        kid = None  # jws.verify refuses it (or it signs with a jwk)

    def redeem(nonce: str) -> bool:
        # jws.verify asks for the account (kid) right after the nonce: the provisioner,
        # the nonce and the account in one transaction; account_key still judges the row.
        ok = service().redeem(g.acme_provisioner, g.acme_base, nonce, kid, found)
        if ok:
            g.acme_ctx = found["ctx"]
        return ok

    def account_key(signer: str) -> Any:
        if signer == kid and "row" in found:
            acct, key = service().account_key(ctx(), signer, found["row"])
        else:
            acct, key = service().account_key(ctx(), signer)
        found["acct"] = acct
        return key

    verified = jws.verify(env, url=_external_url() + request.path,
                          redeem_nonce=redeem, account_key=account_key, want=want)
    return verified, found.get("acct")


def _account(post_as_get: bool = False) -> tuple[jws.Verified, AcmeAccount]:
    verified, acct = _verified("kid")
    assert acct is not None
    if post_as_get and not verified.post_as_get:
        raise AcmeProblem("malformed", "this resource is read with POST-as-GET (empty payload)")
    return verified, acct


@bp.get("/directory")
def directory() -> Response:
    return _reply(service().directory(ctx()))


@bp.route("/new-nonce", methods=["GET", "HEAD"])
def new_nonce() -> Response:
    return Response(status=200 if request.method == "HEAD" else 204)


@bp.post("/new-account")
def new_account() -> Response:
    verified, _ = _verified("jwk")
    return _reply(service().accounts.new(ctx(), verified))


@bp.post("/account/<account_id>")
def account(account_id: str) -> Response:
    verified, acct = _account()
    return _reply(service().accounts.update(ctx(), acct, account_id, verified))


@bp.post("/account/<account_id>/orders")
def account_orders(account_id: str) -> Response:
    _, acct = _account(post_as_get=True)
    return _reply(service().accounts.orders(ctx(), acct, account_id))


@bp.post("/key-change")
def key_change() -> Response:
    verified, acct = _account()
    return _reply(service().accounts.key_change(ctx(), acct, verified))


@bp.post("/new-order")
def new_order() -> Response:
    verified, acct = _account()
    return _reply(service().orders.new_order(ctx(), acct, verified))


@bp.post("/order/<order_id>")
def order(order_id: str) -> Response:
    _, acct = _account(post_as_get=True)
    return _reply(service().orders.get_order(ctx(), acct, order_id))


@bp.post("/order/<order_id>/finalize")
def finalize(order_id: str) -> Response:
    verified, acct = _account()
    return _reply(service().finalizer.finalize(ctx(), acct, order_id, verified))


@bp.post("/authz/<authz_id>")
def authorization(authz_id: str) -> Response:
    verified, acct = _account()
    return _reply(service().authorizations.authorization(ctx(), acct, authz_id, verified))


@bp.post("/chall/<chall_id>")
def challenge(chall_id: str) -> Response:
    verified, acct = _account()
    return _reply(service().authorizations.challenge(ctx(), acct, chall_id, verified))


@bp.post("/cert/<serial>")
def certificate(serial: str) -> Response:
    _, acct = _account(post_as_get=True)
    return _reply(service().finalizer.certificate(ctx(), acct, serial))


@bp.post("/revoke-cert")
def revoke_cert() -> Response:
    verified, acct = _verified("either")
    return _reply(service().revoke_cert(ctx(), verified, acct))


@bp.get("/renewal-info/<path:cert_id>")
def renewal_info(cert_id: str) -> Response:
    return _reply(service().renewal_info(cert_id))
