"""Certificate templates: the shipped ones, the output schema, the builder and the sandbox.

Software keys and a software CA certificate: these test the templates and
the certificates they describe (linted with pkilint), not the token.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from appliance import lint
from appliance.errors import ApplianceError
from appliance.templates import build, inputs, limits, model
from appliance.templates import render as tr
from appliance.templates.errors import TemplateError, TemplateInputError, TemplateRefusal
from appliance.templates.shipped import builtin_templates

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
NOT_AFTER = NOW + dt.timedelta(days=90)
CRL = "http://crl.example.com/issuing.crl"
OCSP = "http://ocsp.example.com/"
CA_ISSUERS = "http://pki.example.com/issuing.der"
DER = serialization.Encoding.DER


# -- fixtures --------------------------------------------------------------------------------


class CA:
    def __init__(self, ski: bytes | None = None) -> None:
        self.key = ec.generate_private_key(ec.SECP384R1())
        self.name = x509.Name([
            x509.NameAttribute(NameOID.COUNTRY_NAME, "DE"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Appliance"),
            x509.NameAttribute(NameOID.COMMON_NAME, "Example Issuing CA"),
        ])
        ski_ext = (x509.SubjectKeyIdentifier(ski) if ski is not None
                   else x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()))
        self.cert = (
            x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(NOW - dt.timedelta(days=1))
            .not_valid_after(NOW + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .add_extension(ski_ext, critical=False)
            .sign(self.key, hashes.SHA384())
        )
        self.authority = inputs.AuthorityInfo.of_certificate(
            "issuing", self.cert, crl_urls=[CRL], ocsp_urls=[OCSP], ca_issuers_urls=[CA_ISSUERS])

    def issue(self, desc: model.CertificateDescription, public_key: Any, *,
              allow_ca: bool = False) -> x509.Certificate:
        builder = build.to_builder(desc, public_key=public_key, issuer=self.cert,
                                   serial=x509.random_serial_number(), not_before=NOW,
                                   not_after=NOT_AFTER, allow_ca=allow_ca)
        return builder.sign(self.key, hashes.SHA384())


@pytest.fixture(scope="module")
def ca() -> CA:
    return CA()


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr(key: Any, cn: str | None = None, sans: list[x509.GeneralName] | None = None,
        **attrs: str) -> x509.CertificateSigningRequest:
    names = [x509.NameAttribute(oid, attrs[k]) for k, oid in
             (("C", NameOID.COUNTRY_NAME), ("O", NameOID.ORGANIZATION_NAME)) if k in attrs]
    if cn is not None:
        names.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(names))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def template_input(ca: CA, request: x509.CertificateSigningRequest, *,
                   allow_data: bool = False, **kw: Any) -> inputs.TemplateInput:
    return inputs.TemplateInput.from_csr(
        request, provisioner=inputs.ProvisionerInfo("test", "jwk", allow_template_data=allow_data),
        authority=ca.authority, not_before=NOW, not_after=NOT_AFTER, **kw)


def shipped(name: str, inp: inputs.TemplateInput) -> model.CertificateDescription:
    return tr.render(name, builtin_templates()[name], inp)


def assert_lints_clean(cert: x509.Certificate, *kinds: Any) -> None:
    """No ERROR or FATAL finding -- except pkilint's URI check on spiffe: and urn: URIs.

    pkilint 0.13 checks URIs with ``validators.url``, which knows only web and
    a few other schemes (ftp, git, http(s), rtsp, sftp, ssh, telnet), so every
    SPIFFE ID is "invalid URI syntax" to it. Our own check (RFC 3986 syntax,
    SPIFFE ID rules) has passed these; the finding is pkilint's limitation.
    """
    der = cert.public_bytes(DER)
    for kind in kinds or ("leaf",):
        bad = [f for f in lint.blocking(lint.lint_certificate(der, kind))
               if not (f.code == "pkix.invalid_uri_syntax" and f.message
                       and ('"spiffe://' in f.message or '"urn:' in f.message))]
        assert bad == [], f"{kind}: {bad}"


def ext(cert: x509.Certificate, cls: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(cls)


def ku_bits(cert: x509.Certificate) -> set[str]:
    ku = ext(cert, x509.KeyUsage).value
    names = ["digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign"]
    return {n for n in names if getattr(ku, n)}


def sans_of(cert: x509.Certificate) -> list[str]:
    return [str(getattr(g, "value", g)) for g in ext(cert, x509.SubjectAlternativeName).value]


def cn_of(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def dns(*names: str) -> list[x509.GeneralName]:
    return [x509.DNSName(n) for n in names]


def render_src(source: str, variables: dict[str, Any] | None = None, **kw: Any) -> Any:
    return tr.render("test", source, variables if variables is not None else {}, **kw)


def minimal(**fields: Any) -> str:
    import json

    body = {"subject": {"CN": "x.example.com"}, **fields}
    return json.dumps(body)


# -- the shipped templates -------------------------------------------------------------------


def test_builtin_templates_are_the_six_documented() -> None:
    assert set(builtin_templates()) == {"tls-server", "tls-client", "mtls-service",
                                        "smime-email", "code-signing", "iot-device",
                                        "ra-credential"}
    for name, source in builtin_templates().items():
        tr.check_template(name, source)


def test_tls_server_rsa(ca: CA, rsa_key: rsa.RSAPrivateKey) -> None:
    request = csr(rsa_key, "ignored-cn.example.net",
                  [*dns("www.example.com", "example.com"),
                   x509.IPAddress(ipaddress.ip_address("93.184.216.34"))])
    desc = shipped("tls-server", template_input(ca, request))
    cert = ca.issue(desc, rsa_key.public_key())

    assert cn_of(cert) == ["www.example.com"]
    assert sans_of(cert) == ["www.example.com", "example.com", "93.184.216.34"]
    assert not ext(cert, x509.SubjectAlternativeName).critical
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH,
                                                           ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ku_bits(cert) == {"digital_signature", "key_encipherment"}
    assert ext(cert, x509.KeyUsage).critical
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert [p.policy_identifier.dotted_string for p in ext(cert, x509.CertificatePolicies).value] \
        == ["2.23.140.1.2.1"]
    assert ext(cert, x509.SubjectKeyIdentifier).value.digest == \
        x509.SubjectKeyIdentifier.from_public_key(rsa_key.public_key()).digest
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == \
        ext(ca.cert, x509.SubjectKeyIdentifier).value.digest
    crl = ext(cert, x509.CRLDistributionPoints).value
    assert [dp.full_name[0].value for dp in crl] == [CRL]
    aia = {(a.access_method, a.access_location.value)
           for a in ext(cert, x509.AuthorityInformationAccess).value}
    assert aia == {(AuthorityInformationAccessOID.OCSP, OCSP),
                   (AuthorityInformationAccessOID.CA_ISSUERS, CA_ISSUERS)}
    assert cert.not_valid_before_utc == NOW and cert.not_valid_after_utc == NOT_AFTER
    cert.verify_directly_issued_by(ca.cert)
    assert_lints_clean(cert, "leaf", "tls-server")


def test_tls_server_ec_ip_only_and_long_names(ca: CA, ec_key: ec.EllipticCurvePrivateKey) -> None:
    long_name = ("a" * 60) + ".example.com"  # too long for a CN
    request = csr(ec_key, None, dns(long_name, "short.example.com"))
    desc = shipped("tls-server", template_input(ca, request))
    cert = ca.issue(desc, ec_key.public_key())
    assert cn_of(cert) == ["short.example.com"]
    assert ku_bits(cert) == {"digital_signature"}
    assert_lints_clean(cert, "leaf", "tls-server")

    request = csr(ec_key, None, dns(long_name))
    cert = ca.issue(shipped("tls-server", template_input(ca, request)), ec_key.public_key())
    assert len(cert.subject) == 0 and ext(cert, x509.SubjectAlternativeName).critical
    assert_lints_clean(cert, "leaf", "tls-server")

    request = csr(ec_key, "x", [x509.IPAddress(ipaddress.ip_address("2001:db8::1"))])
    cert = ca.issue(shipped("tls-server", template_input(ca, request)), ec_key.public_key())
    assert cn_of(cert) == ["2001:db8::1"]
    assert_lints_clean(cert, "leaf")


def test_tls_server_keeps_an_authority_tls_policy(ca: CA, ec_key: Any) -> None:
    authority = inputs.AuthorityInfo.of_certificate(
        "issuing", ca.cert, crl_urls=[CRL], ocsp_urls=[OCSP], ca_issuers_urls=[CA_ISSUERS],
        policies=["2.23.140.1.2.2", "1.3.6.1.4.1.99999.7"])
    inp = inputs.TemplateInput.from_csr(
        csr(ec_key, None, dns("www.example.com")), provisioner=inputs.ProvisionerInfo("p", "x"),
        authority=authority, not_before=NOW, not_after=NOT_AFTER)
    assert shipped("tls-server", inp).policies == ("2.23.140.1.2.2", "1.3.6.1.4.1.99999.7")


def test_tls_server_refuses_a_request_without_names(ca: CA, ec_key: Any) -> None:
    with pytest.raises(TemplateRefusal) as err:
        shipped("tls-server", template_input(ca, csr(ec_key, "www.example.com")))
    assert "at least one DNS name or IP address" in err.value.message
    assert err.value.code == "template_refused" and err.value.template == "tls-server"


def test_tls_client(ca: CA, ec_key: Any) -> None:
    request = csr(ec_key, "alice", [x509.RFC822Name("alice@example.com"),
                                    x509.UniformResourceIdentifier("urn:example:alice"),
                                    x509.DNSName("alice-laptop.example.com")])
    cert = ca.issue(shipped("tls-client", template_input(ca, request)), ec_key.public_key())
    assert cn_of(cert) == ["alice"]
    assert sans_of(cert) == ["alice@example.com", "urn:example:alice", "alice-laptop.example.com"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ku_bits(cert) == {"digital_signature"}
    assert_lints_clean(cert)

    cert = ca.issue(shipped("tls-client", template_input(ca, csr(ec_key, None, dns("h.example")))),
                    ec_key.public_key())
    assert cn_of(cert) == ["h.example"]
    with pytest.raises(TemplateRefusal):
        shipped("tls-client", template_input(ca, csr(ec_key)))


def test_mtls_service_from_token_claims(ca: CA, rsa_key: Any) -> None:
    request = csr(rsa_key, None, dns("api.internal.example.com"))
    inp = template_input(ca, request, token={"trust_domain": "prod.example.org",
                                             "service": "ns/payments/sa/api"},
                         data={"trust_domain": "evil.example", "service": "x"}, allow_data=True)
    cert = ca.issue(shipped("mtls-service", inp), rsa_key.public_key())
    assert sans_of(cert) == ["spiffe://prod.example.org/ns/payments/sa/api",
                             "api.internal.example.com"]
    assert set(ext(cert, x509.ExtendedKeyUsage).value) == {ExtendedKeyUsageOID.SERVER_AUTH,
                                                          ExtendedKeyUsageOID.CLIENT_AUTH}
    assert ku_bits(cert) == {"digital_signature", "key_encipherment"}
    assert cn_of(cert) == ["ns/payments/sa/api"]
    assert_lints_clean(cert)


def test_mtls_service_from_template_data_only_if_allowed(ca: CA, ec_key: Any) -> None:
    request = csr(ec_key)
    data = {"trust_domain": "example.org", "service": "billing"}
    desc = shipped("mtls-service", template_input(ca, request, data=data, allow_data=True))
    assert [s.value for s in desc.sans] == ["spiffe://example.org/billing"]
    assert_lints_clean(ca.issue(desc, ec_key.public_key()))
    with pytest.raises(TemplateRefusal, match="trust domain and a service name"):
        shipped("mtls-service", template_input(ca, request, data=data, allow_data=False))


def test_mtls_service_refuses_an_invalid_spiffe_id(ca: CA, ec_key: Any) -> None:
    inp = template_input(ca, csr(ec_key), token={"trust_domain": "Example.ORG", "service": "a"})
    with pytest.raises(TemplateError, match="trust domain must be lower-case"):
        shipped("mtls-service", inp)
    inp = template_input(ca, csr(ec_key), token={"trust_domain": "example.org",
                                                  "service": "a/../b"})
    with pytest.raises(TemplateError, match="SPIFFE path segments"):
        shipped("mtls-service", inp)


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_smime_email(ca: CA, rsa_key: Any, ec_key: Any, key_type: str) -> None:
    key = rsa_key if key_type == "rsa" else ec_key
    request = csr(key, "Alice Example", [x509.RFC822Name("alice@example.com"),
                                         x509.DNSName("dropped.example.com"),
                                         x509.RFC822Name("a.example@Mail.Example.com")])
    cert = ca.issue(shipped("smime-email", template_input(ca, request)), key.public_key())
    assert sans_of(cert) == ["alice@example.com", "a.example@mail.example.com"]
    assert cn_of(cert) == ["alice@example.com"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.EMAIL_PROTECTION]
    assert ku_bits(cert) == ({"digital_signature", "key_encipherment"} if key_type == "rsa"
                             else {"digital_signature", "key_agreement"})
    assert_lints_clean(cert)
    with pytest.raises(TemplateRefusal, match="email address"):
        shipped("smime-email", template_input(ca, csr(key, "Alice")))


def test_code_signing(ca: CA, rsa_key: Any) -> None:
    request = csr(rsa_key, "Example Build Signing", [x509.RFC822Name("release@example.com")],
                  C="DE", O="Example GmbH")
    cert = ca.issue(shipped("code-signing", template_input(ca, request)), rsa_key.public_key())
    assert cert.subject.rfc4514_string() == "CN=Example Build Signing,O=Example GmbH,C=DE"
    assert sans_of(cert) == ["release@example.com"]
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CODE_SIGNING]
    assert ku_bits(cert) == {"digital_signature"}
    assert_lints_clean(cert)

    no_sans = ca.issue(shipped("code-signing", template_input(ca, csr(rsa_key, "Signer"))),
                       rsa_key.public_key())
    with pytest.raises(x509.ExtensionNotFound):
        ext(no_sans, x509.SubjectAlternativeName)
    assert_lints_clean(no_sans)

    with pytest.raises(TemplateRefusal, match="carries no dns names"):
        shipped("code-signing", template_input(ca, csr(rsa_key, "S", dns("a.example.com"))))
    with pytest.raises(TemplateRefusal, match="common name"):
        shipped("code-signing", template_input(ca, csr(rsa_key, None,
                                                       [x509.RFC822Name("a@example.com")])))


def test_iot_device(ca: CA, ec_key: Any) -> None:
    inventory = {"name": "sensor 42", "kind": "device", "owner": "ops",
                 "metadata": {"device_id": "dev-0042", "serial_number": "SN 4711"}}
    cert = ca.issue(shipped("iot-device", template_input(ca, csr(ec_key, "whatever"),
                                                         inventory=inventory)),
                    ec_key.public_key())
    assert cert.subject.rfc4514_string() == "2.5.4.5=SN 4711,CN=dev-0042"
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        ext(cert, x509.SubjectAlternativeName)
    assert_lints_clean(cert)

    # No inventory record: the CSR's CN is the device id (and the serial number).
    cert = ca.issue(shipped("iot-device", template_input(ca, csr(ec_key, "dev-7"))),
                    ec_key.public_key())
    assert cert.subject.rfc4514_string() == "2.5.4.5=dev-7,CN=dev-7"
    assert_lints_clean(cert)

    with pytest.raises(TemplateRefusal, match="no device id"):
        shipped("iot-device", template_input(ca, csr(ec_key), inventory={"metadata": {}}))
    with pytest.raises(TemplateError, match="serialNumber is a PrintableString"):
        shipped("iot-device", template_input(ca, csr(ec_key, "dev_with_underscore")))


# -- descriptions and the builder ------------------------------------------------------------


def test_custom_extension_by_oid_with_der_value(ca: CA, ec_key: Any) -> None:
    value = bytes([0x0C, 5]) + b"hello"  # UTF8String "hello"
    source = minimal(sans=[{"type": "dns", "value": "x.example.com"}],
                     extensions=[{"oid": "1.3.6.1.4.1.99999.1", "critical": False,
                                  "value_der_b64": base64.b64encode(value).decode()}])
    cert = ca.issue(render_src(source), ec_key.public_key())
    custom = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"))
    assert not custom.critical
    assert isinstance(custom.value, x509.UnrecognizedExtension) and custom.value.value == value
    assert_lints_clean(cert)


def test_repeated_subject_attributes_and_order(ca: CA, ec_key: Any) -> None:
    source = ('{"subject": [["DC", "com"], ["DC", "example"], ["OU", "a"], ["OU", "b"], '
              '["CN", "svc"]]}')
    cert = ca.issue(render_src(source), ec_key.public_key())
    assert cert.subject.rfc4514_string() == "CN=svc,OU=b,OU=a,DC=example,DC=com"
    mapping = ca.issue(render_src('{"subject": {"C": "DE", "O": "Org", "CN": "svc"}}'),
                       ec_key.public_key())
    assert mapping.subject.rfc4514_string() == "CN=svc,O=Org,C=DE"


def test_sans_are_normalised_and_deduplicated() -> None:
    desc = render_src(minimal(sans=[
        {"type": "dns", "value": "WWW.Example.COM"}, {"type": "dns", "value": "www.example.com"},
        {"type": "ip", "value": "2001:DB8:0:0::1"}, {"type": "email", "value": "A@EXAMPLE.com"},
        {"type": "uri", "value": "HTTPS://example.com/x"},
        {"type": "dns", "value": "*.example.com"},
    ]))
    assert [(s.type, s.value) for s in desc.sans] == [
        ("dns", "www.example.com"), ("ip", "2001:db8::1"), ("email", "A@example.com"),
        ("uri", "https://example.com/x"), ("dns", "*.example.com")]


def test_a_ca_needs_allow_ca(ca: CA, ec_key: Any) -> None:
    source = minimal(basic_constraints={"ca": True, "path_length": 0},
                     key_usage=["key_cert_sign", "crl_sign"],
                     name_constraints={"permitted_dns": ["example.com"]})
    with pytest.raises(TemplateError, match="may not issue a CA certificate"):
        render_src(source)
    desc = render_src(source, allow_ca=True)
    assert desc.is_ca
    with pytest.raises(TemplateError, match="may not issue a CA certificate"):
        ca.issue(desc, ec_key.public_key())
    sub = ca.issue(desc, ec_key.public_key(), allow_ca=True)
    assert ext(sub, x509.BasicConstraints).value.path_length == 0
    assert ext(sub, x509.NameConstraints).critical
    assert_lints_clean(sub, "intermediate")


def test_key_usage_must_fit_the_key(ca: CA, ec_key: Any, rsa_key: Any) -> None:
    with pytest.raises(TemplateError, match="key_encipherment is not possible with an EC key"):
        ca.issue(render_src(minimal(key_usage=["digital_signature", "key_encipherment"])),
                 ec_key.public_key())
    with pytest.raises(TemplateError, match="key_agreement is not possible with an RSA key"):
        ca.issue(render_src(minimal(key_usage=["key_agreement"])), rsa_key.public_key())


def test_validity_is_clamped_never_extended(ca: CA, ec_key: Any) -> None:
    shorter = (NOW + dt.timedelta(days=7)).isoformat()
    cert = ca.issue(render_src(minimal(not_after=shorter)), ec_key.public_key())
    assert cert.not_valid_after_utc == NOW + dt.timedelta(days=7)
    longer = (NOW + dt.timedelta(days=900)).isoformat()
    earlier = (NOW - dt.timedelta(days=30)).isoformat()
    cert = ca.issue(render_src(minimal(not_before=earlier, not_after=longer)),
                    ec_key.public_key())
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (NOW, NOT_AFTER)
    with pytest.raises(TemplateError, match="no validity left"):
        ca.issue(render_src(minimal(not_before=(NOW + dt.timedelta(days=100)).isoformat())),
                 ec_key.public_key())
    with pytest.raises(TemplateError, match="time zone"):
        render_src(minimal(not_after="2030-01-01T00:00:00"))


def test_aki_follows_the_issuers_own_ski(ec_key: Any) -> None:
    odd = CA(ski=bytes(range(20)))
    cert = odd.issue(render_src(minimal()), ec_key.public_key())
    assert ext(cert, x509.AuthorityKeyIdentifier).value.key_identifier == bytes(range(20))


def test_with_default_urls_fills_only_empty_lists() -> None:
    desc = render_src(minimal(crl_urls=["http://own.example/crl"]))
    filled = build.with_default_urls(desc, crl_urls=["http://default/crl"],
                                     ocsp_urls=["http://default/ocsp"])
    assert filled.crl_urls == ("http://own.example/crl",)
    assert filled.ocsp_urls == ("http://default/ocsp",) and filled.ca_issuers_urls == ()


# -- template errors -------------------------------------------------------------------------


def test_fail_refuses_with_the_templates_message() -> None:
    with pytest.raises(TemplateRefusal) as err:
        render_src('{% if true %}{{ fail("no certificates on Sundays") }}{% endif %}')
    assert err.value.message == "no certificates on Sundays"
    assert err.value.template == "test" and err.value.code == "template_refused"
    assert isinstance(err.value, ApplianceError)
    again = pickle.loads(pickle.dumps(err.value))
    assert (again.template, again.message) == ("test", "no certificates on Sundays")


def test_undefined_variable_is_named_with_its_line() -> None:
    with pytest.raises(TemplateError) as err:
        render_src('{\n"subject": {"CN": {{ nosuchvar | tojson }}}\n}')
    assert "'nosuchvar' is undefined" in str(err.value)
    assert err.value.line == 2 and err.value.code == "template_error"
    assert err.value.template == "test"
    with pytest.raises(TemplateError, match="has no attribute 'missing'"):
        render_src("{{ data.missing }}", {"data": {}})
    with pytest.raises(TemplateError, match="undefined"):
        render_src("{% if data.missing %}{% endif %}", {"data": {}})


def test_check_template_refuses_at_save_time() -> None:
    tr.check_template("ok", '{"subject": {"CN": {{ subject.commonName | tojson }}}}')
    with pytest.raises(TemplateError, match="'include' is not available"):
        tr.check_template("inc", '{% include "other" %}')
    with pytest.raises(TemplateInputError, match="may not be named fail"):
        render_src("{}", {"fail": 1})


def test_syntax_error_names_the_line() -> None:
    with pytest.raises(TemplateError) as err:
        render_src("{\n\n{% if %}\n}")
    assert "syntax error" in err.value.detail and err.value.line == 3
    with pytest.raises(TemplateError, match="syntax error"):
        tr.check_template("bad", "{{ x | nosuchfilter }}")


@pytest.mark.parametrize(("output", "problem"), [
    ("", "produced no output"),
    ("{'subject': {}}", "not valid JSON"),
    ('{"subject": {"CN": "a"},}', "not valid JSON"),
    ('{"subject": {"CN": "a"}, "subject": {"CN": "b"}}', "duplicate key 'subject'"),
    ('{"subject": {"CN": "a"}, "x": NaN}', "NaN is not valid JSON"),
    ('["subject"]', "must be a JSON object"),
])
def test_output_that_is_not_a_json_object(output: str, problem: str) -> None:
    with pytest.raises(TemplateError, match=problem):
        render_src(output)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"unknown_key": 1}, "unknown_key: Extra inputs are not permitted"),
    ({"subject": {"CN": "a", "XX": "b"}}, "subject.1.0: Input should be"),
    ({"subject": {"C": "de"}}, "two-letter upper-case"),
    ({"subject": {"CN": "a" * 65}}, "CN: at most 64"),
    ({"subject": {}}, "needs a subject or at least one SAN"),
    ({"basic_constraints": {"ca": True}, "key_usage": ["key_cert_sign"]},
     "may not issue a CA certificate"),
    ({"key_usage": ["key_cert_sign"]}, "key_cert_sign needs basic_constraints.ca"),
    ({"basic_constraints": {"path_length": 1}}, "path_length only applies to a CA"),
    ({"name_constraints": {"permitted_dns": ["example.com"]}}, "only apply to a CA"),
    ({"key_usage": []}, "key_usage: Tuple should have at least 1 item"),
    ({"extended_key_usage": ["server_auth", "1.2.3.x"]}, "extended_key_usage.1"),
    ({"policies": ["1.99.1"]}, "not a valid OID"),
    ({"crl_urls": ["ldap://x"]}, "crl_urls.0"),
    ({"extensions": [{"oid": "2.5.29.17", "value_der_b64": "MAA="}]}, "subjectAltName"),
    ({"extensions": [{"oid": "2.5.29.19", "value_der_b64": "MAA="}]}, "basicConstraints"),
    ({"extensions": [{"oid": "1.3.6.1.4.1.11129.2.4.3", "value_der_b64": "BQA="}]},
     "precertificate poison"),
    ({"extensions": [{"oid": "1.2.3.4", "value_der_b64": "MAA="},
                     {"oid": "1.2.3.4", "value_der_b64": "MAA="}]}, "1.2.3.4 appears twice"),
    ({"extensions": [{"oid": "1.2.3.4", "value_der_b64": "not base64!"}]}, "not valid base64"),
    ({"extensions": [{"oid": "1.2.3.4", "value_der_b64": "MAMCAQ=="}]}, "not one DER value"),
    ({"extensions": [{"oid": "1.2.3.4", "value_der_b64": "MAACAQA="}]}, "not one DER value"),
    ({"extensions": [{"oid": "1.2.3.4", "value_der_b64": "MAA=", "extra": 1}]}, "extra"),
    ({"sans": [{"type": "dns", "value": "foo bar.example"}]}, "not a valid DNS name"),
    ({"sans": [{"type": "dns", "value": "a.*.example.com"}]}, "not a valid DNS name"),
    ({"sans": [{"type": "dns", "value": "under_score.example"}]}, "not a valid DNS name"),
    ({"sans": [{"type": "dns", "value": "192.0.2.1"}]}, "use an 'ip' SAN"),
    ({"sans": [{"type": "ip", "value": "999.1.1.1"}]}, "not a valid IP address"),
    ({"sans": [{"type": "ip", "value": "10.0.0.0/8"}]}, "not a single IP address"),
    ({"sans": [{"type": "email", "value": "no-at-sign"}]}, "not a valid email address"),
    ({"sans": [{"type": "email", "value": "a@b@c.example"}]}, "not a valid email address"),
    ({"sans": [{"type": "uri", "value": "not a uri"}]}, "not a valid URI"),
    ({"sans": [{"type": "uri", "value": "/relative/path"}]}, "not an absolute URI"),
    ({"sans": [{"type": "uri", "value": "https://bad_host/x"}]}, "host must be a fully"),
    ({"sans": [{"type": "uri", "value": "spiffe://td/"}]}, "needs a path"),
    ({"sans": [{"type": "uri", "value": "spiffe://a/x"}, {"type": "uri",
                                                          "value": "spiffe://a/y"}]},
     "at most one spiffe"),
    ({"sans": [{"type": "x400", "value": "x"}]}, "sans.0.type"),
])
def test_schema_violations(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(TemplateError) as err:
        render_src(minimal(**fields))
    assert "schema violation" in err.value.detail
    assert problem in err.value.detail


# -- the sandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize("source", [
    "{{ os.system('id') }}",
    "{{ config }}",
    "{{ open('/etc/passwd').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ().__class__.__bases__[0].__subclasses__() }}",
    "{{ subject.__class__ }}",
    "{{ self.__init__.__globals__ }}",
    "{{ fail.__globals__['os'] }}",
    "{{ range.__self__ }}",
    "{{ namespace.__init__.__globals__ }}",
    "{{ lipsum.__globals__.os }}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ dict.mro() }}",
    "{{ subject | attr('__class__') }}",
    "{{ '{0.__class__}'.format(subject) }}",
    "{{ '%s' % subject }}",
    "{{ subject.update({'a': 1}) }}",
    "{{ subject.pop('raw') }}",
    "{% include '/etc/passwd' %}",
    "{% import 'os' as os %}",
    "{% from 'x' import y %}",
    "{% extends '/etc/passwd' %}",
    "{% for x in [1] recursive %}{{ loop([]) }}{% endfor %}",
    "{% autoescape true %}{{ 1 }}{% endautoescape %}",
    "{{ environment }}",
    "{{ self._TemplateReference__context }}",
])
def test_sandbox_escapes_fail(source: str) -> None:
    with pytest.raises(TemplateError) as err:
        render_src(source, {"subject": {"raw": "CN=x"}})
    assert not isinstance(err.value, TemplateRefusal)


def test_the_whitelisted_helpers_work() -> None:
    source = (
        '{%- set ns = namespace(items=[]) -%}'
        '{%- for n in names if n.startswith("a") -%}{%- set ns.items = ns.items + [n.upper()] -%}'
        '{%- endfor -%}'
        '{%- macro q(v) %}<{{ v }}>{% endmacro -%}'
        '{{ {"x": ns.items | join(","), "y": (names | map("lower") | list)[-1], '
        '"z": q(names | length), "w": (data.nothing | default("d")), '
        '"v": data.get("k", 1) + (2 ** 10) % 7, "u": "a.b.c".split(".") | reverse | list, '
        '"t": (names | select("in", ["b"]) | first), "s": loop_free ~ "!", '
        '"r": "abcabc" | replace("b", "-"), "q": dict(a=1) | items | list } | tojson }}')
    out = tr.render_text("helpers", source, {"names": ["alpha", "b", "aZ"], "data": {},
                                             "loop_free": "ok"})
    import json

    assert json.loads(out) == {"x": "ALPHA,AZ", "y": "az", "z": "<3>", "w": "d", "v": 3,
                               "u": ["c", "b", "a"], "t": "b", "s": "ok!", "r": "a-ca-c",
                               "q": [["a", 1]]}


def test_template_input_variables(ca: CA, ec_key: Any) -> None:
    request = csr(ec_key, "svc", [*dns("a.example.com"), x509.RFC822Name("x@example.com")],
                  O="Org")
    inp = template_input(ca, request, token={"sub": "svc"}, data={"k": "v"}, allow_data=False)
    v = inp.variables()
    assert v["subject"]["commonName"] == "svc" and v["subject"]["organization"] == "Org"
    assert v["subject"]["country"] is None and v["subject"]["raw"] == "CN=svc,O=Org"
    assert v["subject"]["attributes"][0] == {"type": "O", "oid": "2.5.4.10", "value": "Org"}
    assert v["sans"] == [{"type": "dns", "value": "a.example.com"},
                         {"type": "email", "value": "x@example.com"}]
    assert (v["dns_names"], v["emails"], v["ip_addresses"], v["uris"]) == (
        ["a.example.com"], ["x@example.com"], [], [])
    assert v["csr"]["public_key_algorithm"] == "ec" and v["csr"]["curve"] == "P-256"
    assert v["csr"]["key_size"] == 256 and v["csr"]["sans"] == v["sans"]
    assert v["token"] == {"sub": "svc"} and v["inventory"] is None
    assert v["data"] == {}  # the provisioner does not allow template data
    assert v["provisioner"] == {"name": "test", "type": "jwk"}
    assert v["authority"]["name"] == "issuing" and v["authority"]["crl_urls"] == [CRL]
    assert v["validity"]["not_after"] == NOT_AFTER.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert template_input(ca, request, data={"k": "v"}, allow_data=True).variables()["data"] \
        == {"k": "v"}

    with pytest.raises(TemplateInputError, match="a set cannot be passed"):
        template_input(ca, request, token={"x": {1, 2}}).variables()
    with pytest.raises(TemplateInputError, match="bytes as JSON"):
        template_input(ca, request, data={"big": "x" * (1024 * 1024)},
                       allow_data=True).variables()


def test_from_request_takes_the_pipelines_plain_mappings(ca: CA, rsa_key: Any) -> None:
    inp = inputs.TemplateInput.from_request(
        csr=csr(rsa_key, None, dns("www.example.com")), token={}, inventory=None, data={},
        provisioner={"name": "acme", "type": "acme"},
        authority={"name": "issuing", "subject": ca.cert.subject.rfc4514_string()},
        validity={"not_before": NOW.isoformat(), "not_after": NOT_AFTER.isoformat()})
    desc = tr.render("tls-server", builtin_templates()["tls-server"], inp)
    desc = build.with_default_urls(desc, crl_urls=[CRL], ocsp_urls=[OCSP],
                                   ca_issuers_urls=[CA_ISSUERS])
    cert = ca.issue(desc, rsa_key.public_key())
    assert_lints_clean(cert, "tls-server")
    assert inp.variables()["csr"]["public_key_algorithm"] == "rsa"


# -- bounds ----------------------------------------------------------------------------------


def _stopped(source: str, expected: str, **kw: Any) -> TemplateError:
    started = time.monotonic()
    with pytest.raises(TemplateError) as err:
        render_src(source, **kw)
    assert time.monotonic() - started < 5
    assert expected in err.value.detail, err.value.detail
    return err.value


def test_source_size_limit() -> None:
    big = '{"subject": {"CN": "x"}}' + " " * limits.MAX_SOURCE_BYTES
    with pytest.raises(TemplateError, match="at most 65536"):
        render_src(big)
    with pytest.raises(TemplateError, match="at most 65536"):
        tr.check_template("big", big)


def test_output_size_limit() -> None:
    _stopped('{% for i in range(10000) %}{{ "x" * 100 }}{% endfor %}', "output longer than")


def test_a_very_long_loop_is_stopped() -> None:
    err = _stopped("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}"
                   "{% endfor %}", "more than 100000 steps")
    assert err.line == 1


def test_the_wall_clock_stops_a_slow_render() -> None:
    _stopped("{% for i in range(9000) %}{% set x = (i * 3) | string | upper %}{% endfor %}",
             "took longer than 0.001 s", time_limit=0.001)


@pytest.mark.parametrize(("source", "expected"), [
    ("{{ range(100000) | length }}", "at most 10000"),
    ('{{ "x" * 10 ** 9 }}', "larger than"),
    ("{{ 10 ** 1000000 }}", "larger than 4096 bits"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}"
     "{% endfor %}", "larger than 4096 bits"),
    ('{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}'
     "{% endfor %}", "larger than"),
    ('{% set ns = namespace(s="x") %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}'
     "{% endfor %}", "larger than"),
    ('{% set ns = namespace(s=["x"]) %}{% for i in range(40) %}'
     "{% set ns.s = [ns.s, ns.s] %}{% endfor %}{{ ns.s | tojson }}", "a value larger than"),
    ('{% set ns = namespace(a=[1], b=[1]) %}{% for i in range(40) %}'
     "{% set ns.a = [ns.a, ns.a] %}{% set ns.b = [ns.b, ns.b] %}{% endfor %}"
     "{{ ns.a == ns.b }}", "a value larger than"),
    ('{% set ns = namespace(a=[1]) %}{% for i in range(40) %}{% set ns.a = [ns.a, ns.a] %}'
     "{% endfor %}{{ ns }}", "a value larger than"),
    ('{{ ("x" * 1000) | replace("x", "y" * 1000) }}', "replace: a string longer"),
    ('{{ ("x" * 1000).replace("x", "y" * 1000) }}', "replace: a string longer"),
    ('{{ (["x" * 1000] * 1000) | join("") }}', "a value larger than"),
    ('{{ (["x" * 200000] * 100) | join("") }}', "a value larger than"),
    ('{% set b %}{% for i in range(5000) %}' + "y" * 100 + "{% endfor %}{% endset %}",
     "a block output longer than"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
     "{{ f(40) }}", "more than 100000 steps"),
])
def test_resource_bombs_are_stopped(source: str, expected: str) -> None:
    # Each bomb is stopped by its own budget, not by the wall clock (its own test above): a
    # generous time limit keeps a loaded machine from answering "took longer" first.
    _stopped(source, expected, time_limit=4)


def test_unbounded_recursion_is_an_error() -> None:
    with pytest.raises(TemplateError, match=r"recursion too deep|more than 100000 steps"):
        render_src("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}")


def test_budgets_are_per_render_across_threads() -> None:
    source = ('{% for i in range(9000) %}{% endfor %}'
              '{"subject": {"CN": {{ name | tojson }}}}')
    results: list[str] = []
    errors: list[BaseException] = []

    def one(i: int) -> Callable[[], None]:
        def run() -> None:
            try:
                for _ in range(5):
                    desc = tr.render("t", source, {"name": f"host{i}"})
                    results.append(desc.subject[0][1])
            except BaseException as exc:
                errors.append(exc)
        return run

    threads = [threading.Thread(target=one(i)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and sorted(set(results)) == sorted(f"host{i}" for i in range(8))
    assert len(results) == 40


def test_errors_pickle() -> None:
    err = TemplateError("t", "boom", 3)
    again = pickle.loads(pickle.dumps(err))
    assert (again.template, again.detail, again.line, str(again)) == ("t", "boom", 3, str(err))
