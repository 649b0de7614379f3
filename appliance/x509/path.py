"""Path validation before signing: would a relying party accept this certificate under its chain?

pkilint lints one certificate; it cannot see that an intermediate's name constraints
forbid the leaf's names, that a path length is used up, or that a leaf outlives its
issuer's issuer. A CA that signs such a certificate has published something every
RFC 5280 relying party rejects (``openssl verify``: "permitted subtree violation"), so
the pipeline and every ceremony step that signs a certificate run this check on the
to-be-signed certificate (the trial one, signed by a throw-away key) before the token
key is used.

What is checked, as RFC 5280 §6.1 does it, against every CA of the chain from the issuer
up to the root (the root included, as OpenSSL does for name constraints and path length):

- **name constraints** (§4.2.1.10) on DNS names, IP addresses, email addresses
  (SAN rfc822Name and subject emailAddress), URIs (their host) and directory names (the
  subject and directoryName SANs); a host-like or IP-like common name is checked as the
  name it looks like, since clients still match it. Excluded subtrees win; once a CA has
  permitted subtrees of a type, a name of that type must be inside one of them. A
  wildcard DNS name counts as excluded if it could stand for an excluded name;
- **path length** (§4.2.1.9): the CAs below each CA, the new certificate included when it
  is itself a CA, must fit its pathLenConstraint;
- **basic constraints and key usage** of every CA (cA, keyCertSign);
- **validity**: every CA is valid now, and the new certificate's validity lies inside
  every CA's (not only its issuer's);
- **certificate policies and policy constraints** (§6.1.3-6.1.5: requireExplicitPolicy,
  inhibitPolicyMapping, inhibitAnyPolicy, policy mappings), with the root as trust anchor
  and the user-initial policy set any-policy, tracking the valid policy set (not the
  full tree: enough to decide whether an explicit policy survives);
- **extended key usage nesting** as relying parties (Go, Windows, browsers) apply it: a
  CA with an EKU extension (without anyExtendedKeyUsage) may only certify those purposes.
  Delegated OCSP signing (RFC 6960 §4.2.2.2) is exempt: it is only ever checked against
  the CA that issued the responder certificate.

A refusal names the constraint and the CA. ``Chain`` does the chain's own part once (its
names, its policy state) so the per-certificate check on the issuance path stays small.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from appliance.errors import ApplianceError
from appliance.rfc3339 import format_z

ANY_POLICY = "2.5.29.32.0"
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_HOSTLIKE = re.compile(r"^(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z0-9-]{1,63}\.?$")


class PathError(ApplianceError):
    """Signing this would make a certificate its own chain forbids; nothing was signed."""

    code = "path_constraint"
    status = 403
    acme_type = "unauthorized"

    def __init__(self, constraint: str, authority: str, message: str) -> None:
        super().__init__(f"{message} (constraint: {constraint}; CA: {authority})")
        self.constraint = constraint
        self.authority = authority
        if constraint == "name_constraints":
            # The CA's name constraints forbid the name: an identifier it can never certify.
            self.acme_type = "rejectedIdentifier"


@dataclass(frozen=True)
class Link:
    """One CA certificate of a chain and the name the appliance knows it by."""

    name: str
    cert: x509.Certificate


# -- names ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Names:
    dns: tuple[str, ...] = ()
    ip: tuple[IpAddress, ...] = ()
    email: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    dirname: tuple[x509.Name, ...] = ()
    other: tuple[str, ...] = ()  # kinds of general names this module cannot compare


@dataclass(frozen=True)
class _Subtrees:
    dns: tuple[str, ...] = ()
    ip: tuple[IpNetwork, ...] = ()
    email: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    dirname: tuple[x509.Name, ...] = ()
    other: tuple[str, ...] = ()


_KIND_LABEL = {"dns": "DNS name", "ip": "IP address", "email": "email address",
               "uri": "URI", "dirname": "directory name"}


def _ext(cert: x509.Certificate, cls: type[Any], owner: str) -> Any:
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None
    except ValueError as exc:  # a malformed extension of a stored CA certificate
        raise PathError("malformed_extension", owner, f"{cls.__name__} of {owner} does not "
                        f"decode ({exc})") from None


def _names_of(cert: x509.Certificate, owner: str) -> _Names:
    dns: list[str] = []
    ips: list[IpAddress] = []
    emails: list[str] = []
    uris: list[str] = []
    dirnames: list[x509.Name] = []
    other: list[str] = []
    if len(cert.subject) > 0:
        dirnames.append(cert.subject)
    for attr in cert.subject:
        value = attr.value if isinstance(attr.value, str) else None
        if value is None:
            continue
        if attr.oid == NameOID.EMAIL_ADDRESS:
            emails.append(value)
        elif attr.oid == NameOID.COMMON_NAME:
            try:
                ips.append(ipaddress.ip_address(value))
            except ValueError:
                if _HOSTLIKE.match(value.lower()):
                    dns.append(value)
    san = _ext(cert, x509.SubjectAlternativeName, owner)
    for gn in san or ():
        if isinstance(gn, x509.DNSName):
            dns.append(gn.value)
        elif isinstance(gn, x509.IPAddress):
            if isinstance(gn.value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
                ips.append(gn.value)
            else:
                other.append("ipNetwork")
        elif isinstance(gn, x509.RFC822Name):
            emails.append(gn.value)
        elif isinstance(gn, x509.UniformResourceIdentifier):
            uris.append(gn.value)
        elif isinstance(gn, x509.DirectoryName):
            dirnames.append(gn.value)
        else:
            other.append(type(gn).__name__)
    return _Names(tuple(dns), tuple(ips), tuple(emails), tuple(uris), tuple(dirnames),
                  tuple(other))


def _subtrees(names: Iterable[x509.GeneralName] | None) -> _Subtrees | None:
    if not names:
        return None
    dns, ips, emails, uris, dirnames, other = [], [], [], [], [], []
    for gn in names:
        if isinstance(gn, x509.DNSName):
            dns.append(_dns(gn.value))
        elif isinstance(gn, x509.IPAddress):
            value = gn.value
            ips.append(value if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network))
                       else ipaddress.ip_network(value))
        elif isinstance(gn, x509.RFC822Name):
            emails.append(gn.value)
        elif isinstance(gn, x509.UniformResourceIdentifier):
            uris.append(gn.value.lower())
        elif isinstance(gn, x509.DirectoryName):
            dirnames.append(gn.value)
        else:
            other.append(type(gn).__name__)
    return _Subtrees(tuple(dns), tuple(ips), tuple(emails), tuple(uris), tuple(dirnames),
                     tuple(other))


def _dns(value: str) -> str:
    return value.lower().rstrip(".")


def _dns_within(name: str, tree: str) -> bool:
    """RFC 5280: any name made by adding labels on the left satisfies ``tree``; a leading dot
    (OpenSSL's and most libraries' reading) means subdomains only."""
    if not tree:
        return True
    if tree.startswith("."):
        return name.endswith(tree)
    return name == tree or name.endswith("." + tree)


def _wildcard_reaches(name: str, tree: str) -> bool:
    """Whether ``*.rest`` could stand for a name inside ``tree`` that ``_dns_within`` would
    not see on the literal name: ``tree`` is one label more than ``rest``."""
    if not name.startswith("*."):
        return False
    rest = name[2:]
    bare = tree.lstrip(".")
    head, _, tail = bare.partition(".")
    return bool(head) and tail == rest


def _email_within(mailbox: str, tree: str) -> bool:
    local, at, domain = mailbox.rpartition("@")
    if not at or not local:
        return False
    domain = domain.lower()
    if "@" in tree:
        t_local, _, t_domain = tree.rpartition("@")
        return local == t_local and domain == t_domain.lower()
    tree = tree.lower()
    if tree.startswith("."):
        return domain.endswith(tree)
    return domain == tree


def _uri_host(uri: str) -> str | None:
    try:
        host = urlsplit(uri).hostname
    except ValueError:
        return None
    return host.rstrip(".") if host else None


def _host_within(host: str | None, tree: str) -> bool:
    if host is None:
        return False
    if tree.startswith("."):
        return host.endswith(tree)
    return host == tree


def _norm(value: Any) -> Any:
    if isinstance(value, str):
        return " ".join(unicodedata.normalize("NFKC", value).casefold().split())
    return value


def _rdn_key(rdn: x509.RelativeDistinguishedName) -> frozenset[tuple[str, Any]]:
    return frozenset((a.oid.dotted_string, _norm(a.value)) for a in rdn)


def _dn_within(name: x509.Name, tree: x509.Name) -> bool:
    have, want = list(name.rdns), list(tree.rdns)
    if len(want) > len(have):
        return False
    return all(_rdn_key(a) == _rdn_key(b) for a, b in zip(have, want, strict=False))


def _dirname_text(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty)"


@dataclass(frozen=True)
class _NameConstraints:
    link: Link
    permitted: _Subtrees | None
    excluded: _Subtrees | None

    def check(self, names: _Names, what: str) -> None:
        for kind in ("dns", "ip", "email", "uri", "dirname"):
            for value in getattr(names, kind):
                self._check_one(kind, value, what)
        if names.other:
            constrained = set(self.permitted.other if self.permitted else ()) | set(
                self.excluded.other if self.excluded else ())
            for kind in names.other:
                if kind in constrained:
                    self._refuse(f"{what} carries a {kind} name, and this CA constrains "
                                 f"{kind} names in a way the appliance cannot check")

    def _check_one(self, kind: str, value: Any, what: str) -> None:
        shown = _dirname_text(value) if kind == "dirname" else str(value)
        label = _KIND_LABEL[kind]
        if self.excluded is not None:
            for tree in getattr(self.excluded, kind):
                if _matches(kind, value, tree) or (
                        kind == "dns" and _wildcard_reaches(_dns(value), tree)):
                    self._refuse(f"{what}: {label} {shown!r} is in an excluded subtree "
                                 f"({_tree_text(kind, tree)})")
        if self.permitted is not None:
            trees = getattr(self.permitted, kind)
            if trees and not any(_matches(kind, value, t) for t in trees):
                allowed = ", ".join(_tree_text(kind, t) for t in trees)
                self._refuse(f"{what}: {label} {shown!r} is outside the permitted subtrees "
                             f"({allowed})")

    def _refuse(self, message: str) -> None:
        subject = self.link.cert.subject.rfc4514_string()
        raise PathError("name_constraints", self.link.name,
                        f"name constraints of CA {self.link.name!r} ({subject}) forbid it: "
                        f"{message}")


def _matches(kind: str, value: Any, tree: Any) -> bool:
    if kind == "dns":
        return _dns_within(_dns(value), tree)
    if kind == "ip":
        return bool(value.version == tree.version and value in tree)
    if kind == "email":
        return _email_within(value, tree)
    if kind == "uri":
        return _host_within(_uri_host(value), tree)
    return _dn_within(value, tree)


def _tree_text(kind: str, tree: Any) -> str:
    return _dirname_text(tree) if kind == "dirname" else str(tree)


# -- the chain -------------------------------------------------------------------


@dataclass(frozen=True)
class _CaFacts:
    link: Link
    self_issued: bool
    path_length: int | None
    constraints: _NameConstraints | None
    eku: frozenset[str] | None  # None: no EKU extension, or anyExtendedKeyUsage


@dataclass(frozen=True)
class _PolicyState:
    """The RFC 5280 §6.1.2 state variables after the chain, before the new certificate."""

    valid: frozenset[str] | None  # None: the valid policy tree is NULL
    explicit_policy: int
    explicit_by: str | None  # the CA whose requireExplicitPolicy set the binding value
    inhibit_any: int
    policy_mapping: int


def _is_self_issued(cert: x509.Certificate) -> bool:
    return cert.subject.public_bytes() == cert.issuer.public_bytes()


def _facts(link: Link) -> _CaFacts:
    cert = link.cert
    what = f"CA {link.name!r} ({cert.subject.rfc4514_string()})"
    bc = _ext(cert, x509.BasicConstraints, link.name)
    if bc is None or not bc.ca:
        raise PathError("basic_constraints", link.name, f"{what} is not a CA certificate "
                        "(basicConstraints cA is not set)")
    ku = _ext(cert, x509.KeyUsage, link.name)
    if ku is not None and not ku.key_cert_sign:
        raise PathError("key_usage", link.name, f"{what} may not sign certificates (its key "
                        "usage lacks keyCertSign)")
    nc = _ext(cert, x509.NameConstraints, link.name)
    constraints = None
    if nc is not None:
        constraints = _NameConstraints(link, _subtrees(nc.permitted_subtrees),
                                       _subtrees(nc.excluded_subtrees))
    eku = _ext(cert, x509.ExtendedKeyUsage, link.name)
    eku_set = None
    if eku is not None:
        oids = frozenset(o.dotted_string for o in eku)
        if ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE.dotted_string not in oids:
            eku_set = oids
    return _CaFacts(link, _is_self_issued(cert), bc.path_length, constraints, eku_set)


def _policies(cert: x509.Certificate, owner: str) -> frozenset[str] | None:
    value = _ext(cert, x509.CertificatePolicies, owner)
    if value is None:
        return None
    return frozenset(p.policy_identifier.dotted_string for p in value)


def _policy_mappings(cert: x509.Certificate, owner: str) -> list[tuple[str, str]]:
    try:
        ext = cert.extensions.get_extension_for_oid(ExtensionOID.POLICY_MAPPINGS)
    except x509.ExtensionNotFound:
        return []
    except ValueError as exc:
        raise PathError("malformed_extension", owner, f"policyMappings of {owner} does not "
                        f"decode ({exc})") from None
    der = getattr(ext.value, "value", None)
    if not isinstance(der, bytes):
        return []
    from pyasn1.codec.der import decoder
    from pyasn1.error import PyAsn1Error
    from pyasn1_alt_modules import rfc5280

    try:
        decoded, rest = decoder.decode(der, asn1Spec=rfc5280.PolicyMappings())
    except PyAsn1Error as exc:
        raise PathError("malformed_extension", owner, f"policyMappings of {owner} does not "
                        f"decode ({exc})") from None
    if rest:
        raise PathError("malformed_extension", owner, f"policyMappings of {owner} has "
                        "trailing bytes")
    return [(str(m["issuerDomainPolicy"]), str(m["subjectDomainPolicy"])) for m in decoded]


def _apply_policies(state: _PolicyState, cert: x509.Certificate, owner: str, *,
                    last: bool) -> _PolicyState:
    """One step of §6.1.3 (d)-(f) and, for a CA below which the path goes on, §6.1.4."""
    valid, explicit, explicit_by = state.valid, state.explicit_policy, state.explicit_by
    inhibit_any, mapping = state.inhibit_any, state.policy_mapping
    self_issued = _is_self_issued(cert)
    policies = _policies(cert, owner)
    if policies is None:
        valid = None
    elif valid is not None:
        any_here = ANY_POLICY in policies and (inhibit_any > 0 or (not last and self_issued))
        named = policies - {ANY_POLICY}
        if ANY_POLICY in valid:
            new = set(named)
            if any_here:
                new.add(ANY_POLICY)
        else:
            new = {p for p in named if p in valid}
            if any_here:
                new |= valid
        valid = frozenset(new) or None
    if not last:
        for issuer_policy, subject_policy in _policy_mappings(cert, owner):
            if valid is None:
                break
            if mapping > 0:
                if issuer_policy in valid or ANY_POLICY in valid:
                    valid = (valid - {issuer_policy}) | {subject_policy}
            else:
                valid = (valid - {issuer_policy}) or None
        if not self_issued:
            explicit, mapping, inhibit_any = (max(explicit - 1, 0), max(mapping - 1, 0),
                                              max(inhibit_any - 1, 0))
        pc = _ext(cert, x509.PolicyConstraints, owner)
        if pc is not None:
            if pc.require_explicit_policy is not None and pc.require_explicit_policy < explicit:
                explicit, explicit_by = pc.require_explicit_policy, owner
            if pc.inhibit_policy_mapping is not None:
                mapping = min(mapping, pc.inhibit_policy_mapping)
        ia = _ext(cert, x509.InhibitAnyPolicy, owner)
        if ia is not None:
            inhibit_any = min(inhibit_any, ia.skip_certs)
    else:  # §6.1.5 (a), (b)
        explicit = max(explicit - 1, 0)
        pc = _ext(cert, x509.PolicyConstraints, owner)
        if pc is not None and pc.require_explicit_policy == 0:
            explicit, explicit_by = 0, owner
    return _PolicyState(valid, explicit, explicit_by, inhibit_any, mapping)


class Chain:
    """A CA's chain (issuer first, up to the root), checked once, against which new
    certificates are checked before the token signs them."""

    def __init__(self, links: Sequence[Link], *, at: datetime | None = None) -> None:
        if not links:
            raise ValueError("a chain has at least its issuer")
        self.links = tuple(links)
        self.facts = tuple(_facts(link) for link in self.links)
        self._check_chain(at or datetime.now(UTC))
        self.policy_state = self._policy_prefix()

    @property
    def issuer(self) -> Link:
        return self.links[0]

    # -- the chain's own consistency -------------------------------------------

    def _check_chain(self, at: datetime) -> None:
        for i, facts in enumerate(self.facts):
            cert = facts.link.cert
            if not cert.not_valid_before_utc <= at <= cert.not_valid_after_utc:
                raise PathError("validity", facts.link.name,
                                f"CA {facts.link.name!r} is not valid now "
                                f"({format_z(cert.not_valid_before_utc)} .. "
                                f"{format_z(cert.not_valid_after_utc)})")
            above = self.facts[i + 1:]
            if not above:
                continue
            if not facts.self_issued:
                names = _names_of(cert, facts.link.name)
                for ca in above:
                    if ca.constraints is not None:
                        ca.constraints.check(names, f"CA {facts.link.name!r} below it")
            below = sum(1 for f in self.facts[:i + 1] if not f.self_issued)
            self._check_path_length(above, below, f"CA {facts.link.name!r}")

    def _check_path_length(self, above: Sequence[_CaFacts], extra: int, what: str) -> None:
        """``extra``: the CA certificates (not self-issued) that would stand below
        ``above[0]`` in the path: the chain's lower part, and the new certificate if it is
        a CA."""
        below = extra
        for ca in above:
            if ca.path_length is not None and below > ca.path_length:
                raise PathError("path_length", ca.link.name,
                                f"path length of CA {ca.link.name!r} is {ca.path_length}, but "
                                f"{what} would put {below} CA certificate(s) below it")
            if not ca.self_issued:
                below += 1

    def _policy_prefix(self) -> _PolicyState:
        path = list(reversed(self.links[:-1]))  # below the trust anchor (the root), top first
        n = len(path) + 1  # ... and the new certificate
        state = _PolicyState(frozenset({ANY_POLICY}), n + 1, None, n + 1, n + 1)
        for link in path:
            state = _apply_policies(state, link.cert, link.name, last=False)
            if state.explicit_policy == 0 and state.valid is None:
                raise PathError("policy_constraints", state.explicit_by or link.name,
                                f"no certificate policy of CA {link.name!r} is acceptable "
                                f"under the explicit policy {state.explicit_by!r} requires")
        return state

    # -- a new certificate -----------------------------------------------------

    def check_names(self, *, dns: Iterable[str] = (), ips: Iterable[IpAddress] = (),
                    what: str = "the identifier") -> None:
        """Only the name constraints, for names asked for before any certificate exists."""
        names = _Names(dns=tuple(dns), ip=tuple(ips))
        for ca in self.facts:
            if ca.constraints is not None:
                ca.constraints.check(names, what)

    def check(self, cert: x509.Certificate, what: str = "the certificate") -> None:
        """Refuse (``PathError``) if ``cert``, issued by ``self.issuer``, would not validate."""
        is_ca = False
        bc = _ext(cert, x509.BasicConstraints, what)
        if bc is not None and bc.ca:
            is_ca = True
        self_issued = _is_self_issued(cert)
        # Names: against every CA above (a self-issued CA certificate is exempt, §6.1.3 (b)).
        if not (is_ca and self_issued):
            names = _names_of(cert, what)
            for ca in self.facts:
                if ca.constraints is not None:
                    ca.constraints.check(names, what)
        if is_ca:
            self._check_path_length(self.facts, 0 if self_issued else 1, what)
        for ca in self.facts:
            c = ca.link.cert
            if cert.not_valid_before_utc < c.not_valid_before_utc or \
                    cert.not_valid_after_utc > c.not_valid_after_utc:
                raise PathError("validity", ca.link.name,
                                f"{what} ({format_z(cert.not_valid_before_utc)} .. "
                                f"{format_z(cert.not_valid_after_utc)}) is not inside the validity "
                                f"of CA {ca.link.name!r} ({format_z(c.not_valid_before_utc)} .. "
                                f"{format_z(c.not_valid_after_utc)})")
        eku = _ext(cert, x509.ExtendedKeyUsage, what)
        if eku is not None:
            asked = {o.dotted_string for o in eku} - {
                ExtendedKeyUsageOID.OCSP_SIGNING.dotted_string}
            for ca in self.facts:
                if ca.eku is not None and not asked <= ca.eku:
                    extra = ", ".join(sorted(asked - ca.eku))
                    raise PathError("extended_key_usage", ca.link.name,
                                    f"{what} asks for extended key usage {extra}, which CA "
                                    f"{ca.link.name!r} may not certify (its EKU extension "
                                    "limits the purposes below it)")
        state = _apply_policies(self.policy_state, cert, what, last=True)
        if state.explicit_policy == 0 and state.valid is None:
            by = state.explicit_by or self.issuer.name
            raise PathError("policy_constraints", by,
                            f"{what} carries no certificate policy acceptable under the chain "
                            f"(CA {by!r} requires an explicit policy; acceptable: "
                            f"{_policy_text(self.policy_state.valid)})")


def _policy_text(valid: frozenset[str] | None) -> str:
    if valid is None:
        return "none"
    if ANY_POLICY in valid:
        return "any policy"
    return ", ".join(sorted(valid))
