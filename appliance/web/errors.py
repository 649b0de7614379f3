"""Errors as JSON with stable codes (step-ca's shape: status, error code, message)."""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from appliance import logs
from appliance.errors import (
    ApplianceError,
    ConfigError,
    DatabaseError,
    HsmError,
    InputError,
    SelfTestError,
)

log = logs.get("web")

STATUS_BY_CODE = {
    "bad_request": 400, "policy_refused": 403, "template_refused": 403,
    "inventory_refused": 403, "lint_failed": 422, "template_error": 422,
    "unauthorized": 401, "forbidden": 403, "not_found": 404, "rate_limited": 429,
    "provisioner_error": 404, "authority_unavailable": 503, "path_constraint": 403,
}
# Our side failed (fail closed, 503), not the request.
FAULTS = (HsmError, DatabaseError, SelfTestError, ConfigError)


class ApiError(ApplianceError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def status_of(exc: ApplianceError) -> int:
    """The HTTP status an appliance error is answered with (see ``install``)."""
    if isinstance(exc, ApiError):
        return exc.status
    if isinstance(exc, FAULTS):
        return 503
    return STATUS_BY_CODE.get(exc.code, 400)


def body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": code, "message": message}


def install(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api(exc: ApiError) -> Any:
        return jsonify(body(exc.status, exc.code, str(exc))), exc.status

    @app.errorhandler(ApplianceError)
    def _appliance(exc: ApplianceError) -> Any:
        if isinstance(exc, FAULTS):
            log.error("request failed closed", extra={"fault": exc.code})
            return jsonify(body(503, exc.code, "the CA cannot sign right now; nothing was "
                                               "issued")), 503
        status = status_of(exc)
        doc = body(status, exc.code, str(exc))
        if isinstance(exc, InputError):
            doc["field"] = exc.field
        return jsonify(doc), status

    @app.errorhandler(sa_exc.OperationalError)
    @app.errorhandler(sa_exc.TimeoutError)
    def _database(exc: Exception) -> Any:
        # A read that met a locked or unreachable database, or no pooled connection within
        # the deadline (writes arrive here as DatabaseError): our side, fail closed.
        log.error("request failed closed", extra={"fault": "database_error",
                                                  "detail": type(exc).__name__})
        return jsonify(body(503, "database_error", "the database is not available right "
                                                   "now; nothing was issued")), 503

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Any:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return jsonify(body(status, code, exc.description or exc.name)), status

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Any:
        log.exception("unexpected error")
        return jsonify(body(500, "internal_error", "internal error; nothing was issued")), 500
