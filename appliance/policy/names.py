"""The names a request or certificate carries, in the form the policy engine judges.

Only parsing helpers from ``syntax`` are needed here, so the engine can import ``Names``
without a circle; the semantics are described in ``appliance.policy``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import NameOID

from appliance.policy.syntax import IPAddress, looks_like_uri


@dataclass(frozen=True)
class Names:
    """Every name a request or certificate asks for.

    ``other`` holds SANs of kinds the policy cannot express, as (kind, value) pairs, e.g.
    ``("otherName", "1.3.6.1.4.1.311.20.2.3")`` or ``("directoryName", "CN=x")``; a level
    with any rule refuses them.
    """

    dns: list[str] = field(default_factory=list)
    ip: list[IPAddress] = field(default_factory=list)
    email: list[str] = field(default_factory=list)
    uri: list[str] = field(default_factory=list)
    cn: str | None = None
    other: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def from_csr(cls, csr: x509.CertificateSigningRequest) -> Names:
        """The SANs and subject of ``csr`` (ValueError if its extensions do not parse)."""
        return cls._from(csr.subject, csr.extensions)

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> Names:
        """The SANs and subject of ``cert`` (ValueError if its extensions do not parse)."""
        return cls._from(cert.subject, cert.extensions)

    @classmethod
    def from_sans(cls, sans: Iterable[str], cn: str | None = None) -> Names:
        """Names from plain strings (ACME identifiers, template output), classified as:
        an IP address; a URI (``scheme://…`` or ``urn:``, ``mailto:``, ``tag:``, ``did:``);
        an email address if it has ``@``; otherwise a DNS name."""
        names = cls(cn=cn)
        for san in sans:
            try:
                names.ip.append(ipaddress.ip_address(san))
                continue
            except ValueError:
                pass
            if looks_like_uri(san):
                names.uri.append(san)
            elif "@" in san:
                names.email.append(san)
            else:
                names.dns.append(san)
        return names

    @classmethod
    def _from(cls, subject: x509.Name, extensions: x509.Extensions) -> Names:
        try:
            san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            general: list[x509.GeneralName] = []
        else:
            general = list(san)
        dns: list[str] = []
        ips: list[IPAddress] = []
        emails: list[str] = []
        uris: list[str] = []
        other: list[tuple[str, str]] = []
        for gn in general:
            if isinstance(gn, x509.DNSName):
                dns.append(gn.value)
            elif isinstance(gn, x509.IPAddress):
                if isinstance(gn.value, ipaddress.IPv4Address | ipaddress.IPv6Address):
                    ips.append(gn.value)
                else:  # a network: only meaningful in name constraints
                    other.append(("iPAddress", str(gn.value)))
            elif isinstance(gn, x509.RFC822Name):
                emails.append(gn.value)
            elif isinstance(gn, x509.UniformResourceIdentifier):
                uris.append(gn.value)
            elif isinstance(gn, x509.DirectoryName):
                other.append(("directoryName", gn.value.rfc4514_string()))
            elif isinstance(gn, x509.OtherName):
                other.append(("otherName", gn.type_id.dotted_string))
            elif isinstance(gn, x509.RegisteredID):
                other.append(("registeredID", gn.value.dotted_string))
            else:  # pragma: no cover - cryptography has no other GeneralName kinds
                other.append((type(gn).__name__, str(gn)))
        # The deprecated subject emailAddress is an identity relying parties may still
        # read, so it is held to the email rules like an rfc822Name SAN.
        for attr in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS):
            emails.append(_attr_text(attr.value))
        cns = [_attr_text(a.value) for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        # A second CN cannot be judged as "the" common name; refuse it under any rules.
        other += [("additional commonName", extra) for extra in cns[1:]]
        return cls(dns, ips, emails, uris, cns[0] if cns else None, other)


def _attr_text(value: str | bytes) -> str:
    return value if isinstance(value, str) else value.decode("utf-8", "replace")

