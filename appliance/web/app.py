"""The Flask application: limits, security headers, per-client rate limit, JSON errors."""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from flask import Flask, request

from appliance import logs
from appliance.acme.service import AcmeService
from appliance.errors import ApplianceError
from appliance.fips.selftest import FipsError
from appliance.issuance.pipeline import Issuer
from appliance.issuance.sweeper import ReservationSweeper
from appliance.runtime import Appliance
from appliance.web import acme, api, errors, hostcheck, ra
from appliance.web.errors import ApiError
from appliance.web.health import ServiceHealth

log = logs.get("web")
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
RATE_LIMITED = ("/1.0/sign", "/1.0/renew")
# A refused oversized body is read and dropped up to this size: gunicorn keeps the connection
# alive but closes it, unannounced, when more than 64 KiB of a body is left unread, so the
# client's next request on that connection would fail. Larger bodies just lose the connection.
DRAIN_MAX_BYTES = 1_048_576


class RateLimiter:
    """A token bucket per client address (per worker process)."""

    def __init__(self, per_minute: int) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return False
            self._buckets[client] = (tokens - 1, now)
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            return True


def create_app(appliance: Appliance) -> Flask:
    svc = appliance.settings.config.service
    app = Flask("appliance")
    app.config.update(MAX_CONTENT_LENGTH=svc.max_request_bytes, JSON_SORT_KEYS=False,
                      PROPAGATE_EXCEPTIONS=False, TRAP_HTTP_EXCEPTIONS=False)
    app.extensions["appliance"] = appliance
    _fips_power_on(appliance)  # before checkpoints: its record must not need the audit key
    appliance.enable_service_checkpoints()
    hostcheck.install(app, svc)
    # Per worker: create_app runs after the fork.
    app.extensions["health"] = ServiceHealth.start_for(appliance)
    issuer = Issuer(appliance)
    app.extensions["issuer"] = issuer
    # In every worker: a worker that starts may be replacing one killed mid-request.
    sweeper = ReservationSweeper(issuer)
    sweeper.start()
    appliance.on_close(sweeper.stop)
    app.extensions["acme"] = AcmeService(appliance, issuer)
    limiter = RateLimiter(svc.rate_limit_per_minute)
    app.extensions["rate_limiter"] = limiter

    @app.before_request
    def _limits() -> None:
        if request.path in RATE_LIMITED and not limiter.allow(request.remote_addr or "?"):
            raise ApiError(429, "rate_limited", "too many requests; slow down")

    @app.after_request
    def _headers(response: Any) -> Any:
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        response.headers.pop("Server", None)
        if response.status_code == 503:
            # Every refusal of ours (database, token, deadline) says when to come back.
            response.headers.setdefault("Retry-After", str(svc.retry_after_seconds))
        if response.status_code == 413:
            _drain(request.environ.get("wsgi.input"), request.content_length or 0)
        return response

    errors.install(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(api.ops_bp)
    app.register_blueprint(acme.bp)
    app.register_blueprint(ra.bp)
    return app


def _fips_power_on(appliance: Appliance) -> None:
    """FIPS mode: this worker's power-on self-tests before it answers (recorded, so the
    newest run of the node is this one); a failure leaves the worker up in the error state,
    answering 503 ``fips_error`` and saying so on /1.0/health."""
    if not appliance.settings.config.fips.enabled:
        return
    try:
        appliance.signing_pool()
    except FipsError:
        pass  # the error state was entered (and the run audited): this worker answers 503
    except ApplianceError as exc:  # token or database away: the first signing tries again
        log.warning("FIPS power-on self-tests could not run yet",
                    extra={"fault": type(exc).__name__})


def _drain(stream: Any, announced: int) -> None:
    if stream is None or announced > DRAIN_MAX_BYTES:
        return
    with contextlib.suppress(OSError):  # a client gone mid-body: nothing left to keep
        while announced > 0:
            chunk = stream.read(min(announced, 65536))
            if not chunk:
                return
            announced -= len(chunk)
