"""Host names as the API compares them: the configured external URL and the Host header.

One parser for both sides, so that what the configuration accepts and what a request
carries are compared in the same normal form: the host lowercased (DNS names are case
insensitive; an IPv6 literal in its compressed form, without brackets) and an explicit port
(none written means the scheme's default, 443 for the HTTPS API), so ``CA.example.com`` and
``ca.example.com:443`` are one name and ``[::1]:8443`` matches ``[0:0::1]:8443``.
"""

from __future__ import annotations

import ipaddress
import re

__all__ = ["Authority", "HostError", "parse", "render"]

Authority = tuple[str, int]  # (normalised host, port)
_DNS = re.compile(r"^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
                  r"(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$")


class HostError(ValueError):
    """Not a host[:port] this API could be reached at."""


def parse(text: str, default_port: int = 443) -> Authority:
    """``name``, ``name:port``, ``1.2.3.4[:port]`` or ``[v6][:port]``, normalised."""
    if not text or len(text) > 300 or text != text.strip():
        raise HostError(f"{text[:80]!r} is not a host name")
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise HostError(f"{text[:80]!r}: unclosed IPv6 bracket")
        host, rest = text[1:end], text[end + 1:]
        try:
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            raise HostError(f"{text[:80]!r}: not an IPv6 address in brackets") from None
    else:
        host, sep, rest = text.partition(":")
        rest = sep + rest
        host = host.lower()
        try:
            host = str(ipaddress.IPv4Address(host))
        except ValueError:
            if not _DNS.match(host) or host.replace(".", "").isdigit():
                raise HostError(f"{text[:80]!r} is not a host name") from None
    if not rest:
        return host, default_port
    if not re.fullmatch(r":\d{1,5}", rest) or not 1 <= int(rest[1:]) <= 65535:
        raise HostError(f"{text[:80]!r}: the port must be 1 to 65535")
    return host, int(rest[1:])


def render(authority: Authority, default_port: int = 443) -> str:
    """The authority as written in a URL (the default port left out)."""
    host, port = authority
    shown = f"[{host}]" if ":" in host else host
    return shown if port == default_port else f"{shown}:{port}"
