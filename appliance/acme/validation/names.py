"""Which identifiers may be validated, and how: the name syntax every network step relies on.

The identifier ends up in a URL, a Host header, SNI and a DNS query, so it is normalised
and held to LDH syntax (RFC 1123 labels) once, here, before any of them is built.
"""

from __future__ import annotations

import ipaddress
import re

from appliance.acme.validation.errors import ValidationError

#: One DNS label in LDH syntax, lower case (names are lowered before matching).
LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def check_identifier(challenge_type: str, identifier_type: str,
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
    if not name or len(name) > 253 or not all(LABEL.match(lbl) for lbl in name.split(".")):
        raise ValidationError("malformed", f"{identifier!r} is not a valid DNS name")
    return "dns", ("*." + name) if wildcard else name

