"""Path validation before signing (appliance.x509.path), against OpenSSL on the same chains.

Each case builds a real chain with software keys (root -> intermediate -> certificate),
asks the checker, and asks ``openssl verify`` about the same certificates: what the checker
refuses, OpenSSL rejects with the matching error; what it lets through, OpenSSL accepts.
(The few places where the checker is deliberately stricter than OpenSSL say so.)
"""

from __future__ import annotations

import ipaddress
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from appliance.x509.path import Chain, Link, PathError

NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
P1, P2 = "1.3.6.1.4.1.55555.1.1", "1.3.6.1.4.1.55555.1.2"
ANY = "2.5.29.32.0"
# RFC 5280's default user-initial-policy-set (any-policy); OpenSSL starts from an empty one.
POLICY = ("-policy_check", "-policy", ANY)


@dataclass
class Ca:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass
class Spec:
    cn: str
    ca: bool = True
    path_length: int | None = None
    nc: x509.NameConstraints | None = None
    key_cert_sign: bool = True
    eku: list[ObjectIdentifier] | None = None
    policies: list[str] | None = None
    policy_constraints: x509.PolicyConstraints | None = None
    inhibit_any: int | None = None
    sans: list[x509.GeneralName] = field(default_factory=list)
    subject: x509.Name | None = None
    start: datetime = NOW - DAY
    end: datetime = NOW + 300 * DAY
    extra: list[tuple[x509.ExtensionType, bool]] = field(default_factory=list)


def build(spec: Spec, issuer: Ca | None) -> Ca:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = spec.subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.cn)])
    b = (x509.CertificateBuilder().subject_name(subject)
         .issuer_name(issuer.cert.subject if issuer else subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(spec.start).not_valid_after(spec.end)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False))
    signer_pub = issuer.key.public_key() if issuer else key.public_key()
    b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_pub), False)
    b = b.add_extension(x509.BasicConstraints(spec.ca, spec.path_length if spec.ca else None),
                        True)
    b = b.add_extension(x509.KeyUsage(
        digital_signature=not spec.ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=spec.ca and spec.key_cert_sign,
        crl_sign=spec.ca, encipher_only=False, decipher_only=False), True)
    if spec.nc is not None:
        b = b.add_extension(spec.nc, True)
    if spec.eku is not None:
        b = b.add_extension(x509.ExtendedKeyUsage(spec.eku), False)
    if spec.policies is not None:
        b = b.add_extension(x509.CertificatePolicies(
            [x509.PolicyInformation(ObjectIdentifier(p), None) for p in spec.policies]), False)
    if spec.policy_constraints is not None:
        b = b.add_extension(spec.policy_constraints, True)
    if spec.inhibit_any is not None:
        b = b.add_extension(x509.InhibitAnyPolicy(spec.inhibit_any), True)
    if spec.sans:
        b = b.add_extension(x509.SubjectAlternativeName(spec.sans), False)
    for ext, critical in spec.extra:
        b = b.add_extension(ext, critical)
    signer = issuer.key if issuer else key
    return Ca(b.sign(signer, hashes.SHA256()), key)


def pem(c: x509.Certificate) -> bytes:
    return c.public_bytes(serialization.Encoding.PEM)


@dataclass
class Case:
    root: Ca
    inter: Ca
    leaf: x509.Certificate

    def checker(self) -> None:
        Chain([Link("issuing", self.inter.cert), Link("root", self.root.cert)]).check(
            self.leaf, "the certificate")

    def openssl(self, tmp: Path, *flags: str) -> subprocess.CompletedProcess[str]:
        (tmp / "root.pem").write_bytes(pem(self.root.cert))
        (tmp / "inter.pem").write_bytes(pem(self.inter.cert))
        (tmp / "leaf.pem").write_bytes(pem(self.leaf))
        return subprocess.run(
            ["openssl", "verify", "-CAfile", str(tmp / "root.pem"), "-untrusted",
             str(tmp / "inter.pem"), *flags, str(tmp / "leaf.pem")],
            capture_output=True, text=True, check=False)


def chain(leaf: Spec, inter: Spec | None = None, root: Spec | None = None) -> Case:
    r = build(root or Spec("Test Root"), None)
    i = build(inter or Spec("Test Issuing", path_length=0), r)
    return Case(r, i, build(leaf, i).cert)


def leaf(*sans: x509.GeneralName, cn: str = "leaf", **kw: Any) -> Spec:
    return Spec(cn, ca=False, sans=list(sans), eku=kw.pop("eku", [ExtendedKeyUsageOID.SERVER_AUTH]),
                **kw)


def nc(permitted: list[x509.GeneralName] | None = None,
       excluded: list[x509.GeneralName] | None = None) -> x509.NameConstraints:
    return x509.NameConstraints(permitted_subtrees=permitted, excluded_subtrees=excluded)


def refused(case: Case, constraint: str, authority: str = "issuing") -> PathError:
    with pytest.raises(PathError) as info:
        case.checker()
    assert info.value.constraint == constraint, str(info.value)
    assert info.value.authority == authority, str(info.value)
    assert f"CA: {authority}" in str(info.value)
    return info.value


def accepted(case: Case, tmp: Path, *flags: str) -> None:
    case.checker()
    result = case.openssl(tmp, *flags)
    assert result.returncode == 0, result.stdout + result.stderr


def openssl_rejects(case: Case, tmp: Path, text: str, *flags: str) -> None:
    result = case.openssl(tmp, *flags)
    assert result.returncode != 0
    assert text in (result.stdout + result.stderr), result.stdout + result.stderr


DNS, IP, EMAIL, URI = x509.DNSName, x509.IPAddress, x509.RFC822Name, x509.UniformResourceIdentifier


# -- name constraints, per type ---------------------------------------------------


def test_permitted_dns_refuses_the_reported_leaf(tmp_path: Path) -> None:
    inter = Spec("Audit Issuing", path_length=0, nc=nc([DNS("audit.test")]))
    bad = chain(leaf(DNS("www.other.test")), inter)
    err = refused(bad, "name_constraints")
    assert "www.other.test" in str(err) and "audit.test" in str(err)
    openssl_rejects(bad, tmp_path, "permitted subtree violation")
    accepted(chain(leaf(DNS("www.audit.test"), DNS("audit.test")), inter), tmp_path)


def test_permitted_dns_on_the_root_binds_every_tier(tmp_path: Path) -> None:
    root = Spec("Constrained Root", nc=nc([DNS("example.com")]))
    bad = chain(leaf(DNS("www.example.org")), root=root)
    refused(bad, "name_constraints", "root")
    openssl_rejects(bad, tmp_path, "permitted subtree violation")
    accepted(chain(leaf(DNS("a.b.example.com")), root=root), tmp_path)


def test_excluded_dns(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, nc=nc(excluded=[DNS("secret.example")]))
    bad = chain(leaf(DNS("db.secret.example")), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "excluded subtree violation")
    accepted(chain(leaf(DNS("notsecret.example")), inter), tmp_path)


def test_wildcard_that_could_stand_for_an_excluded_name_is_refused(tmp_path: Path) -> None:
    # Stricter than OpenSSL, which compares the "*" label literally: *.example.com would
    # match www.example.com at a client, and www.example.com is excluded.
    inter = Spec("Issuing", path_length=0, nc=nc(excluded=[DNS("www.example.com")]))
    refused(chain(leaf(DNS("*.example.com")), inter), "name_constraints")
    accepted(chain(leaf(DNS("*.api.example.com")), inter), tmp_path)


def test_hostlike_common_name_is_checked_as_a_dns_name(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, nc=nc([DNS("audit.test")]))
    bad = chain(leaf(cn="www.other.test", eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "permitted subtree violation")


def test_permitted_ip(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0,
                 nc=nc([IP(ipaddress.ip_network("10.1.0.0/16")),
                        IP(ipaddress.ip_network("fd00::/8"))]))
    bad = chain(leaf(IP(ipaddress.ip_address("10.2.0.1"))), inter)
    err = refused(bad, "name_constraints")
    assert "10.2.0.1" in str(err)
    openssl_rejects(bad, tmp_path, "permitted subtree violation")
    accepted(chain(leaf(IP(ipaddress.ip_address("10.1.200.3")),
                        IP(ipaddress.ip_address("fd12::1"))), inter), tmp_path)


def test_excluded_ip(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0,
                 nc=nc(excluded=[IP(ipaddress.ip_network("192.168.0.0/16"))]))
    bad = chain(leaf(IP(ipaddress.ip_address("192.168.1.1"))), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "excluded subtree violation")
    accepted(chain(leaf(IP(ipaddress.ip_address("192.169.1.1"))), inter), tmp_path)


def test_permitted_email_domain_mailbox_and_subject_email(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, nc=nc([EMAIL("example.com")]))
    smime = [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    bad = chain(leaf(EMAIL("alice@example.org"), eku=smime), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "permitted subtree violation")
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Alice"),
                         x509.NameAttribute(NameOID.EMAIL_ADDRESS, "alice@evil.test")])
    bad_subject = chain(leaf(EMAIL("alice@example.com"), subject=subject, eku=smime), inter)
    refused(bad_subject, "name_constraints")
    openssl_rejects(bad_subject, tmp_path, "permitted subtree violation")
    accepted(chain(leaf(EMAIL("Alice@EXAMPLE.com"), eku=smime), inter), tmp_path)
    exact = Spec("Issuing", path_length=0, nc=nc([EMAIL("bob@example.com")]))
    refused(chain(leaf(EMAIL("alice@example.com"), eku=smime), exact), "name_constraints")
    accepted(chain(leaf(EMAIL("bob@example.com"), eku=smime), exact), tmp_path)


def test_permitted_uri_host(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, nc=nc([URI(".mesh.example")]))
    bad = chain(leaf(URI("spiffe://other.example/ns/a")), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "permitted subtree violation")
    accepted(chain(leaf(URI("https://api.mesh.example/x")), inter), tmp_path)


def test_uri_without_a_host_cannot_be_shown_inside(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, nc=nc([URI("mesh.example")]))
    bad = chain(leaf(URI("urn:uuid:6e8bc430-9c3a-11d9-9669-0800200c9a66")), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "unsupported or invalid name syntax")


def test_directory_name(tmp_path: Path) -> None:
    org = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example AG")])
    inter = Spec("Issuing", path_length=0, nc=nc([x509.DirectoryName(org)]))
    other = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                       x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Other GmbH"),
                       x509.NameAttribute(NameOID.COMMON_NAME, "svc")])
    bad = chain(leaf(DNS("svc.example"), subject=other), inter)
    refused(bad, "name_constraints")
    openssl_rejects(bad, tmp_path, "permitted subtree violation")
    inside = x509.Name([*org, x509.NameAttribute(NameOID.COMMON_NAME, "svc")])
    accepted(chain(leaf(DNS("svc.example"), subject=inside), inter), tmp_path)


def test_intermediate_outside_the_roots_constraints_refuses_everything_below() -> None:
    root = Spec("Root", nc=nc([DNS("example.com")]))
    r = build(root, None)
    i = build(Spec("Issuing", path_length=0, sans=[DNS("ca.example.org")]), r)
    with pytest.raises(PathError) as info:
        Chain([Link("issuing", i.cert), Link("root", r.cert)])
    assert info.value.constraint == "name_constraints"
    assert info.value.authority == "root"


# -- path length, CA flags, key usage ---------------------------------------------------


def test_path_length_of_the_issuer_leaves_no_room_for_a_ca(tmp_path: Path) -> None:
    r = build(Spec("Root"), None)
    i = build(Spec("Issuing", path_length=0), r)
    sub = build(Spec("Sub CA", path_length=0), i)
    refused(Case(r, i, sub.cert), "path_length", "issuing")
    # OpenSSL sees it once the sub-CA issues: the leaf below it does not verify.
    below = build(leaf(DNS("x.example")), sub).cert
    (tmp_path / "root.pem").write_bytes(pem(r.cert))
    (tmp_path / "chain.pem").write_bytes(pem(i.cert) + pem(sub.cert))
    (tmp_path / "leaf.pem").write_bytes(pem(below))
    result = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "root.pem"),
                             "-untrusted", str(tmp_path / "chain.pem"),
                             str(tmp_path / "leaf.pem")], capture_output=True, text=True,
                            check=False)
    assert result.returncode != 0
    assert "path length constraint exceeded" in result.stdout + result.stderr
    # With room for one more CA it is accepted.
    r2 = build(Spec("Root"), None)
    i2 = build(Spec("Issuing", path_length=1), r2)
    Chain([Link("issuing", i2.cert), Link("root", r2.cert)]).check(
        build(Spec("Sub CA", path_length=0), i2).cert)


def test_path_length_of_the_root(tmp_path: Path) -> None:
    root = Spec("Root", path_length=0)
    r = build(root, None)
    i = build(Spec("Issuing", path_length=0), r)
    with pytest.raises(PathError) as info:
        Chain([Link("issuing", i.cert), Link("root", r.cert)])
    assert info.value.constraint == "path_length" and info.value.authority == "root"
    case = Case(r, i, build(leaf(DNS("x.example")), i).cert)
    openssl_rejects(case, tmp_path, "path length constraint exceeded")


def test_issuer_without_key_cert_sign(tmp_path: Path) -> None:
    r = build(Spec("Root"), None)
    i = build(Spec("Issuing", path_length=0, key_cert_sign=False), r)
    with pytest.raises(PathError) as info:
        Chain([Link("issuing", i.cert), Link("root", r.cert)])
    assert info.value.constraint == "key_usage" and info.value.authority == "issuing"
    openssl_rejects(Case(r, i, build(leaf(DNS("x.example")), i).cert), tmp_path,
                    "key usage does not include certificate signing")


def test_issuer_that_is_not_a_ca(tmp_path: Path) -> None:
    r = build(Spec("Root"), None)
    i = build(Spec("Not A CA", ca=False), r)
    with pytest.raises(PathError) as info:
        Chain([Link("issuing", i.cert), Link("root", r.cert)])
    assert info.value.constraint == "basic_constraints"
    openssl_rejects(Case(r, i, build(leaf(DNS("x.example")), i).cert), tmp_path,
                    "invalid CA certificate")


# -- validity ---------------------------------------------------------------------------


def test_validity_must_nest_in_every_ca_not_only_the_issuer(tmp_path: Path) -> None:
    root = Spec("Root", end=NOW + 100 * DAY)
    inter = Spec("Issuing", path_length=0, end=NOW + 100 * DAY)
    bad = chain(leaf(DNS("x.example"), end=NOW + 200 * DAY), inter, root)
    err = refused(bad, "validity", "issuing")
    assert "is not inside the validity" in str(err)
    # At a time inside the leaf's validity but after the CAs expired, OpenSSL rejects it.
    later = int((NOW + 150 * DAY).timestamp())
    openssl_rejects(bad, tmp_path, "certificate has expired", "-attime", str(later))
    accepted(chain(leaf(DNS("x.example"), end=NOW + 50 * DAY), inter, root), tmp_path)


def test_a_ca_that_is_not_valid_now_refuses() -> None:
    r = build(Spec("Root"), None)
    i = build(Spec("Issuing", path_length=0, start=NOW - 20 * DAY, end=NOW - DAY), r)
    with pytest.raises(PathError) as info:
        Chain([Link("issuing", i.cert), Link("root", r.cert)])
    assert info.value.constraint == "validity"


# -- policies -------------------------------------------------------------------------


def test_require_explicit_policy(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, policies=[P1],
                 policy_constraints=x509.PolicyConstraints(0, None))
    bad = chain(leaf(DNS("x.example"), policies=[P2]), inter)
    err = refused(bad, "policy_constraints", "issuing")
    assert P1 in str(err)
    openssl_rejects(bad, tmp_path, "no explicit policy", *POLICY)
    no_policy = chain(leaf(DNS("x.example")), inter)
    refused(no_policy, "policy_constraints", "issuing")
    openssl_rejects(no_policy, tmp_path, "no explicit policy", *POLICY)
    accepted(chain(leaf(DNS("x.example"), policies=[P1]), inter), tmp_path, *POLICY)


def test_require_explicit_policy_counted_down_from_above(tmp_path: Path) -> None:
    # "1" lets one more certificate follow before an explicit policy is required of the
    # path; the leaf is that certificate, and the wrap-up (RFC 5280 §6.1.5 (a)) counts it,
    # so the leaf must still carry a policy the chain accepts (OpenSSL agrees).
    inter = Spec("Issuing", path_length=0, policies=[ANY],
                 policy_constraints=x509.PolicyConstraints(1, None))
    bad = chain(leaf(DNS("x.example")), inter)
    refused(bad, "policy_constraints", "issuing")
    openssl_rejects(bad, tmp_path, "no explicit policy", *POLICY)
    accepted(chain(leaf(DNS("x.example"), policies=[P2]), inter), tmp_path, *POLICY)


def test_inhibit_any_policy(tmp_path: Path) -> None:
    inter = Spec("Issuing", path_length=0, policies=[ANY], inhibit_any=0,
                 policy_constraints=x509.PolicyConstraints(0, None))
    bad = chain(leaf(DNS("x.example"), policies=[ANY]), inter)
    refused(bad, "policy_constraints", "issuing")
    openssl_rejects(bad, tmp_path, "no explicit policy", *POLICY)
    accepted(chain(leaf(DNS("x.example"), policies=[P2]), inter), tmp_path, *POLICY)


# -- extended key usage --------------------------------------------------------------------


def test_eku_of_the_issuer_limits_the_leaf(tmp_path: Path) -> None:
    inter = Spec("Client Issuing", path_length=0, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    bad = chain(leaf(DNS("x.example"), eku=[ExtendedKeyUsageOID.SERVER_AUTH]), inter)
    err = refused(bad, "extended_key_usage", "issuing")
    assert ExtendedKeyUsageOID.SERVER_AUTH.dotted_string in str(err)
    openssl_rejects(bad, tmp_path, "unsuitable certificate purpose", "-purpose", "sslserver")
    accepted(chain(leaf(DNS("x.example"), eku=[ExtendedKeyUsageOID.CLIENT_AUTH]), inter),
             tmp_path, "-purpose", "sslclient")


def test_ocsp_signing_is_exempt_from_eku_nesting() -> None:
    inter = Spec("Client Issuing", path_length=0, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    chain(leaf(DNS("x.example"), eku=[ExtendedKeyUsageOID.OCSP_SIGNING]), inter).checker()


def test_message_names_the_constraint_and_the_ca() -> None:
    inter = Spec("Audit Issuing", path_length=0, nc=nc([DNS("audit.test")]))
    err = refused(chain(leaf(DNS("www.other.test")), inter), "name_constraints")
    text = str(err)
    assert "name constraints of CA 'issuing'" in text
    assert "CN=Audit Issuing" in text
    assert "permitted subtrees (audit.test)" in text
