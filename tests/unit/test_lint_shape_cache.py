"""The memoised leaf lint (``appliance.lint.shape_cache``) says what pkilint says.

Every certificate here is linted twice: through a ``ShapeCache`` and by
``lint_certificate(der, "leaf")`` (pkilint's own walk); the findings must be equal, in order,
on the first lint of a shape (miss), the second and later ones (hits), with shapes
interleaved. The certificates are real ``cryptography`` builds (and raw DER where
``cryptography`` refuses to make the malformed value), in the shapes the pipeline makes and
the ways they go wrong.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    ExtensionOID,
    NameOID,
)

from appliance import lint
from appliance.lint import Finding, LintError
from appliance.lint.shape_cache import ShapeCache, lint_leaf

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
DER = serialization.Encoding.DER
ISSUER = x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Appliance"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "Issuing CA 1")])
CA_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
KU_NAMES = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
            "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]


def _ku(*bits: str) -> x509.KeyUsage:
    return x509.KeyUsage(**{n: n in bits for n in KU_NAMES})  # type: ignore[arg-type]


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _raw_san_ip(octets: bytes) -> x509.UnrecognizedExtension:
    """A subjectAltName with one iPAddress of any length (cryptography makes only 4 or 16)."""
    gn = b"\x87" + _der_len(len(octets)) + octets
    return x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME,
                                      b"\x30" + _der_len(len(gn)) + gn)


def build(*, key: Any = None, cn: str | None = "host.example.com",
          sans: list[x509.GeneralName] | x509.UnrecognizedExtension | None = None,
          san_critical: bool = False, ku: x509.KeyUsage | None = None,
          eku: list[x509.ObjectIdentifier] | None = None, ca: bool = False,
          aki: bool = True, policies: tuple[str, ...] = ("2.23.140.1.2.1",),
          crl_url: str = "http://pki.example.com/crl/ca-1.crl",
          subject_email: str | None = None,
          days: int = 30) -> bytes:
    """A leaf the way the pipeline's templates make one: the fixed part (issuer, KU, EKU,
    basicConstraints, policies, CRL DP, AIA, AKI) from the arguments, the per-request part
    (serial, validity, subject, key, SAN, SKI) varying."""
    subject_key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    attrs = [] if cn is None else [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if subject_email is not None:
        attrs.append(x509.NameAttribute(NameOID.EMAIL_ADDRESS, subject_email))
    b = (x509.CertificateBuilder().subject_name(x509.Name(attrs)).issuer_name(ISSUER)
         .public_key(subject_key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=days)))
    if sans is None:
        sans = [x509.DNSName(cn or "host.example.com")]
    if isinstance(sans, x509.UnrecognizedExtension):
        b = b.add_extension(sans, critical=san_critical)
    elif sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=san_critical)
    b = (b.add_extension(ku or _ku("digital_signature"), critical=True)
         .add_extension(x509.ExtendedKeyUsage(
             eku if eku is not None else [ExtendedKeyUsageOID.SERVER_AUTH,
                                          ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if policies:
        b = b.add_extension(x509.CertificatePolicies([
            x509.PolicyInformation(x509.ObjectIdentifier(p), None) for p in policies]),
            critical=False)
    b = (b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
         .add_extension(x509.AuthorityInformationAccess([
             x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                    x509.UniformResourceIdentifier("http://pki.example.com/ocsp")),
             x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                    x509.UniformResourceIdentifier(
                                        "http://pki.example.com/ca/ca-1.crt"))]),
             critical=False)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key.public_key()),
                        critical=False))
    if aki:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            CA_KEY.public_key()), critical=False)
    return bytes(b.sign(CA_KEY, hashes.SHA256()).public_bytes(DER))


def _n(i: int) -> str:
    return f"device-{i}.fleet.example.com"


# Each shape: a function of the instance number, so instances differ in what varies.
SHAPES: dict[str, Callable[[int], bytes]] = {
    "ec-dns-ip": lambda i: build(cn=_n(i), sans=[
        x509.DNSName(_n(i)), x509.IPAddress(ipaddress.ip_address(f"10.0.{i}.1")),
        x509.IPAddress(ipaddress.ip_address(f"2001:db8::{i + 1}"))]),
    "rsa-dns": lambda i: build(key=RSA_KEY, cn=_n(i), ku=_ku(
        "digital_signature", "key_encipherment"), sans=[x509.DNSName(_n(i))]),
    "email": lambda i: build(cn=f"user{i}@example.com", sans=[
        x509.RFC822Name(f"user{i}@example.com")], ku=_ku("digital_signature", "key_agreement"),
        eku=[ExtendedKeyUsageOID.EMAIL_PROTECTION], policies=()),
    "uri-spiffe": lambda i: build(cn=f"svc{i}", sans=[
        x509.UniformResourceIdentifier(f"spiffe://example.org/svc{i}"),
        x509.UniformResourceIdentifier(f"https://svc{i}.example.org/")]),
    "long-dns": lambda i: build(cn=None, san_critical=True, sans=[
        x509.DNSName(".".join(["a" * 60] * 4) + f".x{i}.example.com")]),
    "ip-5-octets": lambda i: build(cn=_n(i), sans=_raw_san_ip(bytes([10, 0, 0, i % 250, 1]))),
    "ip-3-octets": lambda i: build(cn=_n(i), sans=_raw_san_ip(bytes([10, 0, i % 250]))),
    "ip-4-octets-raw": lambda i: build(cn=_n(i), sans=_raw_san_ip(bytes([10, 0, 0, i % 250]))),
    "empty-subject-critical-san": lambda i: build(cn=None, san_critical=True,
                                                  sans=[x509.DNSName(_n(i))]),
    "empty-subject-noncritical-san": lambda i: build(cn=None, sans=[x509.DNSName(_n(i))]),
    "wildcard": lambda i: build(cn=f"*.zone{i}.example.com",
                                sans=[x509.DNSName(f"*.zone{i}.example.com")]),
    "no-aki": lambda i: build(cn=_n(i), aki=False),
    "ca-true-leaf": lambda i: build(cn=_n(i), ca=True, ku=_ku("digital_signature",
                                                              "key_cert_sign")),
    "ee-keycertsign": lambda i: build(cn=_n(i), ku=_ku("digital_signature", "key_cert_sign")),
    "ec-key-encipherment": lambda i: build(cn=_n(i), ku=_ku("digital_signature",
                                                            "key_encipherment")),
    "rsa-key-agreement": lambda i: build(key=RSA_KEY, cn=_n(i), ku=_ku("key_agreement")),
    "subject-email-not-in-san": lambda i: build(cn=_n(i), subject_email=f"u{i}@example.com"),
    "no-san": lambda i: build(cn=_n(i), sans=[]),
    "bad-crl-uri": lambda i: build(cn=_n(i), crl_url="not a uri"),
    "duplicate-policies": lambda i: build(cn=_n(i), policies=("1.3.6.1.4.1.99.1",) * 2),
    "generalized-time": lambda i: build(cn=_n(i), days=365 * 30 + i),
}


@pytest.fixture(scope="module")
def corpus() -> list[tuple[str, bytes]]:
    """Three instances of every shape, interleaved in a fixed random order."""
    items = [(name, make(i)) for i in range(3) for name, make in SHAPES.items()]
    random.Random(16).shuffle(items)
    return items


@pytest.fixture(scope="module")
def reference(corpus: list[tuple[str, bytes]]) -> dict[bytes, list[Finding]]:
    return {der: lint.lint_certificate(der, "leaf") for _, der in corpus}


def test_every_shape_equals_pkilint_on_misses_and_hits(
        corpus: list[tuple[str, bytes]], reference: dict[bytes, list[Finding]]) -> None:
    cache = ShapeCache()
    for round_ in range(3):
        for name, der in corpus:
            assert cache.lint_leaf(der) == reference[der], (name, round_)
    info = cache.info()
    assert info.hits > 0 and info.entries > 0  # the fast path ran, not only the fallback


def test_the_corpus_has_the_findings_it_is_meant_to_have(
        corpus: list[tuple[str, bytes]], reference: dict[bytes, list[Finding]]) -> None:
    """So the equality above compares real findings, not empty lists."""
    codes: dict[str, set[str]] = {}
    for name, der in corpus:
        codes.setdefault(name, set()).update(f.code for f in reference[der])
    assert "pkix.dnsname_domain_name_too_long" in codes["long-dns"]
    assert "pkix.ip_address_wrong_length" in codes["ip-5-octets"]
    assert "pkix.ip_address_wrong_length" in codes["ip-3-octets"]
    assert "pkix.ip_address_wrong_length" not in codes["ip-4-octets-raw"]
    assert "pkix.san_extension_not_critical_empty_subject" in codes[
        "empty-subject-noncritical-san"]
    assert "pkix.san_extension_not_critical_empty_subject" not in codes[
        "empty-subject-critical-san"]
    assert "pkix.invalid_domain_name_syntax" in codes["wildcard"]
    assert "pkix.invalid_uri_syntax" in codes["uri-spiffe"]
    assert "pkix.authority_key_identifier_extension_absent" in codes["no-aki"]
    assert "appliance.certificate_kind_mismatch" in codes["ca-true-leaf"]
    assert "pkix.ee_certificate_keycertsign_keyusage_set" in codes["ee-keycertsign"]
    assert "pkix.ee_certificate_keycertsign_keyusage_set" not in codes["ca-true-leaf"]
    assert any("key_usage" in c or "keyusage" in c for c in codes["ec-key-encipherment"])
    assert any("key_usage" in c or "keyusage" in c for c in codes["rsa-key-agreement"])
    assert "pkix.subject_email_address_not_in_san" in codes["subject-email-not-in-san"]
    assert "pkix.invalid_uri_syntax" in codes["bad-crl-uri"]
    assert "pkix.duplicate_certificate_policy_oids" in codes["duplicate-policies"]


def _exotic(i: int, *, ca: bool, variant: int) -> bytes:
    """Extensions the shipped templates do not make but a custom template (or an extension
    given as raw DER) can: the validators behind them read is_ca, other extensions or
    nested names, so they exercise the audit and the deferred decoding."""
    key = ec.generate_private_key(ec.SECP256R1())
    dir_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                          x509.NameAttribute(NameOID.EMAIL_ADDRESS, "pki@example.com")])
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, _n(i))]))
         .issuer_name(ISSUER).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=30))
         .add_extension(x509.SubjectAlternativeName([x509.DNSName(_n(i))]), critical=False)
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(_ku("digital_signature", "key_cert_sign", "crl_sign"), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                        critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             CA_KEY.public_key()), critical=False)
         .add_extension(x509.IssuerAlternativeName([
             x509.DirectoryName(dir_name), x509.RFC822Name("pki@example.com"),
             x509.OtherName(x509.ObjectIdentifier("1.3.6.1.5.5.7.8.9"),
                            b"\x0c\x0fpki@example.com")]), critical=variant == 1)
         .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
             x509.ObjectIdentifier("2.5.29.32.0"),
             ["https://pki.example.com/cps", x509.UserNotice(
                 x509.NoticeReference("Example", [1]), "explicit text")])]), critical=False)
         .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
             None, None, None, [x509.DirectoryName(dir_name)])]), critical=False))
    if variant == 0:
        b = (b.add_extension(x509.NameConstraints(
                permitted_subtrees=[x509.DNSName("example.com"),
                                    x509.IPAddress(ipaddress.ip_network("10.0.0.0/8"))],
                excluded_subtrees=None), critical=True)
             .add_extension(x509.PolicyConstraints(require_explicit_policy=0,
                                                   inhibit_policy_mapping=None), critical=True)
             .add_extension(x509.InhibitAnyPolicy(0), critical=True)
             .add_extension(x509.UnrecognizedExtension(  # policyMappings 99.1 -> 99.2
                 x509.ObjectIdentifier("2.5.29.33"),
                 b"\x30\x14\x30\x12\x06\x07\x2b\x06\x01\x04\x01\x63\x01"
                 b"\x06\x07\x2b\x06\x01\x04\x01\x63\x02"), critical=True))
    elif variant == 1:
        # CT poison and an (empty) SCT list together; EKU timeStamping, not critical.
        b = (b.add_extension(x509.PrecertPoison(), critical=True)
             .add_extension(x509.UnrecognizedExtension(
                 x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2"), b"\x04\x02\x00\x00"),
                 critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]),
                            critical=False))
    else:
        # RFC 3739 QC statements with the obsolete pkixQCSyntax-v1 (pkilint's RFC 5280 profile
        # does not decode qcStatements: an unknown extension to it); a broken value.
        qc = b"\x30\x0c\x30\x0a\x06\x08\x2b\x06\x01\x05\x05\x07\x0b\x01"
        b = (b.add_extension(x509.UnrecognizedExtension(
                x509.ObjectIdentifier("1.3.6.1.5.5.7.1.3"), qc), critical=False)
             .add_extension(x509.UnrecognizedExtension(
                 x509.ObjectIdentifier("2.5.29.36"), b"\x30\x03\x80\x01"), critical=True))
    return bytes(b.sign(CA_KEY, hashes.SHA256()).public_bytes(DER))


def test_exotic_extensions_in_ee_and_ca_certificates_equal_pkilint() -> None:
    """The same extension bytes in end-entity and CA certificates (is_ca in the key), nested
    names inside memoised extensions (deferred decoding of directoryName and otherName), and
    the cross-field validators behind CT poison + SCT list and EKU timestamping, a value that
    does not decode, all on hits."""
    items = [_exotic(i, ca=ca, variant=v) for i in range(3) for ca in (False, True)
             for v in range(3)]
    random.Random(5).shuffle(items)
    expected = {der: lint.lint_certificate(der, "leaf") for der in items}
    cache = ShapeCache()
    for _ in range(2):
        for der in items:
            assert cache.lint_leaf(der) == expected[der]
    assert cache.info().hits > 0
    codes = {f.code for der in items for f in expected[der]}
    for code in ("pkix.name_constraints_in_ee_certificate",
                 "pkix.end_entity_policy_constraints_extension_present",
                 "pkix.ct_precert_poison_and_sctlist_extensions_present",
                 "pkix.sct_list_empty",
                 "pkix.extended_key_usage_extension_with_timestamping_not_critical",
                 "pkix.issuer_alt_name_extension_critical",
                 "pkix.certificate_policies_usernotice_has_noticeref",
                 "pkix.end_entity_policy_mappings_extension_present",
                 "itu.invalid_asn1_syntax"):
        assert code in codes, code


def _warm(cache: ShapeCache, **fixed: Any) -> None:
    """Lint two clean certificates of a shape so its fixed segments are memoised."""
    for i in range(2):
        der = build(cn=_n(100 + i), **fixed)
        assert lint.blocking(cache.lint_leaf(der)) == []


def _hits_during(cache: ShapeCache, der: bytes) -> tuple[list[Finding], int]:
    before = cache.info().hits
    findings = cache.lint_leaf(der)
    return findings, cache.info().hits - before


@pytest.mark.parametrize("bad, code", [
    (lambda: build(cn=None, san_critical=True,
                   sans=[x509.DNSName(".".join(["b" * 63] * 4) + ".example.com")]),
     "pkix.dnsname_domain_name_too_long"),
    (lambda: build(cn=_n(7), sans=_raw_san_ip(b"\x0a\x00\x00\x01\x02")),
     "pkix.ip_address_wrong_length"),
    (lambda: build(cn=_n(7), sans=_raw_san_ip(b"\x0a\x00\x01")),
     "pkix.ip_address_wrong_length"),
])
def test_a_bad_per_request_field_is_refused_on_a_cache_hit(bad: Callable[[], bytes],
                                                           code: str) -> None:
    cache = ShapeCache()
    _warm(cache)
    der = bad()
    findings, hits = _hits_during(cache, der)
    assert hits > 0  # the fixed part came from the memo ...
    assert findings == lint.lint_certificate(der, "leaf")
    assert code in {f.code for f in lint.blocking(findings)}  # ... the bad field did not
    with pytest.raises(LintError):
        lint.require_clean(findings, "the certificate")


def test_cross_field_checks_run_on_a_hit() -> None:
    """Fixed part byte-identical to the memoised shape; what differs is per request, and
    the validators that read several parts (SAN criticality vs the subject, KU vs the key
    type, subject email vs SAN, AKI presence) still report."""
    cache = ShapeCache()
    _warm(cache)
    # SubjectAlternativeNameCriticalityValidator: reads the subject from the SAN extension.
    der = build(cn=None, sans=[x509.DNSName(_n(8))])
    findings, hits = _hits_during(cache, der)
    assert hits > 0
    assert "pkix.san_extension_not_critical_empty_subject" in {f.code for f in findings}
    assert findings == lint.lint_certificate(der, "leaf")
    # SubjectEmailAddressInSanValidator: the subject's email must be in the SAN.
    der = build(cn=_n(9), subject_email="nobody@example.com")
    findings, hits = _hits_during(cache, der)
    assert hits > 0
    assert "pkix.subject_email_address_not_in_san" in {f.code for f in findings}
    assert findings == lint.lint_certificate(der, "leaf")

    # SpkiKeyUsageConsistencyValidator: the same KU bytes are fine for RSA, not for EC.
    ku = _ku("digital_signature", "key_encipherment")
    _warm(cache, key=RSA_KEY, ku=ku)
    der = build(cn=_n(10), ku=ku)
    findings, hits = _hits_during(cache, der)
    assert hits > 0
    assert findings == lint.lint_certificate(der, "leaf")
    assert findings != cache.lint_leaf(build(key=RSA_KEY, cn=_n(10), ku=ku))
    assert lint.blocking(findings)


def test_is_ca_is_part_of_the_key() -> None:
    """The same KU bytes (keyCertSign) are an error in an end-entity certificate and not in
    a CA certificate: a memoised EE result must not answer for a CA (KeyUsageValidator reads
    document.is_ca)."""
    cache = ShapeCache()
    ku = _ku("digital_signature", "key_cert_sign")
    ee = [build(cn=_n(i), ku=ku) for i in range(2)]
    ca = [build(cn=_n(i), ku=ku, ca=True) for i in range(2)]
    for der in ee + ca + ee + ca:
        assert cache.lint_leaf(der) == lint.lint_certificate(der, "leaf")
    assert "pkix.ee_certificate_keycertsign_keyusage_set" in {
        f.code for f in cache.lint_leaf(ee[0])}
    assert "pkix.ee_certificate_keycertsign_keyusage_set" not in {
        f.code for f in cache.lint_leaf(ca[0])}


def test_the_cache_is_bounded(corpus: list[tuple[str, bytes]],
                              reference: dict[bytes, list[Finding]]) -> None:
    cache = ShapeCache(max_entries=5)
    for _ in range(2):
        for name, der in corpus:
            assert cache.lint_leaf(der) == reference[der], name
            assert cache.info().entries <= 5
    assert cache.info().entries == 5
    with pytest.raises(ValueError):
        ShapeCache(max_entries=0)


def test_concurrent_use_equals_serial(corpus: list[tuple[str, bytes]],
                                      reference: dict[bytes, list[Finding]]) -> None:
    cache = ShapeCache(max_entries=64)  # small: evictions race with lookups too
    ders = [der for _, der in corpus]

    def run(offset: int) -> list[list[Finding]]:
        return [cache.lint_leaf(ders[(offset + k) % len(ders)]) for k in range(2 * len(ders))]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(run, range(8)))
    for offset, out in enumerate(outputs):
        for k, findings in enumerate(out):
            assert findings == reference[ders[(offset + k) % len(ders)]]


@pytest.mark.parametrize("data", [
    b"", b"\x30", b"\x30\x03\x02\x01\x01", b"not der at all", b"\x30\x80\x00\x00",
])
def test_undecodable_input_is_what_lint_certificate_says(data: bytes) -> None:
    assert lint_leaf(data) == lint.lint_certificate(data, "leaf")
    assert lint.blocking(lint_leaf(data))


def test_truncated_and_trailing_octets(corpus: list[tuple[str, bytes]]) -> None:
    der = corpus[0][1]
    for data in (der[:-1], der + b"\x00", der[:200]):
        assert lint_leaf(data) == lint.lint_certificate(data, "leaf")
        assert lint.blocking(lint_leaf(data))


def test_refused_before_decoding_like_lint_certificate() -> None:
    with pytest.raises(TypeError):
        lint_leaf("text")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        lint_leaf(b"\x30" * (lint.MAX_DER_BYTES + 1))


def test_the_installed_pkilint_is_the_audited_release() -> None:
    """Under another pkilint release lint_leaf memoises nothing (correct, slower): a pkilint
    upgrade fails here so that shape_cache's audit of the validators is redone with it."""
    from importlib import metadata

    from appliance.lint import shape_cache

    assert metadata.version("pkilint") == shape_cache.AUDITED_PKILINT
    assert shape_cache._audited_release()


def test_the_installed_pkilint_tree_is_walked_with_memo() -> None:
    """If a pkilint upgrade adds an unaudited match, the container falls back to pkilint's
    own walk (correct, but slower): this says which, so the audit gets redone."""
    from appliance.lint import pkilint_gate, shape_cache

    cache = ShapeCache()
    cache.lint_leaf(build())
    top = pkilint_gate._cached(("pkix-certificate",), pkilint_gate._pkix_certificate_validator)
    not_walked = [getattr(v, "_path", None) for v in top.validators
                  if hasattr(v, "validators") and not cache._is_walkable(v)]
    assert cache._is_walkable(top)
    assert not_walked == []
    unaudited = [type(v).__name__ for v in _leaves(top) if not shape_cache._match_audited(v)]
    assert unaudited == []


@pytest.mark.parametrize("shape", ["ec-dns-ip", "ca-true-leaf", "bad-crl-uri", "email"])
def test_a_deferred_decoding_gives_pkilint_the_same_tree(shape: str) -> None:
    """Every extension's decoding deferred before pkilint's own full walk (which reads every
    extnValue, so each deferral fires, some from inside document.is_ca): the findings are
    those of the plain lint."""
    from pkilint import loader

    from appliance.lint import pkilint_gate, shape_cache

    der = SHAPES[shape](1)
    top = pkilint_gate._cached(("pkix-certificate",), pkilint_gate._pkix_certificate_validator)
    decoding = top.validators[0]
    doc = loader.load_der_certificate(der, "lint")
    extensions = doc.root.navigate("tbsCertificate.extensions").children.values()
    for ext in extensions:
        shape_cache._defer_decoding(decoding, ext)
    assert all("_shape_cache_pending" in e.children["extnValue"].__dict__ for e in extensions)
    findings = (pkilint_gate._findings(top.validate(doc.root))
                + pkilint_gate._appliance_findings(doc, "leaf"))
    assert findings == lint.lint_certificate(der, "leaf")
    assert not any("_shape_cache_pending" in e.children["extnValue"].__dict__
                   for e in extensions)


def _leaves(v: Any) -> list[Any]:
    if hasattr(v, "validators"):
        return [leaf for c in v.validators for leaf in _leaves(c)]
    return [v]


def test_mutated_certificates_equal_pkilint(corpus: list[tuple[str, bytes]]) -> None:
    """Seeded byte mutations of memoised shapes (a changed octet anywhere: in a fixed
    extension, the issuer, a per-request field, a length): whatever pkilint makes of the
    result, the memoised lint says the same, with the cache warm from the originals."""
    rng = random.Random(1605)
    cache = ShapeCache()
    originals = [der for _, der in corpus]
    for der in originals:
        cache.lint_leaf(der)
    for n in range(300):
        data = bytearray(rng.choice(originals))
        for _ in range(1 + n % 3):
            data[rng.randrange(4, len(data))] = rng.randrange(256)
        mutated = bytes(data)
        assert cache.lint_leaf(mutated) == lint.lint_certificate(mutated, "leaf"), n
