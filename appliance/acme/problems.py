"""ACME problem documents (RFC 8555 §6.7, RFC 7807): the only error shape ACME clients read."""

from __future__ import annotations

from typing import Any

from appliance import policy
from appliance.errors import ApplianceError
from appliance.store.db import as_fault

ERROR_NS = "urn:ietf:params:acme:error:"

STATUS = {
    "badNonce": 400, "malformed": 400, "badCSR": 400, "badSignatureAlgorithm": 400,
    "badPublicKey": 400, "badRevocationReason": 400, "invalidContact": 400,
    "unsupportedContact": 400, "unsupportedIdentifier": 400, "rejectedIdentifier": 400,
    "unauthorized": 403, "accountDoesNotExist": 400, "externalAccountRequired": 400,
    "orderNotReady": 403, "alreadyRevoked": 400, "userActionRequired": 403,
    "connection": 400, "dns": 400, "incorrectResponse": 400, "tls": 400, "caa": 403,
    "serverInternal": 500, "rateLimited": 429, "compound": 403,
}


class AcmeProblem(Exception):
    """Raised anywhere in an ACME request; rendered as ``application/problem+json``."""

    def __init__(self, kind: str, detail: str, *, status: int | None = None,
                 subproblems: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status or STATUS.get(kind, 400)
        self.subproblems = subproblems or []
        self.headers = headers or {}

    def document(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"type": ERROR_NS + self.kind, "detail": self.detail,
                               "status": self.status}
        if self.subproblems:
            doc["subproblems"] = self.subproblems
        return doc


def subproblem(kind: str, detail: str, identifier: dict[str, str]) -> dict[str, Any]:
    return {"type": ERROR_NS + kind, "detail": detail, "identifier": identifier}


FAULT_DETAIL = "the CA cannot sign right now; nothing was issued"


def problem_of(exc: BaseException) -> AcmeProblem:
    """The problem document an error is answered with, from the error's own classification
    (``appliance.errors``: ``acme_type``, ``server_fault``, ``status``, ``public_detail``).

    A client's error gets its type's status (RFC 8555 §6.7); a fault of ours keeps its own
    5xx (503 for the token, database, audit log: app.py adds Retry-After) and, unless its
    text was written for the client, a detail that names no internals. Anything else is a
    bug: a 500 that says nothing more.
    """
    if isinstance(exc, AcmeProblem):
        return exc
    exc = as_fault(exc) or exc
    if isinstance(exc, policy.PolicyError):
        # Its type is the class's; what only this error has is the refused name, which
        # becomes the subproblem's identifier (RFC 8555 §6.7.1).
        ident = {"type": "ip" if exc.name_type == "ip" else "dns", "value": exc.name}
        return AcmeProblem(exc.acme_type, str(exc),
                           subproblems=[subproblem(exc.acme_type, str(exc), ident)])
    if isinstance(exc, ApplianceError):
        if exc.server_fault:
            return AcmeProblem(exc.acme_type, str(exc) if exc.public_detail else FAULT_DETAIL,
                               status=exc.status)
        return AcmeProblem(exc.acme_type, str(exc))
    return AcmeProblem("serverInternal", "internal error; nothing was issued", status=500)
