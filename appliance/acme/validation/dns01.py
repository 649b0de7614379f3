"""dns-01 (RFC 8555 §8.4): a TXT record at ``_acme-challenge.<name>`` holds a digest."""

from __future__ import annotations

import base64
import hashlib

from appliance.acme.validation.deadline import Deadline
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.resolve import describe_resolvers, dns_resolver, query
from appliance.acme.validation.settings import ValidationSettings


def dns01_txt_value(key_authorization: str) -> str:
    """RFC 8555 §8.4: base64url(SHA-256(key authorization)) without padding."""
    digest = hashlib.sha256(key_authorization.encode("utf-8")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")



def validate_dns01(name: str, key_authz: str, settings: ValidationSettings,
                   deadline: Deadline) -> str:
    """RFC 8555 §8.4: a TXT record at ``_acme-challenge.<name>`` holds the digest."""
    base = name.removeprefix("*.")  # a wildcard is proven at its base name (§8.4)
    qname = f"_acme-challenge.{base}"
    expected = dns01_txt_value(key_authz)
    resolver = dns_resolver(settings)
    values, nxdomain = query(resolver, qname, "TXT", settings, deadline)
    via = describe_resolvers(settings)
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

