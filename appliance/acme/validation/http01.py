"""http-01 (RFC 8555 §8.3): GET the token URL from the applicant's host, bounded redirects.

HTTP goes through :mod:`http.client` on a socket connected by :mod:`.connect`, with a
bounded body and https redirects followed without certificate verification (the RFC
says the server SHOULD NOT validate it).
"""

from __future__ import annotations

import http.client
import ipaddress
import ssl
import urllib.parse

from appliance.acme.validation.connect import connect, format_host, wrap_tls
from appliance.acme.validation.deadline import Deadline, watchdog
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.names import LABEL
from appliance.acme.validation.settings import ValidationSettings

#: The most of an http-01 response body we read; a key authorization is ~90 bytes and
#: reading an unbounded body would let the applicant make us buffer anything.
MAX_HTTP_BODY = 8192
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "appliance-acme-validator/1"


def validate_http01(kind: str, name: str, token: str, key_authz: str,
                    settings: ValidationSettings, deadline: Deadline) -> str:
    """RFC 8555 §8.3: GET the token URL, following a bounded number of redirects."""
    url = (f"http://{format_host(name)}"
           f"{'' if settings.http_port == 80 else f':{settings.http_port}'}"
           f"/.well-known/acme-challenge/{token}")
    hops: list[str] = []
    for _ in range(settings.max_redirects + 1):
        status, location, body, address = _http_get(url, settings, deadline)
        hops.append(f"{url} from {address}")
        if status in REDIRECT_STATUSES:
            if not location:
                raise ValidationError(
                    "unauthorized", f"{url} (from {address}) answered {status} without Location"
                )
            url = _redirect_target(url, location, settings)
            continue
        if status != 200:
            raise ValidationError(
                "unauthorized", f"{url} (from {address}) answered HTTP {status}, not 200"
                + (f" (after redirects: {' -> '.join(hops[:-1])})" if len(hops) > 1 else "")
            )
        if len(body) > MAX_HTTP_BODY:
            raise ValidationError(
                "incorrectResponse",
                f"{url} (from {address}): body larger than {MAX_HTTP_BODY} bytes",
            )
        # RFC 8555 §8.3: "after stripping any trailing whitespace".
        got = body.rstrip()
        if got != key_authz.encode("utf-8"):
            shown = got[:100].decode("utf-8", "replace")
            raise ValidationError(
                "incorrectResponse",
                f"{url} (from {address}): body {shown!r} is not the key authorization "
                f"{key_authz!r}",
            )
        return " -> ".join(hops)
    raise ValidationError(
        "connection",
        f"more than {settings.max_redirects} redirects starting at {hops[0].split(' from ')[0]}",
    )


def _redirect_target(current: str, location: str, settings: ValidationSettings) -> str:
    """Where a redirect leads, if RFC 8555 §8.3 lets us follow it.

    Only http/https on their standard ports (or the configured override ports, for
    tests) are followed: other ports would turn the CA into a port scanner and let one
    tenant on a shared host answer for another.
    """
    try:
        target = urllib.parse.urljoin(current, location.strip())
        parts = urllib.parse.urlsplit(target)
        port = parts.port
    except ValueError as exc:
        raise ValidationError(
            "connection", f"{current} redirected to an invalid URL {location!r}: {exc}"
        ) from exc
    allowed = {"http": {80, settings.http_port}, "https": {443, settings.tls_alpn_port}}
    if parts.scheme not in allowed:
        raise ValidationError(
            "connection", f"{current} redirected to {target!r}: only http and https allowed"
        )
    effective = port if port is not None else (80 if parts.scheme == "http" else 443)
    if effective not in allowed[parts.scheme]:
        raise ValidationError(
            "connection",
            f"{current} redirected to {target!r}: port {effective} not allowed for "
            f"{parts.scheme} (allowed: {', '.join(map(str, sorted(allowed[parts.scheme])))})",
        )
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not host or len(host) > 253 or not all(LABEL.match(x) for x in host.split(".")):
            raise ValidationError(
                "connection", f"{current} redirected to {target!r}: invalid host"
            ) from None
    return target


def _http_get(url: str, settings: ValidationSettings,
              deadline: Deadline) -> tuple[int, str | None, bytes, str]:
    """One GET without following redirects: (status, Location, body prefix, address)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    default_port = 443 if https else 80
    port = parts.port or default_port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = format_host(host) + ("" if port == default_port else f":{port}")

    sock, address = connect(host, port, settings, deadline)
    where = f"{format_host(address)}:{port}"
    with watchdog(sock, deadline) as watch:
        try:
            if https:
                sock = watch.sock = wrap_tls(sock, host, None, deadline,
                                             f"{url} (from {where})", watch)
            conn = http.client.HTTPConnection(address, port)
            conn.sock = sock  # already connected: http.client must not reconnect
            sock.settimeout(deadline.remaining(f"sending GET {url} to {where}"))
            conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host_header)
            conn.putheader("User-Agent", USER_AGENT)
            conn.putheader("Accept", "*/*")
            conn.putheader("Connection", "close")
            conn.endheaders()
            sock.settimeout(deadline.remaining(f"waiting for {url} from {where}"))
            response = conn.getresponse()
            location = response.getheader("Location")
            body = b""
            if response.status == 200:
                sock.settimeout(deadline.remaining(f"reading {url} from {where}"))
                body = response.read(MAX_HTTP_BODY + 1)
            status = response.status
            if watch.fired:
                raise deadline.expired(f"fetching {url} from {where}")
            return status, location, body, address
        except ValidationError:
            raise
        except OSError as exc:
            if watch.fired or isinstance(exc, TimeoutError):
                raise deadline.expired(f"fetching {url} from {where}") from None
            if isinstance(exc, ssl.SSLError):
                raise ValidationError("tls", f"{url} (from {where}): TLS error: {exc}") from exc
            raise ValidationError(
                "connection", f"{url} (from {where}): {type(exc).__name__}: {exc}"
            ) from exc
        except (http.client.HTTPException, ValueError) as exc:
            if watch.fired:
                raise deadline.expired(f"fetching {url} from {where}") from None
            raise ValidationError(
                "connection", f"{url} (from {where}): bad HTTP response: "
                f"{type(exc).__name__}: {exc}"
            ) from exc

