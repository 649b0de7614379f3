"""ACME challenge validation: http-01, dns-01 (RFC 8555 §8.3, §8.4) and tls-alpn-01 (RFC 8737).

The validators talk to whatever the applicant points a name at, so they treat every
byte from the network as hostile:

* Every network operation is bounded by one deadline (``ValidationSettings.timeout``)
  for the whole attempt, including redirects and name resolution, so a slow or silent
  peer cannot hold a worker longer than that.
* Every failure becomes a :class:`ValidationError` carrying the RFC 8555 problem type
  suffix, so the ACME layer can put it in the challenge's ``error`` without guessing.
* HTTP goes through :mod:`http.client` on a socket we connect ourselves: no proxy from
  the environment (``HTTP_PROXY`` would otherwise let the CA's own network settings
  decide *who* answers the challenge) and no certificate verification on https
  redirects (RFC 8555 §8.3: the server SHOULD NOT validate the certificate).
* Names are resolved once (through the configured resolvers when given, so tests and
  split-horizon deployments control the answer) and we connect to the resolved
  address while keeping the name for the ``Host`` header and SNI.

Identifier types are ``dns`` and ``ip`` (RFC 8738).
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

__all__ = [
    "ValidationError",
    "ValidationSettings",
    "dns01_txt_value",
    "key_authorization",
    "validate",
]

#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: The ALPN protocol name of tls-alpn-01 (RFC 8737 §6.2).
ACME_TLS_ALPN = "acme-tls/1"
#: The most of an http-01 response body we read; a key authorization is ~90 bytes and
#: reading an unbounded body would let the applicant make us buffer anything.
MAX_HTTP_BODY = 8192
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
USER_AGENT = "appliance-acme-validator/1"

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


class ValidationError(Exception):
    """A challenge could not be validated.

    ``problem`` is the RFC 8555 §6.7 error type suffix ("connection", "dns",
    "unauthorized", "incorrectResponse", "tls" or "malformed") so the caller can build
    ``urn:ietf:params:acme:error:<problem>``; ``str(exc)`` names what was tried, because
    the applicant reads it to fix their setup.
    """

    def __init__(self, problem: str, message: str) -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message


def _parse_resolver(entry: str) -> tuple[str, int]:
    """Split ``ip``, ``ip:port`` or ``[ipv6]:port`` into (address, port); ValueError if bad."""
    text = entry.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ValueError(f"resolver {entry!r}: missing ']'")
        if rest and not rest.startswith(":"):
            raise ValueError(f"resolver {entry!r}: expected ':port' after ']'")
        port_text = rest[1:] if rest else "53"
    else:
        try:
            ipaddress.ip_address(text)
        except ValueError:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError(f"resolver {entry!r} is not an IP address") from None
        else:
            host, port_text = text, "53"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"resolver {entry!r}: {host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"resolver {entry!r}: bad port {port_text!r}")
    return str(address), int(port_text)


@dataclass(frozen=True)
class ValidationSettings:
    """Where and how long to look; checked on construction so a typo fails at startup.

    The port overrides exist for tests and for deployments where the CA validates
    through a port-mapping front end; production validation uses 80 and 443.
    """

    http_port: int = 80  # http-01 (RFC 8555 §8.3)
    tls_alpn_port: int = 443  # tls-alpn-01 (RFC 8737)
    resolvers: tuple[str, ...] = ()  # "ip" or "ip:port" ("[::1]:53"); empty = system resolver
    timeout: float = 10.0  # whole validation attempt bound, seconds
    max_redirects: int = 10  # http-01
    # Issuer domain names this CA answers to in CAA records (RFC 8659); empty: no CAA check.
    caa_identities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("http_port", "tls_alpn_port"):
            port = getattr(self, name)
            if not isinstance(port, int) or not 0 < port < 65536:
                raise ValueError(f"{name} must be a TCP port (1-65535), got {port!r}")
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, got {self.timeout!r}")
        if self.max_redirects < 0:
            raise ValueError(f"max_redirects must be >= 0, got {self.max_redirects!r}")
        if isinstance(self.resolvers, str):
            raise ValueError("resolvers must be a tuple of strings, not a string")
        for entry in self.resolvers:
            _parse_resolver(entry)
        if isinstance(self.caa_identities, str):
            raise ValueError("caa_identities must be a tuple of strings, not a string")
        for ident in self.caa_identities:
            if not 0 < len(ident) <= 253 or not all(
                    _LABEL.match(lbl) for lbl in ident.lower().removesuffix(".").split(".")):
                raise ValueError(f"CAA identity {ident!r} is not a domain name")


def key_authorization(token: str, account_jwk_thumbprint: str) -> str:
    """RFC 8555 §8.1: ``token || '.' || base64url(JWK thumbprint)``."""
    return f"{token}.{account_jwk_thumbprint}"


def dns01_txt_value(key_authorization: str) -> str:
    """RFC 8555 §8.4: base64url(SHA-256(key authorization)) without padding."""
    digest = hashlib.sha256(key_authorization.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def validate(challenge_type: str, identifier_type: str, identifier: str, token: str,
             key_authorization: str, settings: ValidationSettings, *,
             account_uri: str | None = None) -> str:
    """Run one challenge; return what was checked, or raise :class:`ValidationError`.

    The return value is a short human description (URL and address, TXT name, TLS
    endpoint, CAA) meant for the audit log, so a later reader can see *what* vouched for
    the identifier. With ``settings.caa_identities``, a DNS name whose challenge passed
    must also be authorized by its CAA records (RFC 8659; ``accounturi`` and
    ``validationmethods`` of RFC 8657 are honoured, hence ``account_uri``).
    """
    deadline = _Deadline(settings.timeout)
    kind, name = _check_identifier(challenge_type, identifier_type, identifier)
    if challenge_type in ("http-01", "tls-alpn-01") and not _TOKEN.match(token):
        # The token goes into a URL path (http-01); RFC 8555 §8.1 makes it base64url.
        raise ValidationError("malformed", f"token {token!r} is not base64url")
    try:
        if challenge_type == "http-01":
            checked = _validate_http01(kind, name, token, key_authorization, settings,
                                       deadline)
        elif challenge_type == "dns-01":
            checked = _validate_dns01(name, key_authorization, settings, deadline)
        else:
            checked = _validate_tls_alpn01(kind, name, key_authorization, settings, deadline)
        if kind == "dns" and settings.caa_identities:
            checked += "; " + _check_caa(name, challenge_type, account_uri, settings,
                                         deadline)
        return checked
    except ValidationError:
        raise
    except (dns.exception.DNSException, socket.gaierror) as exc:
        # Backstop: the helpers map errors where they know the context; anything that
        # slips through is still reported as what it is, never as a 500.
        raise ValidationError("dns", f"{challenge_type} for {name}: DNS error: {exc}") from exc
    except ssl.SSLError as exc:
        raise ValidationError("tls", f"{challenge_type} for {name}: TLS error: {exc}") from exc
    except (OSError, http.client.HTTPException) as exc:
        raise ValidationError(
            "connection", f"{challenge_type} for {name}: network error: {exc}"
        ) from exc


# --------------------------------------------------------------------------- identifiers


def _check_identifier(challenge_type: str, identifier_type: str,
                      identifier: str) -> tuple[str, str]:
    """Normalise the identifier and refuse combinations RFC 8555/8738 do not allow.

    The name ends up in a URL, a Host header, SNI and a DNS query, so it is held to
    LDH syntax here rather than trusted to be what the order layer let through.
    """
    if challenge_type not in ("http-01", "dns-01", "tls-alpn-01"):
        raise ValidationError("malformed", f"unsupported challenge type {challenge_type!r}")
    if identifier_type == "ip":
        if challenge_type == "dns-01":
            raise ValidationError(
                "malformed", f"dns-01 cannot validate IP address {identifier!r} (RFC 8738 §7)"
            )
        try:
            address = ipaddress.ip_address(identifier)
        except ValueError:
            raise ValidationError(
                "malformed", f"{identifier!r} is not an IP address"
            ) from None
        if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
            raise ValidationError("malformed", f"{identifier!r}: scoped IPv6 address")
        return "ip", str(address)
    if identifier_type != "dns":
        raise ValidationError("malformed", f"unsupported identifier type {identifier_type!r}")
    name = identifier.lower().removesuffix(".")
    wildcard = name.startswith("*.")
    if wildcard:
        if challenge_type != "dns-01":
            raise ValidationError(
                "malformed",
                f"wildcard {identifier!r} can only be validated with dns-01 (RFC 8555 §7.1.3)",
            )
        name = name[2:]
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise ValidationError(
            "malformed", f"{identifier!r} is an IP address: use an 'ip' identifier (RFC 8738)"
        )
    if not name or len(name) > 253 or not all(_LABEL.match(lbl) for lbl in name.split(".")):
        raise ValidationError("malformed", f"{identifier!r} is not a valid DNS name")
    return "dns", ("*." + name) if wildcard else name


# --------------------------------------------------------------------------- deadline


class _Deadline:
    """One time budget for the whole attempt, shared by every step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def remaining(self, doing: str, problem: str = "connection") -> float:
        """Seconds left; raises a timeout ValidationError naming *doing* when none are."""
        left = self.left()
        if left <= 0:
            raise self.expired(doing, problem)
        return left

    def expired(self, doing: str, problem: str = "connection") -> ValidationError:
        return ValidationError(problem, f"timed out after {self.seconds:g}s {doing}")


class _Watchdog:
    """Shuts a socket down when the deadline passes.

    Socket timeouts bound each recv, not the sum: a peer dripping one byte per second
    into the status line would otherwise outlive the deadline. ``shutdown`` (not
    ``close``) is what wakes a recv blocked in another thread. ``sock`` is replaced by
    the TLS socket after a handshake (wrapping detaches the plain one).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        # The base-class method on purpose: SSLSocket.shutdown also drops its SSL
        # object, which would race with the thread still reading from it.
        with suppress(OSError):
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)


@contextmanager
def _watchdog(sock: socket.socket, deadline: _Deadline) -> Iterator[_Watchdog]:
    """Arm a :class:`_Watchdog` for the rest of the deadline; close the socket on exit."""
    watch = _Watchdog(sock)
    timer = threading.Timer(max(deadline.left(), 0.0), watch.fire)
    timer.daemon = True
    timer.start()
    try:
        yield watch
    finally:
        timer.cancel()
        watch.sock.close()


# --------------------------------------------------------------------------- DNS


def _dns_resolver(settings: ValidationSettings) -> dns.resolver.Resolver:
    """The configured resolvers, or the host's resolv.conf for TXT lookups."""
    if not settings.resolvers:
        try:
            return dns.resolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ValidationError("dns", f"no usable system DNS configuration: {exc}") from exc
    resolver = dns.resolver.Resolver(configure=False)
    servers: list[str | dns.nameserver.Nameserver] = []
    for entry in settings.resolvers:
        address, port = _parse_resolver(entry)
        servers.append(dns.nameserver.Do53Nameserver(address, port))
    resolver.nameservers = servers
    return resolver


def _describe_resolvers(settings: ValidationSettings) -> str:
    return ", ".join(settings.resolvers) if settings.resolvers else "the system resolver"


def _query(resolver: dns.resolver.Resolver, qname: str, rdtype: str,
           settings: ValidationSettings, deadline: _Deadline) -> tuple[list[str], bool]:
    """Records of one type as text, and whether the name does not exist (NXDOMAIN).

    "No records" is a normal answer here; only failures to get *an* answer raise.
    """
    doing = f"looking up {rdtype} {qname} via {_describe_resolvers(settings)}"
    lifetime = deadline.remaining(doing, "dns")
    try:
        answer = resolver.resolve(dns.name.from_text(qname), rdtype, lifetime=lifetime,
                                  search=False, raise_on_no_answer=False)
    except dns.resolver.NXDOMAIN:
        return [], True
    except dns.resolver.NoAnswer:
        return [], False
    except dns.resolver.LifetimeTimeout:
        raise deadline.expired(doing, "dns") from None
    except dns.resolver.NoNameservers as exc:
        raise ValidationError("dns", f"no nameserver answered {doing}: {exc}") from exc
    except dns.exception.DNSException as exc:
        raise ValidationError("dns", f"DNS error {doing}: {exc}") from exc
    if answer.rrset is None:
        return [], False
    if rdtype == "TXT":
        # RFC 8555 §8.4 values are one string, but a record split into several
        # character-strings means their concatenation (RFC 7208 §3.3 convention).
        return [b"".join(rd.strings).decode("utf-8", "replace") for rd in answer.rrset], False
    return [rd.to_text() for rd in answer.rrset], False


def _resolve_addresses(name: str, settings: ValidationSettings,
                       deadline: _Deadline) -> list[str]:
    """IP addresses for *name*, IPv6 first (as Let's Encrypt does), IPv4 as fallback."""
    try:
        return [str(ipaddress.ip_address(name))]
    except ValueError:
        pass
    if settings.resolvers:
        resolver = _dns_resolver(settings)
        v6, nx6 = _query(resolver, name, "AAAA", settings, deadline)
        v4, nx4 = _query(resolver, name, "A", settings, deadline)
        addresses = v6 + v4
        if not addresses:
            why = "NXDOMAIN" if nx6 and nx4 else "no A or AAAA records"
            raise ValidationError(
                "dns", f"cannot resolve {name} via {_describe_resolvers(settings)}: {why}"
            )
        return addresses
    return _getaddrinfo(name, deadline)


def _getaddrinfo(name: str, deadline: _Deadline) -> list[str]:
    """The system resolver, bounded by the deadline (getaddrinfo itself has no timeout).

    The lookup runs in a daemon thread we stop waiting for; it finishes on its own.
    """
    doing = f"resolving {name} with the system resolver"
    result: list[str] = []
    failure: list[BaseException] = []

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(name, None, type=socket.SOCK_STREAM)
            for info in infos:
                address = str(info[4][0]).split("%", 1)[0]
                if address not in result:
                    result.append(address)
        except Exception as exc:  # handed to the waiting thread
            failure.append(exc)

    thread = threading.Thread(target=lookup, name=f"acme-resolve-{name}", daemon=True)
    thread.start()
    thread.join(deadline.remaining(doing, "dns"))
    if thread.is_alive():
        raise deadline.expired(doing, "dns")
    if failure:
        exc = failure[0]
        raise ValidationError("dns", f"cannot resolve {name}: {exc}") from exc
    if not result:
        raise ValidationError("dns", f"cannot resolve {name}: no addresses")
    return result


# --------------------------------------------------------------------------- connections


def _format_host(host: str) -> str:
    """Host as it appears in a URL or Host header: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


def _connect(host: str, port: int, settings: ValidationSettings,
             deadline: _Deadline) -> tuple[socket.socket, str]:
    """TCP-connect to the first reachable address of *host*; (socket, address).

    Falls back to the next address only on connection failure (refused, unreachable,
    connect timeout), never after something answered, so a wrong answer on IPv6 is not
    masked by a right one on IPv4.
    """
    addresses = _resolve_addresses(host, settings, deadline)
    errors: list[str] = []
    for address in addresses:
        where = f"{_format_host(address)}:{port}"
        try:
            timeout = deadline.remaining(f"connecting to {where} for {host}")
        except ValidationError:
            if errors:
                break
            raise
        try:
            sock = socket.create_connection((address, port), timeout=timeout)
        except TimeoutError:
            errors.append(f"{where}: timed out")
        except ConnectionRefusedError:
            errors.append(f"{where}: connection refused")
        except OSError as exc:
            errors.append(f"{where}: {exc.strerror or exc}")
        else:
            return sock, address
    raise ValidationError("connection", f"cannot connect to {host}: " + "; ".join(errors))


# --------------------------------------------------------------------------- http-01


def _validate_http01(kind: str, name: str, token: str, key_authz: str,
                     settings: ValidationSettings, deadline: _Deadline) -> str:
    """RFC 8555 §8.3: GET the token URL, following a bounded number of redirects."""
    url = (f"http://{_format_host(name)}"
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
        if not host or len(host) > 253 or not all(_LABEL.match(x) for x in host.split(".")):
            raise ValidationError(
                "connection", f"{current} redirected to {target!r}: invalid host"
            ) from None
    return target


def _http_get(url: str, settings: ValidationSettings,
              deadline: _Deadline) -> tuple[int, str | None, bytes, str]:
    """One GET without following redirects: (status, Location, body prefix, address)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    https = parts.scheme == "https"
    default_port = 443 if https else 80
    port = parts.port or default_port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = _format_host(host) + ("" if port == default_port else f":{port}")

    sock, address = _connect(host, port, settings, deadline)
    where = f"{_format_host(address)}:{port}"
    with _watchdog(sock, deadline) as watch:
        try:
            if https:
                sock = watch.sock = _wrap_tls(sock, host, None, deadline,
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


def _wrap_tls(sock: socket.socket, server_name: str | None, alpn: list[str] | None,
              deadline: _Deadline, what: str, watch: _Watchdog) -> ssl.SSLSocket:
    """TLS handshake without certificate verification.

    Verification is off on purpose: RFC 8555 §8.3 says https redirects are followed
    without validating the certificate, and in tls-alpn-01 the self-signed certificate
    *is* the evidence we inspect.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # RFC 8737 §3
    if alpn:
        context.set_alpn_protocols(alpn)
    sni: str | None = server_name
    if sni is not None:
        try:
            ipaddress.ip_address(sni)
        except ValueError:
            pass
        else:
            sni = None  # RFC 6066 §3: literal IP addresses are not sent in SNI
    sock.settimeout(deadline.remaining(f"in the TLS handshake with {what}"))
    try:
        return context.wrap_socket(sock, server_hostname=sni)
    except ssl.SSLError as exc:
        if watch.fired:
            raise deadline.expired(f"in the TLS handshake with {what}") from None
        raise ValidationError("tls", f"TLS handshake with {what} failed: {exc}") from exc
    except TimeoutError:
        raise deadline.expired(f"in the TLS handshake with {what}") from None
    except OSError as exc:
        if watch.fired:
            raise deadline.expired(f"in the TLS handshake with {what}") from None
        raise ValidationError("tls", f"TLS handshake with {what} failed: {exc}") from exc


# --------------------------------------------------------------------------- dns-01


def _validate_dns01(name: str, key_authz: str, settings: ValidationSettings,
                    deadline: _Deadline) -> str:
    """RFC 8555 §8.4: a TXT record at ``_acme-challenge.<name>`` holds the digest."""
    base = name.removeprefix("*.")  # a wildcard is proven at its base name (§8.4)
    qname = f"_acme-challenge.{base}"
    expected = dns01_txt_value(key_authz)
    resolver = _dns_resolver(settings)
    values, nxdomain = _query(resolver, qname, "TXT", settings, deadline)
    via = _describe_resolvers(settings)
    if not values:
        why = "NXDOMAIN" if nxdomain else "no TXT records"
        raise ValidationError("dns", f"TXT {qname} via {via}: {why}")
    if expected not in values:
        shown = ", ".join(repr(v[:64]) for v in values[:5])
        more = f" and {len(values) - 5} more" if len(values) > 5 else ""
        raise ValidationError(
            "unauthorized",
            f"TXT {qname} via {via} holds {shown}{more}, not the expected {expected!r}",
        )
    return f"TXT {qname} via {via}"


# --------------------------------------------------------------------------- CAA (RFC 8659)

# Tags whose meaning is known (none of the others restricts issuance); an unknown tag with
# the critical flag forbids issuance (RFC 8659 §4.1).
_CAA_KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "issuevmc",
                             "contactemail", "contactphone"})
_CAA_CRITICAL = 0x80


def _caa_records(resolver: dns.resolver.Resolver, qname: str, settings: ValidationSettings,
                 deadline: _Deadline) -> list[tuple[int, str, str]]:
    """(flags, tag, value) of the CAA RRset at ``qname``; [] for none or NXDOMAIN.
    A failure to get an answer raises: CAA is checked fail-closed."""
    doing = f"looking up CAA {qname} via {_describe_resolvers(settings)}"
    try:
        answer = resolver.resolve(dns.name.from_text(qname), "CAA",
                                  lifetime=deadline.remaining(doing, "dns"), search=False,
                                  raise_on_no_answer=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.resolver.LifetimeTimeout:
        raise deadline.expired(doing, "dns") from None
    except dns.exception.DNSException as exc:
        raise ValidationError("dns", f"DNS error {doing}: {exc}") from exc
    if answer.rrset is None:
        return []
    return [(int(rd.flags), rd.tag.decode("ascii", "replace").lower(),
             rd.value.decode("utf-8", "replace")) for rd in answer.rrset]


def _caa_authorizes(value: str, identities: tuple[str, ...], challenge_type: str,
                    account_uri: str | None) -> bool:
    """Does one issue/issuewild value name this CA, with parameters that let this request
    through? ``accounturi`` must be this account's URL and ``validationmethods`` must list
    this challenge type (RFC 8657); other parameters are ignored."""
    issuer, _, rest = value.partition(";")
    issuer = issuer.strip().lower().removesuffix(".")
    if not issuer or issuer not in {i.lower().removesuffix(".") for i in identities}:
        return False
    for param in rest.split(";"):
        key, sep, val = param.strip().partition("=")
        key, val = key.strip().lower(), val.strip()
        if not key:
            continue
        if not sep:
            return False  # malformed: a property we cannot read authorizes nothing
        if key == "accounturi" and val != account_uri:
            return False
        if key == "validationmethods" and challenge_type not in {
                m.strip() for m in val.split(",")}:
            return False
    return True


def _check_caa(name: str, challenge_type: str, account_uri: str | None,
               settings: ValidationSettings, deadline: _Deadline) -> str:
    """RFC 8659 §3: the relevant RRset is the first non-empty one climbing from the name
    towards the top-level domain. Returns what decided, for the audit log."""
    wildcard = name.startswith("*.")
    fqdn = name.removeprefix("*.")
    resolver = _dns_resolver(settings)
    via = _describe_resolvers(settings)
    labels = fqdn.split(".")
    for i in range(len(labels)):
        node = ".".join(labels[i:])
        records = _caa_records(resolver, node, settings, deadline)
        if records:
            break
    else:
        return f"CAA: no records at {fqdn} or above via {via}"
    for flags, tag, value in records:
        if flags & _CAA_CRITICAL and tag not in _CAA_KNOWN_TAGS:
            raise ValidationError(
                "caa", f"CAA at {node} via {via} has a critical property this CA does not "
                f"understand ({tag} {value!r}): issuance for {name} is not allowed")
    tag = "issuewild" if wildcard and any(t == "issuewild" for _, t, _ in records) else "issue"
    values = [v for _, t, v in records if t == tag]
    if not values:
        return f"CAA at {node} via {via}: no {tag} property"
    for value in values:
        if _caa_authorizes(value, settings.caa_identities, challenge_type, account_uri):
            return f"CAA at {node} via {via}: {tag} {value!r}"
    shown = ", ".join(repr(v[:80]) for v in values[:5])
    raise ValidationError(
        "caa", f"CAA at {node} via {via} ({tag} {shown}) does not authorize this CA "
        f"({', '.join(settings.caa_identities)}) to issue for {name}"
        + (f" with {challenge_type} and this account" if any(
            ";" in v for v in values) else ""))


# --------------------------------------------------------------------------- tls-alpn-01


def _validate_tls_alpn01(kind: str, name: str, key_authz: str,
                         settings: ValidationSettings, deadline: _Deadline) -> str:
    """RFC 8737 §3: handshake with ALPN acme-tls/1, then inspect the self-signed cert."""
    port = settings.tls_alpn_port
    # RFC 8738 §6: an IP identifier is named in SNI by its reverse-DNS name.
    sni = ipaddress.ip_address(name).reverse_pointer if kind == "ip" else name
    sock, address = _connect(name, port, settings, deadline)
    where = f"{_format_host(address)}:{port}"
    what = f"{where} (SNI {sni})"
    with _watchdog(sock, deadline) as watch:
        tls = watch.sock = _wrap_tls(sock, sni, [ACME_TLS_ALPN], deadline, what, watch)
        negotiated = tls.selected_alpn_protocol()
        der = tls.getpeercert(binary_form=True)
    if negotiated != ACME_TLS_ALPN:
        raise ValidationError(
            "tls", f"{what} did not negotiate ALPN {ACME_TLS_ALPN!r} (got {negotiated!r})"
        )
    if not der:
        raise ValidationError("incorrectResponse", f"{what} presented no certificate")
    _check_acme_certificate(der, kind, name, key_authz, what)
    return f"tls-alpn-01 on {where} with SNI {sni}"


def _check_acme_certificate(der: bytes, kind: str, name: str, key_authz: str,
                            what: str) -> None:
    """The RFC 8737 §3 certificate checks: one SAN for exactly the identifier and a
    critical acmeIdentifier extension holding SHA-256(key authorization)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ValidationError(
            "incorrectResponse", f"{what}: unparseable certificate: {exc}"
        ) from exc
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValidationError(
            "incorrectResponse", f"{what}: certificate has no subjectAltName"
        ) from None
    names = list(san)
    want: x509.GeneralName
    if kind == "ip":
        want = x509.IPAddress(ipaddress.ip_address(name))
        ok = names == [want]
    else:
        want = x509.DNSName(name)
        ok = (len(names) == 1 and isinstance(names[0], x509.DNSName)
              and names[0].value.lower() == name)
    if not ok:
        shown = ", ".join(f"{type(n).__name__}:{n.value}" for n in names)
        raise ValidationError(
            "incorrectResponse",
            f"{what}: subjectAltName must be exactly {type(want).__name__}:{name}, "
            f"got [{shown}]",
        )
    try:
        ext = extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        raise ValidationError(
            "incorrectResponse", f"{what}: certificate has no acmeIdentifier extension"
        ) from None
    if not ext.critical:
        raise ValidationError(
            "incorrectResponse", f"{what}: the acmeIdentifier extension is not critical"
        )
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    # DER OCTET STRING (tag 0x04, length 32) around the digest (RFC 8737 §3).
    expected = b"\x04\x20" + hashlib.sha256(key_authz.encode("utf-8")).digest()
    if raw != expected:
        raise ValidationError(
            "incorrectResponse",
            f"{what}: acmeIdentifier is {raw.hex()!r}, expected {expected.hex()!r} "
            f"(OCTET STRING of SHA-256 of the key authorization)",
        )
