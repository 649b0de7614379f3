"""Trying a template on sample requests before it is stored.

Compiling a template finds syntax errors only; the faults that would otherwise surface as
a failed issuance (an undefined variable, ``dns_names[0]`` for a request with none,
output that is not a valid certificate description, a key usage the key cannot have, an
extension twice) show only when it renders. So ``template add`` and ``template check``
render it the way the pipeline does (render, default URLs, builder, a signature by a
sample CA's software key) for each of a few sample requests that differ in what the
templates distinguish: a TLS server (EC key, DNS names and an IP address), a person (RSA
key, an email address) and a device (EC key, a URI and a common name only).

A ``fail()`` on a sample is the template's choice, not a fault: it is reported, and a
template may refuse every sample (one that needs an inventory record, say). Any other
error is a fault, reported with the sample. ``check`` refuses a template that renders
for no sample and fails on one (it cannot work as written); with ``strict`` it refuses
a fault on any sample. A template meant for one kind of request only (``dns_names[0]``)
is otherwise kept, with the faults reported: a request like that sample would be a
``template_error`` at issuance, and a ``fail()`` guard turns it into a clear refusal.
"""

from __future__ import annotations

import ipaddress
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appliance.templates import build, render
from appliance.templates.errors import TemplateError, TemplateRefusal
from appliance.templates.inputs import AuthorityInfo, ProvisionerInfo, TemplateInput

SAMPLE_BASE_URL = "http://ca.example.test"


@dataclass(frozen=True)
class SampleOutcome:
    sample: str
    outcome: Literal["rendered", "refused", "failed"]
    detail: str  # the certificate's subject and SANs, the refusal message, or the fault

    def as_dict(self) -> dict[str, str]:
        return {"sample": self.sample, "outcome": self.outcome, "detail": self.detail}


@dataclass(frozen=True)
class _Sample:
    name: str
    csr: x509.CertificateSigningRequest


_lock = threading.Lock()
_cache: dict[str, Any] = {}


def _sample_csr(key: Any, cn: str, sans: list[x509.GeneralName]) -> x509.CertificateSigningRequest:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def _fixtures() -> tuple[list[_Sample], x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The sample requests and a sample issuing CA (software keys, made once per process)."""
    with _lock:
        if not _cache:
            ec_key = ec.generate_private_key(ec.SECP256R1())
            rsa_key = rsa.generate_private_key(65537, 2048)
            samples = [
                _Sample("tls server", _sample_csr(ec_key, "web.example.com", [
                    x509.DNSName("web.example.com"), x509.DNSName("www.example.com"),
                    x509.IPAddress(ipaddress.ip_address("192.0.2.10"))])),
                _Sample("person", _sample_csr(rsa_key, "Jane Doe", [
                    x509.RFC822Name("jane@example.com")])),
                _Sample("device", _sample_csr(ec_key, "device-42", [
                    x509.UniformResourceIdentifier("spiffe://example.com/device/42")])),
            ]
            ca_key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Sample Issuing CA")])
            now = datetime.now(UTC)
            ca = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                  .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                  .not_valid_before(now - timedelta(days=1))
                  .not_valid_after(now + timedelta(days=3650))
                  .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                  .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                                 critical=False)
                  .sign(ca_key, hashes.SHA256()))
            _cache["samples"], _cache["ca"], _cache["ca_key"] = samples, ca, ca_key
        return _cache["samples"], _cache["ca"], _cache["ca_key"]


def _summary(cert: x509.Certificate) -> str:
    try:
        sans = [str(getattr(n, "value", n)) for n in cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value]
    except x509.ExtensionNotFound:
        sans = []
    subject = cert.subject.rfc4514_string() or "(empty subject)"
    return f"{subject}; SANs: {', '.join(sans) or '-'}"


def _try(name: str, source: str, sample: _Sample, ca: x509.Certificate,
         ca_key: ec.EllipticCurvePrivateKey, data: Mapping[str, Any]) -> SampleOutcome:
    start = datetime.now(UTC).replace(microsecond=0)
    end = start + timedelta(hours=24)
    token = {"sub": sample.csr.subject.rfc4514_string(), "iss": "sample", "aud": "sample"}
    variables = TemplateInput.from_csr(
        sample.csr, provisioner=ProvisionerInfo("sample", "jwk", allow_template_data=True),
        authority=AuthorityInfo.of_certificate(
            "issuing", ca, crl_urls=[f"{SAMPLE_BASE_URL}/crl/issuing.crl"],
            ocsp_urls=[f"{SAMPLE_BASE_URL}/ocsp"],
            ca_issuers_urls=[f"{SAMPLE_BASE_URL}/ca/issuing.crt"]),
        not_before=start, not_after=end, token=token, data=data)
    try:
        desc = render.render(name, source, variables)
    except TemplateRefusal as exc:
        return SampleOutcome(sample.name, "refused", exc.message)
    desc = build.with_default_urls(
        desc, crl_urls=[f"{SAMPLE_BASE_URL}/crl/issuing.crl"],
        ocsp_urls=[f"{SAMPLE_BASE_URL}/ocsp"],
        ca_issuers_urls=[f"{SAMPLE_BASE_URL}/ca/issuing.crt"])
    builder = build.to_builder(desc, public_key=sample.csr.public_key(), issuer=ca,
                               serial=x509.random_serial_number(), not_before=start,
                               not_after=end, template=name)
    try:
        cert = builder.sign(ca_key, hashes.SHA256())
    except (ValueError, TypeError) as exc:  # e.g. the same extension twice
        raise TemplateError(name, f"the certificate cannot be built: {exc}") from None
    return SampleOutcome(sample.name, "rendered", _summary(cert))


def trial(name: str, source: str, *, data: Mapping[str, Any] | None = None
          ) -> list[SampleOutcome]:
    """How ``source`` renders for every sample request (``TemplateError`` only if it does
    not compile). ``data`` is the samples' ``templateData`` (for templates that read it)."""
    render.check_template(name, source)
    samples, ca, ca_key = _fixtures()
    out = []
    for sample in samples:
        try:
            out.append(_try(name, source, sample, ca, ca_key, data or {}))
        except TemplateError as exc:
            where = f"line {exc.line}: " if exc.line is not None else ""
            out.append(SampleOutcome(sample.name, "failed", where + exc.detail))
    return out


def check(name: str, source: str, *, data: Mapping[str, Any] | None = None,
          strict: bool = False) -> list[SampleOutcome]:
    """``trial``, refusing (``TemplateError`` naming the sample and the fault) a template
    that renders for no sample and fails on one, or with ``strict`` fails on any."""
    outcomes = trial(name, source, data=data)
    failed = [o for o in outcomes if o.outcome == "failed"]
    rendered = any(o.outcome == "rendered" for o in outcomes)
    if failed and (strict or not rendered):
        first = failed[0]
        why = "" if rendered else " (it renders for none of the samples)"
        raise TemplateError(name, f"with the sample {first.sample} request{why}: "
                                  f"{first.detail}")
    return outcomes
