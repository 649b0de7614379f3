"""Connections to the applicant's host: TCP to a resolved address, then TLS without verification.

We connect the socket ourselves (no proxy from the environment: ``HTTP_PROXY`` would
otherwise let the CA's own network settings decide *who* answers the challenge) and
fall back between addresses only when nothing answered.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

from appliance.acme.validation.deadline import Deadline, Watchdog
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.resolve import resolve_addresses
from appliance.acme.validation.settings import ValidationSettings


def format_host(host: str) -> str:
    """Host as it appears in a URL or Host header: IPv6 literals in brackets."""
    return f"[{host}]" if ":" in host else host


def connect(host: str, port: int, settings: ValidationSettings,
            deadline: Deadline) -> tuple[socket.socket, str]:
    """TCP-connect to the first reachable address of *host*; (socket, address).

    Falls back to the next address only on connection failure (refused, unreachable,
    connect timeout), never after something answered, so a wrong answer on IPv6 is not
    masked by a right one on IPv4.
    """
    addresses = resolve_addresses(host, settings, deadline)
    errors: list[str] = []
    for address in addresses:
        where = f"{format_host(address)}:{port}"
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



def wrap_tls(sock: socket.socket, server_name: str | None, alpn: list[str] | None,
             deadline: Deadline, what: str, watch: Watchdog) -> ssl.SSLSocket:
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

