"""Name resolution for validators: the configured resolvers, or the system's, within the deadline.

Names are resolved once (through the configured resolvers when given, so tests and
split-horizon deployments control the answer); callers then connect to the resolved
address while keeping the name for the ``Host`` header and SNI.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from appliance.acme.validation.deadline import Deadline
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.settings import ValidationSettings, parse_resolver


def dns_resolver(settings: ValidationSettings) -> dns.resolver.Resolver:
    """The configured resolvers, or the host's resolv.conf for TXT lookups."""
    if not settings.resolvers:
        try:
            return dns.resolver.Resolver()
        except dns.exception.DNSException as exc:
            raise ValidationError("dns", f"no usable system DNS configuration: {exc}") from exc
    resolver = dns.resolver.Resolver(configure=False)
    servers: list[str | dns.nameserver.Nameserver] = []
    for entry in settings.resolvers:
        address, port = parse_resolver(entry)
        servers.append(dns.nameserver.Do53Nameserver(address, port))
    resolver.nameservers = servers
    return resolver


def describe_resolvers(settings: ValidationSettings) -> str:
    return ", ".join(settings.resolvers) if settings.resolvers else "the system resolver"


def query(resolver: dns.resolver.Resolver, qname: str, rdtype: str,
          settings: ValidationSettings, deadline: Deadline) -> tuple[list[str], bool]:
    """Records of one type as text, and whether the name does not exist (NXDOMAIN).

    "No records" is a normal answer here; only failures to get *an* answer raise.
    """
    doing = f"looking up {rdtype} {qname} via {describe_resolvers(settings)}"
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


def resolve_addresses(name: str, settings: ValidationSettings,
                      deadline: Deadline) -> list[str]:
    """IP addresses for *name*, IPv6 first (as Let's Encrypt does), IPv4 as fallback."""
    try:
        return [str(ipaddress.ip_address(name))]
    except ValueError:
        pass
    if settings.resolvers:
        resolver = dns_resolver(settings)
        v6, nx6 = query(resolver, name, "AAAA", settings, deadline)
        v4, nx4 = query(resolver, name, "A", settings, deadline)
        addresses = v6 + v4
        if not addresses:
            why = "NXDOMAIN" if nx6 and nx4 else "no A or AAAA records"
            raise ValidationError(
                "dns", f"cannot resolve {name} via {describe_resolvers(settings)}: {why}"
            )
        return addresses
    return _getaddrinfo(name, deadline)


def _getaddrinfo(name: str, deadline: Deadline) -> list[str]:
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

