"""ACME identifiers (RFC 8555 §7.1.3, RFC 8738): bounded, normalised, and as policy names."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from appliance import policy
from appliance.acme.problems import AcmeProblem, subproblem

MAX_IDENTIFIERS = 100


@dataclass(frozen=True)
class Identifier:
    type: str  # dns | ip
    value: str  # normalised: lowercase A-label (wildcard kept), or canonical IP text

    @property
    def wildcard(self) -> bool:
        return self.type == "dns" and self.value.startswith("*.")

    @property
    def base(self) -> str:
        """The name the authorization validates (``*.`` stripped)."""
        return self.value[2:] if self.wildcard else self.value

    def json(self) -> dict[str, str]:
        return {"type": self.type, "value": self.value}

    def names(self) -> policy.Names:
        return policy.Names.from_sans([self.value])


def parse_one(item: Any) -> Identifier:
    if not isinstance(item, dict) or set(item) - {"type", "value"}:
        raise AcmeProblem("malformed", "an identifier is {\"type\", \"value\"}")
    kind, value = item.get("type"), item.get("value")
    if not isinstance(value, str) or not 1 <= len(value) <= 253:
        raise AcmeProblem("malformed", "an identifier value is a string of 1 to 253 characters")
    if kind == "dns":
        if not value.isascii():
            # RFC 8555 §7.1.4: internationalised names are sent as A-labels ("xn--…").
            detail = f"{value!r} is not ASCII: send internationalised names as A-labels (xn--)"
            raise AcmeProblem("rejectedIdentifier", detail,
                              subproblems=[subproblem("malformed", detail, item)])
        try:
            return Identifier("dns", str(policy.parse_dns_name(value)))
        except policy.MalformedName as exc:
            raise AcmeProblem("rejectedIdentifier", f"{value!r} is not a valid DNS name: {exc}",
                              subproblems=[subproblem("malformed", str(exc), item)]) from None
    if kind == "ip":
        try:
            return Identifier("ip", str(ipaddress.ip_address(value)))
        except ValueError:
            raise AcmeProblem("malformed", f"{value!r} is not an IP address") from None
    raise AcmeProblem("unsupportedIdentifier", f"identifier type {kind!r} is not supported "
                      "(dns, ip)")


def parse_list(items: Any) -> list[Identifier]:
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_IDENTIFIERS:
        raise AcmeProblem("malformed", f"identifiers must be a list of 1 to {MAX_IDENTIFIERS}")
    out: list[Identifier] = []
    for item in items:
        ident = parse_one(item)
        if ident not in out:
            out.append(ident)
    return out
