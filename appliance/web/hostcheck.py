"""Refuse API requests addressed to a host this node is not configured as.

The URLs the API hands out come from ``service.external_url``, so a forged ``Host`` can no
longer steer them; refusing it anyway, first thing, keeps a misrouted or DNS-rebinding
request from reaching any handler (no token is redeemed, no nonce, no database read) and
makes a misconfigured proxy or client visible at once as a clear 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from appliance import hosts
from appliance.acme.problems import AcmeProblem
from appliance.config import ServiceConfig
from appliance.web.errors import body

__all__ = ["PROBES", "install", "refusal"]

# Load balancers, orchestrators and Prometheus ask for these by address (Host: 10.0.0.7:8443);
# they build no URL, redeem nothing and read no request data, so they answer any Host.
PROBES = frozenset({"/1.0/health", "/1.0/ready", "/metrics"})


def refusal(environ: Mapping[str, Any], accepted: frozenset[hosts.Authority]) -> str | None:
    """Why this request's Host (or absolute-form target) is not one of ``accepted``."""
    raw = environ.get("HTTP_HOST")
    target = str(environ.get("RAW_URI") or environ.get("REQUEST_URI") or "")
    if not target.startswith("/") and "://" in target:
        # absolute-form (RFC 9112 §3.2.2): its authority is the host asked for; a Host that
        # disagrees with it is refused as well (a proxy must rewrite Host to match)
        authority = urlsplit(target).netloc
        if _refused(authority, accepted):
            return f"the request target names host {authority[:80]!r}, which this API does " \
                   "not answer to"
    if raw is None:
        if environ.get("SERVER_PROTOCOL") == "HTTP/1.0":
            return None  # HTTP/1.0 need not send one; the URLs we build do not depend on it
        return "the request has no Host header (required in HTTP/1.1)"
    if _refused(str(raw), accepted):
        return f"Host {str(raw)[:80]!r} is not a name this API answers to (service.allowed_hosts)"
    return None


def _refused(text: str, accepted: frozenset[hosts.Authority]) -> bool:
    try:
        return hosts.parse(text) not in accepted
    except hosts.HostError:
        return True


def install(app: Flask, svc: ServiceConfig) -> None:
    """The check as the application's first ``before_request``: its answer is the only
    work a refused request gets (an ACME problem document under /acme/, else the API's JSON
    error)."""
    accepted = svc.accepted_hosts()

    @app.before_request
    def _host() -> Response | None:
        if request.path in PROBES:
            return None
        why = refusal(request.environ, accepted)
        if why is None:
            return None
        g.host_refused = True  # nor a nonce made for it (appliance.web.acme)
        if request.path.startswith("/acme/"):
            doc = AcmeProblem("malformed", why, status=400).document()
            return Response(json.dumps(doc), 400, mimetype="application/problem+json")
        return Response(json.dumps(body(400, "bad_host", why)), 400,
                        mimetype="application/json")

    app.before_request_funcs.setdefault(None, []).sort(key=lambda f: f is not _host)
