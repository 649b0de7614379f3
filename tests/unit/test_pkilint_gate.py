"""The pkilint gate: what pkilint accepts and refuses in what our CA signs.

Certificates, CRLs and OCSP responses are built with ``cryptography`` and
software keys: these test the linting, not the token.
"""

from __future__ import annotations

import datetime as dt
import pickle
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import (
    AuthorityInformationAccessOID,
    ExtendedKeyUsageOID,
    NameOID,
    ObjectIdentifier,
)

from appliance import lint as gate
from appliance.errors import ApplianceError
from appliance.lint import Finding, LintError, blocking, require_clean

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
DER = serialization.Encoding.DER
CRL_URL = "http://pki.example.com/crl/ca.crl"
OCSP_URL = "http://ocsp.example.com/"
CA_ISSUERS_URL = "http://pki.example.com/ca.der"


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Appliance"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])


def _ku(**bits: bool) -> x509.KeyUsage:
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"]
    return x509.KeyUsage(**{n: bits.get(n, False) for n in names})


CA_KU = _ku(key_cert_sign=True, crl_sign=True)


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any,
             days: int = 3650) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW).not_valid_after(NOW + dt.timedelta(days=days)))


def _ski(public_key: Any) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(public_key)


def _aki(issuer_key: Any) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _root_builder(key: Any, *, ku: x509.KeyUsage = CA_KU, ku_critical: bool = True,
                  bc_critical: bool = True, aki: bool = False) -> x509.CertificateBuilder:
    b = (_builder(_name("Root CA"), _name("Root CA"), key.public_key())
         .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=bc_critical)
         .add_extension(ku, critical=ku_critical)
         .add_extension(_ski(key.public_key()), critical=False))
    if aki:
        b = b.add_extension(_aki(key), critical=False)
    return b


def _sign(b: Any, key: Any, alg: Any = None) -> bytes:
    algorithm = hashes.SHA256() if alg is None else alg
    return bytes(b.sign(key, algorithm).public_bytes(DER))


def _revocation_info(b: x509.CertificateBuilder) -> x509.CertificateBuilder:
    return (b.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(CRL_URL)], relative_name=None,
                reasons=None, crl_issuer=None)]), critical=False)
            .add_extension(x509.AuthorityInformationAccess([
                x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                       x509.UniformResourceIdentifier(OCSP_URL)),
                x509.AccessDescription(AuthorityInformationAccessOID.CA_ISSUERS,
                                       x509.UniformResourceIdentifier(CA_ISSUERS_URL)),
            ]), critical=False))


@pytest.fixture(scope="module")
def root_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def root(root_key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    return x509.load_der_x509_certificate(_sign(_root_builder(root_key), root_key))


@pytest.fixture(scope="module")
def int_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _intermediate(int_key: Any, root_key: Any, **ku_bits: bool) -> bytes:
    ku = _ku(**ku_bits) if ku_bits else CA_KU
    b = (_builder(_name("Issuing CA 1"), _name("Root CA"), int_key.public_key(), days=1825)
         .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
         .add_extension(ku, critical=True)
         .add_extension(_ski(int_key.public_key()), critical=False)
         .add_extension(_aki(root_key), critical=False))
    return _sign(_revocation_info(b), root_key)


def _ocsp_signer(signer_key: Any, ca_key: Any) -> bytes:
    b = (_builder(_name("Issuing CA 1 OCSP Responder"), _name("Issuing CA 1"),
                  signer_key.public_key(), days=30)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_ku(digital_signature=True), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False)
         .add_extension(x509.OCSPNoCheck(), critical=False)
         .add_extension(_ski(signer_key.public_key()), critical=False)
         .add_extension(_aki(ca_key), critical=False))
    return _sign(b, ca_key)


def _codes(findings: list[Finding]) -> set[str]:
    return {f.code for f in findings}


def _at_least(findings: list[Finding], severity: str) -> list[Finding]:
    order = ["FATAL", "ERROR", "WARNING", "NOTICE", "INFO", "DEBUG"]
    return [f for f in findings if order.index(f.severity) <= order.index(severity)]


# --- certificates that our ceremonies produce --------------------------------------------------


def test_well_formed_root_has_no_warnings(root: x509.Certificate) -> None:
    findings = gate.lint_certificate(root.public_bytes(DER), "root")
    assert _at_least(findings, "NOTICE") == []
    # pkilint reports which RFC 5280 SKI method it recognised, as INFO.
    assert _codes(findings) == {"pkix.subject_key_identifier_method_1_identified"}
    assert all(isinstance(f, Finding) and f.node for f in findings)


@pytest.mark.parametrize("key_alg", ["p384-sha384", "p521-sha512", "rsa3072-pss", "rsa3072-pkcs1"])
def test_other_root_algorithms_lint_clean(key_alg: str, rsa_key: rsa.RSAPrivateKey) -> None:
    key: Any
    alg: Any
    if key_alg == "p384-sha384":
        key, alg = ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()
    elif key_alg == "p521-sha512":
        key, alg = ec.generate_private_key(ec.SECP521R1()), hashes.SHA512()
    else:
        key, alg = rsa_key, hashes.SHA256()
    b = _root_builder(key)
    if key_alg == "rsa3072-pss":
        der = bytes(b.sign(key, alg, rsa_padding=padding.PSS(
            mgf=padding.MGF1(hashes.SHA256()), salt_length=32)).public_bytes(DER))
    else:
        der = _sign(b, key, alg)
    assert _at_least(gate.lint_certificate(der, "root"), "NOTICE") == []


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=3072)


def test_root_trial_signed_by_another_key_needs_aki(root_key: Any) -> None:
    """pkilint accepts a root without AKI only if the root verifies under its own key.

    A trial copy of a root, signed by a throw-away key before the token signs the
    real one, does not; with an AKI it lints clean either way.
    """
    throwaway = ec.generate_private_key(ec.SECP256R1())
    no_aki = _sign(_root_builder(root_key), throwaway)
    assert _codes(blocking(gate.lint_certificate(no_aki, "root"))) == {
        "pkix.authority_key_identifier_extension_absent"}
    with_aki = _sign(_root_builder(root_key, aki=True), throwaway)
    assert blocking(gate.lint_certificate(with_aki, "root")) == []


def test_well_formed_intermediate_lints_clean(int_key: Any, root_key: Any) -> None:
    findings = gate.lint_certificate(_intermediate(int_key, root_key), "intermediate")
    assert _at_least(findings, "NOTICE") == []


def test_ocsp_signer_lints_clean(int_key: Any) -> None:
    signer_key = ec.generate_private_key(ec.SECP256R1())
    findings = gate.lint_certificate(_ocsp_signer(signer_key, int_key), "ocsp-signer")
    assert _at_least(findings, "NOTICE") == []


def test_policies_and_critical_name_constraints_lint_clean(root_key: Any, int_key: Any) -> None:
    b = (_builder(_name("Issuing CA 2"), _name("Root CA"), int_key.public_key(), days=1825)
         .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
         .add_extension(CA_KU, critical=True)
         .add_extension(_ski(int_key.public_key()), critical=False)
         .add_extension(_aki(root_key), critical=False)
         .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
             ObjectIdentifier("1.3.6.1.4.1.55555.1.1"), None)]), critical=False)
         .add_extension(x509.NameConstraints(
             permitted_subtrees=[x509.DNSName("example.com")], excluded_subtrees=None),
             critical=True))
    findings = gate.lint_certificate(_sign(_revocation_info(b), root_key), "intermediate")
    assert _at_least(findings, "NOTICE") == []


# --- certificates pkilint refuses ----------------------------------------------------------------


def test_ca_without_keycertsign_is_blocked(int_key: Any, root_key: Any) -> None:
    der = _intermediate(int_key, root_key, crl_sign=True, digital_signature=True)
    bad = blocking(gate.lint_certificate(der, "intermediate"))
    assert _codes(bad) == {"pkix.ca_certificate_keycertsign_keyusage_not_set"}
    assert bad[0].severity == "ERROR"
    assert bad[0].node.startswith("certificate.tbsCertificate.extensions.")


def test_basic_constraints_not_critical_is_blocked_but_key_usage_not_critical_only_warns(
    root_key: Any,
) -> None:
    findings = gate.lint_certificate(_sign(_root_builder(root_key, bc_critical=False), root_key),
                                     "root")
    assert _codes(blocking(findings)) == {"pkix.basic_constraints_extension_not_critical"}

    findings = gate.lint_certificate(_sign(_root_builder(root_key, ku_critical=False), root_key),
                                     "root")
    assert blocking(findings) == []
    assert {(f.severity, f.code) for f in _at_least(findings, "WARNING")} == {
        ("WARNING", "pkix.key_usage_extension_not_critical")}


def test_empty_subject_ca_and_missing_ski_are_blocked(root_key: Any) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (_builder(x509.Name([]), _name("Root CA"), key.public_key())
         .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
         .add_extension(CA_KU, critical=True)
         .add_extension(_aki(root_key), critical=False))
    # pkilint itself does not object to the empty subject; our own check does.
    assert _codes(blocking(gate.lint_certificate(_sign(b, root_key), "intermediate"))) == {
        "pkix.certificate_skid_ca_missing", "appliance.ca_certificate_subject_empty"}
    with_ski = b.add_extension(_ski(key.public_key()), critical=False)
    assert _codes(blocking(gate.lint_certificate(_sign(with_ski, root_key), "intermediate"))) == {
        "appliance.ca_certificate_subject_empty"}


def test_kind_mismatch_is_blocked(root: x509.Certificate, int_key: Any, root_key: Any) -> None:
    root_der = root.public_bytes(DER)
    for kind in ("intermediate", "leaf", "ocsp-signer"):
        bad = blocking(gate.lint_certificate(root_der, kind))
        assert _codes(bad) == {"appliance.certificate_kind_mismatch"}, kind
    assert _codes(blocking(gate.lint_certificate(_intermediate(int_key, root_key), "root"))) == {
        "appliance.certificate_kind_mismatch"}


def test_skip_and_require_clean(int_key: Any, root_key: Any) -> None:
    code = "pkix.ca_certificate_keycertsign_keyusage_not_set"
    findings = gate.lint_certificate(_intermediate(int_key, root_key, crl_sign=True),
                                     "intermediate")
    assert blocking(findings, skip=[code]) == []
    require_clean(findings, "issuing CA certificate", skip=[code])

    with pytest.raises(LintError) as info:
        require_clean(findings, "issuing CA certificate")
    err = info.value
    assert isinstance(err, ApplianceError)
    assert err.code == "lint_failed"
    assert [f.code for f in err.findings] == [code]
    assert "issuing CA certificate" in str(err)
    assert f"ERROR {code} (at certificate.tbsCertificate.extensions." in str(err)
    copy = pickle.loads(pickle.dumps(err))
    assert (copy.findings, str(copy)) == (err.findings, str(err))


def test_warnings_never_block() -> None:
    findings = [Finding("x.warning", "WARNING", None, "n"), Finding("x.notice", "NOTICE", "m", "n")]
    assert blocking(findings) == []
    require_clean(findings, "thing")


def test_fatal_is_never_skipped() -> None:
    fatal = Finding("itu.invalid_asn1_syntax", "FATAL", "bad", "certificate")
    assert blocking([fatal], skip=["itu.invalid_asn1_syntax"]) == [fatal]


def test_undecodable_extension_is_fatal(root_key: Any) -> None:
    b = (_builder(_name("Issuing CA 3"), _name("Root CA"), root_key.public_key())
         .add_extension(x509.UnrecognizedExtension(x509.oid.ExtensionOID.BASIC_CONSTRAINTS,
                                                   b"\x30\x03\x01\x01"), critical=True)
         .add_extension(CA_KU, critical=True))
    bad = blocking(gate.lint_certificate(_sign(b, root_key), "intermediate"))
    assert any(f.severity == "FATAL" and f.code == "itu.invalid_asn1_syntax" for f in bad)


# --- TLS server (CA/B Forum) ---------------------------------------------------------------------


def _tls_leaf(issuer_key: Any) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.com")]),
                  _name("Issuing CA 1"), key.public_key(), days=90)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(_ku(digital_signature=True), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
         .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.com")]),
                        critical=False)
         .add_extension(x509.CertificatePolicies([x509.PolicyInformation(
             ObjectIdentifier("2.23.140.1.2.1"), None)]), critical=False)
         .add_extension(_aki(issuer_key), critical=False))
    return _sign(_revocation_info(b), issuer_key)


def test_tls_server_leaf(int_key: Any) -> None:
    der = _tls_leaf(int_key)
    detected = gate.lint_certificate(der, "tls-server")
    assert blocking(detected) == []
    explicit = gate.lint_certificate(der, "tls-server", tls_type="DV-FINAL-CERTIFICATE")
    assert explicit == detected
    # The same certificate as an OV certificate lacks the subject attributes OV requires.
    ov = blocking(gate.lint_certificate(der, "tls-server", tls_type="ov-final-certificate"))
    assert ov and all(f.code.startswith("cabf.") for f in ov)


def test_tls_type_is_checked(int_key: Any) -> None:
    der = _tls_leaf(int_key)
    with pytest.raises(ValueError, match="unknown TLS certificate type"):
        gate.lint_certificate(der, "tls-server", tls_type="NOT-A-TYPE")
    with pytest.raises(ValueError, match="tls_type"):
        gate.lint_certificate(der, "leaf", tls_type="DV-FINAL-CERTIFICATE")
    with pytest.raises(ValueError, match="kind"):
        gate.lint_certificate(der, "server")  # type: ignore[arg-type]


# --- CRLs ----------------------------------------------------------------------------------------


def _crl(ca_key: Any, *, number: bool = True, aki: bool = True, days: int = 7,
         reason: x509.ReasonFlags | None = None) -> bytes:
    b = (x509.CertificateRevocationListBuilder().issuer_name(_name("Issuing CA 1"))
         .last_update(NOW).next_update(NOW + dt.timedelta(days=days)))
    if number:
        b = b.add_extension(x509.CRLNumber(42), critical=False)
    if aki:
        b = b.add_extension(_aki(ca_key), critical=False)
    revoked = (x509.RevokedCertificateBuilder().serial_number(x509.random_serial_number())
               .revocation_date(NOW - dt.timedelta(hours=1)))
    if reason is not None:
        revoked = revoked.add_extension(x509.CRLReason(reason), critical=False)
    b = b.add_revoked_certificate(revoked.build())
    return bytes(b.sign(ca_key, hashes.SHA256()).public_bytes(DER))


def test_crl_with_number_and_aki_lints_clean(int_key: Any) -> None:
    assert _at_least(gate.lint_crl(_crl(int_key)), "NOTICE") == []


def test_crl_without_number_or_aki_is_blocked(int_key: Any) -> None:
    assert _codes(blocking(gate.lint_crl(_crl(int_key, number=False)))) == {
        "pkix.crl_number_missing"}
    assert _codes(blocking(gate.lint_crl(_crl(int_key, aki=False)))) == {
        "pkix.authority_key_identifier_missing"}


def test_crl_br_profile_validity_and_reasons(int_key: Any) -> None:
    long = _crl(int_key, days=30)
    assert blocking(gate.lint_crl(long)) == []
    assert _codes(blocking(gate.lint_crl(long, profile="br"))) == {
        "cabf.crl_invalid_validity_period"}
    assert blocking(gate.lint_crl(long, kind="arl", profile="br")) == []

    ca_compromise = _crl(int_key, reason=x509.ReasonFlags.ca_compromise)
    assert _codes(blocking(gate.lint_crl(ca_compromise, profile="br"))) == {
        "cabf.crl_prohibited_reason_code"}
    assert blocking(gate.lint_crl(ca_compromise, kind="arl", profile="br")) == []


def test_crl_arguments_are_checked(int_key: Any) -> None:
    der = _crl(int_key)
    with pytest.raises(ValueError, match="issuer_is_ca"):
        gate.lint_crl(der, issuer_is_ca=False)
    with pytest.raises(ValueError, match="kind"):
        gate.lint_crl(der, kind="delta")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="profile"):
        gate.lint_crl(der, profile="x")  # type: ignore[arg-type]


# --- OCSP responses ------------------------------------------------------------------------------


def _ocsp_response(ca_key: Any, *, by_hash: bool = True, with_certs: bool = False) -> bytes:
    ca = x509.load_der_x509_certificate(_intermediate(ca_key, ec.generate_private_key(
        ec.SECP256R1())))
    subject_key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.load_der_x509_certificate(_sign(
        _builder(_name("subject"), ca.subject, subject_key.public_key(), days=30), ca_key))
    encoding = ocsp.OCSPResponderEncoding.HASH if by_hash else ocsp.OCSPResponderEncoding.NAME
    b = (ocsp.OCSPResponseBuilder()
         .add_response(cert=subject, issuer=ca, algorithm=hashes.SHA1(),
                       cert_status=ocsp.OCSPCertStatus.GOOD, this_update=NOW,
                       next_update=NOW + dt.timedelta(days=1), revocation_time=None,
                       revocation_reason=None)
         .responder_id(encoding, ca)
         .add_extension(x509.OCSPNonce(b"\x01" * 16), critical=False))
    if with_certs:
        b = b.certificates([ca])
    return bytes(b.sign(ca_key, hashes.SHA256()).public_bytes(DER))


@pytest.mark.parametrize("by_hash", [True, False])
def test_ocsp_response_lints_clean(int_key: Any, by_hash: bool) -> None:
    findings = gate.lint_ocsp_response(_ocsp_response(int_key, by_hash=by_hash))
    assert _at_least(findings, "NOTICE") == []


def test_ocsp_response_with_certs_lints_clean(int_key: Any) -> None:
    assert blocking(gate.lint_ocsp_response(_ocsp_response(int_key, with_certs=True))) == []


def test_ocsp_unsuccessful_response_lints_clean() -> None:
    der = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.UNAUTHORIZED).public_bytes(DER)
    assert blocking(gate.lint_ocsp_response(der)) == []


# --- input that is not what it claims to be ------------------------------------------------------


MALFORMED = [
    b"\x30\x03\x02\x01",  # truncated
    b"",  # empty
    b"\x04\x00",  # not a SEQUENCE
    b"\x30\x00",  # SEQUENCE with none of the required fields
    b"\x30\x80\x00\x00",  # indefinite length (BER, not DER)
]


@pytest.mark.parametrize("der", MALFORMED)
@pytest.mark.parametrize("lint", [
    lambda d: gate.lint_certificate(d, "root"),
    lambda d: gate.lint_certificate(d, "tls-server"),
    gate.lint_crl,
    gate.lint_ocsp_response,
], ids=["cert", "tls", "crl", "ocsp"])
def test_malformed_der_is_one_fatal_finding(der: bytes, lint: Any) -> None:
    findings = lint(der)
    assert len(findings) == 1
    assert findings[0].severity == "FATAL"
    assert findings[0].code == "itu.invalid_asn1_syntax"
    assert findings[0].message
    with pytest.raises(LintError, match=re.escape("FATAL itu.invalid_asn1_syntax")):
        require_clean(findings, "thing", skip=["itu.invalid_asn1_syntax"])


def test_trailing_octets_are_fatal(root: x509.Certificate) -> None:
    findings = gate.lint_certificate(root.public_bytes(DER) + b"\x00\x00", "root")
    assert [(f.severity, f.code) for f in findings] == [("FATAL", "itu.invalid_asn1_syntax")]
    assert findings[0].message is not None and "trailing" in findings[0].message


def test_certificate_is_not_a_crl(root: x509.Certificate) -> None:
    findings = gate.lint_crl(root.public_bytes(DER))
    assert [(f.severity, f.code) for f in findings] == [("FATAL", "itu.invalid_asn1_syntax")]


def test_oversized_and_non_bytes_input_is_refused(root: x509.Certificate) -> None:
    big = b"\x30\x84" + (gate.MAX_DER_BYTES).to_bytes(4, "big") + b"\x00" * gate.MAX_DER_BYTES
    calls: list[Callable[[], list[Finding]]] = [
        lambda: gate.lint_certificate(big, "root"),
        lambda: gate.lint_crl(big),
        lambda: gate.lint_ocsp_response(big),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="at most 1000000"):
            call()
    with pytest.raises(TypeError):
        gate.lint_certificate(root.public_bytes(DER).hex(), "root")  # type: ignore[arg-type]
    # bytearray and memoryview are accepted as bytes
    der = root.public_bytes(DER)
    expected = gate.lint_certificate(der, "root")
    assert gate.lint_certificate(bytearray(der), "root") == expected  # type: ignore[arg-type]
    assert gate.lint_certificate(memoryview(der), "root") == expected  # type: ignore[arg-type]


# --- concurrency ---------------------------------------------------------------------------------


def test_concurrent_linting_matches_serial(root: x509.Certificate, int_key: Any,
                                           root_key: Any) -> None:
    jobs: list[tuple[Any, bytes]] = [
        (lambda d: gate.lint_certificate(d, "root"), root.public_bytes(DER)),
        (lambda d: gate.lint_certificate(d, "intermediate"),
         _intermediate(int_key, root_key, crl_sign=True)),
        (lambda d: gate.lint_certificate(d, "tls-server"), _tls_leaf(int_key)),
        (gate.lint_crl, _crl(int_key, number=False)),
        (gate.lint_ocsp_response, _ocsp_response(int_key)),
    ]
    expected = [lint(der) for lint, der in jobs]
    barrier = threading.Barrier(8)

    def run(i: int) -> list[list[Finding]]:
        barrier.wait()
        return [jobs[(i + k) % len(jobs)][0](jobs[(i + k) % len(jobs)][1])
                for k in range(len(jobs) * 4)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        outputs = list(pool.map(run, range(8)))
    for i, out in enumerate(outputs):
        for k, findings in enumerate(out):
            assert findings == expected[(i + k) % len(jobs)]
