"""The plain-HTTP listener for relying parties: OCSP, CA certificates and CRLs.

A bare WSGI function, not Flask: this path only looks bytes up. ``/ocsp`` and
``/ocsp/<base64>`` go to the OCSP responder first (``appliance.ocsp.responder``),
``/metrics`` is its Prometheus text.
"""

from __future__ import annotations

import base64
import re
import textwrap
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import select

from appliance.ca import crl_points
from appliance.ocsp.responder import Responder
from appliance.ra.proxy import PublicProxy
from appliance.runtime import Appliance
from appliance.store.models import Authority, Crl

StartResponse = Callable[[str, list[tuple[str, str]]], Any]
_CA = re.compile(r"^/ca/([A-Za-z0-9][A-Za-z0-9._-]{0,63})\.(crt|pem)$")
_CRL = re.compile(r"^/crl/([A-Za-z0-9][A-Za-z0-9._-]{0,63})\.crl$")
# A shard of a sharded CRL (revocation.crl_shards): digits only, at most 4 of them.
_CRL_SHARD = re.compile(r"^/crl/([A-Za-z0-9][A-Za-z0-9._-]{0,63})/(0|[1-9][0-9]{0,3})\.crl$")
MAX_PROXIED_REQUEST = 8192
_REASONS = {200: "OK", 304: "Not Modified", 400: "Bad Request", 404: "Not Found",
            405: "Method Not Allowed", 413: "Content Too Large", 502: "Bad Gateway",
            503: "Service Unavailable"}


def make_app(appliance: Appliance, ocsp: Responder | None = None
             ) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    ocsp = ocsp or Responder(appliance)
    # An RA node signs no OCSP response or CRL: those are its upstream CA's (ra/proxy.py).
    proxy = PublicProxy(appliance) if appliance.settings.config.role == "ra" else None

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        path = environ.get("PATH_INFO", "")
        if proxy is not None and (is_ocsp(path) or path.startswith("/crl/")):
            return _proxied(proxy, environ, start_response, method, path)
        if is_ocsp(path):
            return ocsp(environ, start_response)  # first: the hot path of this listener
        if path == "/metrics" and method == "GET":
            return _send(start_response, "200 OK", ocsp.metrics_text().encode(),
                         "text/plain; version=0.0.4")
        if ocsp.fips_watch is not None and ocsp.fips_watch.failed():
            # the FIPS error state: no CRL, no CA certificate, and /health says so
            return _send(start_response, "503 Service Unavailable", b"fips_error\n",
                         "text/plain", [("Retry-After", "60")])
        if method not in ("GET", "HEAD"):
            return _send(start_response, "405 Method Not Allowed", b"", "text/plain",
                         [("Allow", "GET, HEAD")])
        if path == "/health":
            if not ocsp.health():
                return _send(start_response, "503 Service Unavailable", b"database\n",
                             "text/plain")
            return _send(start_response, "200 OK", b"ok\n", "text/plain")
        m = _CA.match(path)
        if m:
            with appliance.db.sessions() as db:
                row = db.scalars(select(Authority).where(Authority.name == m.group(1))).first()
                der = row.certificate_der if row is not None else None
            if der is None:
                return _send(start_response, "404 Not Found", b"", "text/plain")
            if m.group(2) == "pem":
                b64 = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
                pem = f"-----BEGIN CERTIFICATE-----\n{b64}\n-----END CERTIFICATE-----\n"
                return _send(start_response, "200 OK", pem.encode(), "application/x-pem-file")
            return _send(start_response, "200 OK", der, "application/pkix-cert")
        m = _CRL.match(path) or _CRL_SHARD.match(path)
        if m:
            shard = int(m.group(2)) if m.re is _CRL_SHARD else None
            if shard is not None and shard > crl_points.MAX_SHARD:
                return _send(start_response, "404 Not Found", b"", "text/plain")
            data = _newest_crl(appliance, m.group(1), shard)
            if data is None:
                return _send(start_response, "404 Not Found", b"", "text/plain")
            return _send(start_response, "200 OK", data, "application/pkix-crl")
        return _send(start_response, "404 Not Found", b"", "text/plain")

    return app


def _newest_crl(appliance: Appliance, authority: str, shard: int | None) -> bytes | None:
    """The newest CRL of that scope: ``/crl/<ca>.crl`` is only ever the unsharded CRL
    (shard NULL), ``/crl/<ca>/<k>.crl`` only shard k's."""
    with appliance.db.sessions() as db:
        ca_id = db.scalars(select(Authority.id).where(Authority.name == authority)).first()
        if ca_id is None:
            return None
        scope = Crl.shard.is_(None) if shard is None else Crl.shard == shard
        der = db.scalars(select(Crl.der).where(Crl.authority_id == ca_id, scope)
                         .order_by(Crl.number.desc()).limit(1)).first()
        return bytes(der) if der is not None else None


def is_ocsp(path: str) -> bool:
    return path.startswith("/ocsp") and (len(path) == 5 or path[5] == "/")


def _proxied(proxy: PublicProxy, environ: dict[str, Any], start_response: StartResponse,
             method: str, path: str) -> Iterable[bytes]:
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    stream = environ.get("wsgi.input")
    body = stream.read(min(length, MAX_PROXIED_REQUEST + 1)) if stream and length > 0 else b""
    answer = proxy.handle(method, path, body, environ.get("CONTENT_TYPE"))
    headers = [*answer.headers, ("Content-Length", str(len(answer.body))),
               ("X-Content-Type-Options", "nosniff")]
    start_response(f"{answer.status} {_REASONS.get(answer.status, 'Status')}", headers)
    return [b"" if method == "HEAD" else answer.body]


def _send(start_response: StartResponse, status: str, data: bytes, ctype: str,
          extra: list[tuple[str, str]] | None = None) -> Iterable[bytes]:
    headers = [("Content-Type", ctype), ("Content-Length", str(len(data))),
               ("X-Content-Type-Options", "nosniff"), *(extra or [])]
    start_response(status, headers)
    return [data]
