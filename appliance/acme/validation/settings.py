"""Where and how long validators look: ports, resolvers, the time bound and CAA identities.

Checked on construction, so a typo in the configuration fails at startup rather than
at the first challenge.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from appliance.acme.validation.names import LABEL


def parse_resolver(entry: str) -> tuple[str, int]:
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
            parse_resolver(entry)
        if isinstance(self.caa_identities, str):
            raise ValueError("caa_identities must be a tuple of strings, not a string")
        for ident in self.caa_identities:
            if not 0 < len(ident) <= 253 or not all(
                    LABEL.match(lbl) for lbl in ident.lower().removesuffix(".").split(".")):
                raise ValueError(f"CAA identity {ident!r} is not a domain name")

