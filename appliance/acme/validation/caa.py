"""CAA (RFC 8659, with RFC 8657's ``accounturi`` and ``validationmethods``), checked fail-closed.

Run after a DNS name's challenge passed, when the CA is configured with the issuer
domain names it answers to; a lookup that gets no answer refuses rather than allows.
"""

from __future__ import annotations

import dns.exception
import dns.name
import dns.resolver

from appliance.acme.validation.deadline import Deadline
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.resolve import describe_resolvers, dns_resolver
from appliance.acme.validation.settings import ValidationSettings

# Tags whose meaning is known (none of the others restricts issuance); an unknown tag with
# the critical flag forbids issuance (RFC 8659 §4.1).
_CAA_KNOWN_TAGS = frozenset({"issue", "issuewild", "iodef", "issuemail", "issuevmc",
                             "contactemail", "contactphone"})
_CAA_CRITICAL = 0x80


def _caa_records(resolver: dns.resolver.Resolver, qname: str, settings: ValidationSettings,
                 deadline: Deadline) -> list[tuple[int, str, str]]:
    """(flags, tag, value) of the CAA RRset at ``qname``; [] for none or NXDOMAIN.
    A failure to get an answer raises: CAA is checked fail-closed."""
    doing = f"looking up CAA {qname} via {describe_resolvers(settings)}"
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


def check_caa(name: str, challenge_type: str, account_uri: str | None,
              settings: ValidationSettings, deadline: Deadline) -> str:
    """RFC 8659 §3: the relevant RRset is the first non-empty one climbing from the name
    towards the top-level domain. Returns what decided, for the audit log."""
    wildcard = name.startswith("*.")
    fqdn = name.removeprefix("*.")
    resolver = dns_resolver(settings)
    via = describe_resolvers(settings)
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

