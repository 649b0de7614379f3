"""Errors as JSON with stable codes (step-ca's shape: status, error code, message).

Whose failure it is and which status answers it are the error's own class attributes
(``appliance.errors``): this module reads them and keeps no list of its own.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, jsonify
from sqlalchemy import exc as sa_exc
from werkzeug.exceptions import HTTPException

from appliance import logs
from appliance.errors import ApplianceError, InputError
from appliance.web import refusals

log = logs.get("web")
FAULT_MESSAGE = "the CA cannot sign right now; nothing was issued"


class ApiError(ApplianceError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def status_of(exc: ApplianceError) -> int:
    """The HTTP status an appliance error is answered with (see ``install``)."""
    return exc.status


def body(status: int, code: str, message: str) -> dict[str, Any]:
    return {"status": status, "error": code, "message": message}


def install(app: Flask) -> None:
    @app.errorhandler(ApplianceError)
    def _appliance(exc: ApplianceError) -> Any:
        status = status_of(exc)
        refusals.audit(exc, "rest")
        if exc.server_fault:
            # Our side failed (fail closed): the text may name token labels or SQL, so it is
            # logged; the client is told to come back (app.py adds Retry-After to a 503).
            log.error("request failed closed", extra={"fault": exc.code, "detail": str(exc)})
        doc = body(status, exc.code, str(exc) if exc.public_detail else FAULT_MESSAGE)
        if isinstance(exc, InputError):
            doc["field"] = exc.field
        hop = getattr(exc, "hop", None) or _this_ra()
        if isinstance(hop, str) and hop:
            doc["hop"] = hop  # which node of an RA path refused (appliance/ra/)
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


def _this_ra() -> str | None:
    """On an RA node every refusal names the node (its own checks, before anything is
    forwarded); on the CA only errors that came along an RA path carry a hop."""
    app = current_app.extensions.get("appliance")
    cfg = getattr(getattr(app, "settings", None), "config", None)
    if cfg is None or cfg.role != "ra":
        return None
    name = cfg.ra.name
    return name if isinstance(name, str) else None
