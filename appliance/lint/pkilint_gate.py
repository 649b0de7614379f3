"""Lint DER certificates, CRLs and OCSP responses with pkilint before a CA key signs them.

A CA signature cannot be taken back: a malformed root, a CRL without a CRL
number or an OCSP response that relying parties reject is published as soon
as it is signed. So every such object is linted first, with pkilint's Python
API (no subprocess: nothing to find on ``PATH``, no text output to parse, and
the findings keep their codes and node paths).

pkilint is imported on first use, not with this module: it costs about half
a second (its ETSI profile loads every ISO 639 language), which every CLI
command that merely imports the ceremony code would otherwise pay.

Validators are built once, lazily, under a lock, and reused: building one
costs far more than a lint (a CA/B Forum validator ~170 ms, a lint ~3 ms),
and pkilint 0.13's validators keep no per-call state (every decoded node and
every cached property lives in the per-call ``Document``). Linting is
therefore safe from several threads at once; the unit tests exercise that.

Input that pkilint cannot decode does not raise: it comes back as a FATAL
``itu.invalid_asn1_syntax`` finding (pkilint's own code for a value that
does not decode), so callers have one path, ``require_clean``, for "do not
sign this". Only input that is refused before decoding -- more than
``MAX_DER_BYTES`` bytes, or not bytes at all -- raises (``ValueError`` /
``TypeError``), because that is a caller's bug, not a lint result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, get_args

from appliance.errors import ApplianceError

MAX_DER_BYTES: Final = 1_000_000
"""Larger input is refused: no certificate, CRL or OCSP response this appliance signs comes
near it, and pkilint builds a Python object per ASN.1 node, so size is memory and time."""

CertKind = Literal["root", "intermediate", "ocsp-signer", "leaf", "tls-server"]
CrlKind = Literal["crl", "arl"]
CrlProfile = Literal["pkix", "br"]

# pkilint's code for "this value does not decode"; reused for a top-level failure so a caller
# sees one code for undecodable input wherever in the structure it is.
_CODE_UNDECODABLE: Final = "itu.invalid_asn1_syntax"
# Our own checks, for what pkilint's RFC 5280 profile does not catch (see _appliance_findings).
_CODE_KIND_MISMATCH: Final = "appliance.certificate_kind_mismatch"
_CODE_CA_SUBJECT_EMPTY: Final = "appliance.ca_certificate_subject_empty"
_OID_KP_OCSP_SIGNING: Final = "1.3.6.1.5.5.7.3.9"


@dataclass(frozen=True)
class Finding:
    """One pkilint finding, detached from pkilint's node objects.

    Plain strings so findings can be logged, audited and compared without the
    decoded document (which holds the whole ASN.1 tree) staying alive.
    """

    code: str
    severity: str
    message: str | None
    node: str

    def __str__(self) -> str:
        text = f"{self.severity} {self.code}"
        if self.message:
            text += f": {self.message}"
        return f"{text} (at {self.node})" if self.node else text


class LintError(ApplianceError):
    """An object about to be signed has blocking lint findings; it was not signed."""

    code = "lint_failed"
    status = 422
    acme_type = "unauthorized"

    def __init__(self, what: str, findings: list[Finding]) -> None:
        self.what = what
        self.findings = list(findings)
        listed = "; ".join(str(f) for f in self.findings)
        super().__init__(f"{what} does not lint clean: {listed}")

    def __reduce__(self) -> tuple[type[LintError], tuple[str, list[Finding]]]:
        # The default would call LintError(message) and lose the findings (e.g. across a
        # process pool).
        return (LintError, (self.what, self.findings))


# --- validator construction (once per configuration) ---------------------------------------

_build_lock = threading.Lock()
_validators: dict[tuple[str, ...], Any] = {}


def _cached(key: tuple[str, ...], build: Callable[[], Any]) -> Any:
    """Build each validator tree once; the lock keeps two first callers from both building."""
    validator = _validators.get(key)
    if validator is None:
        with _build_lock:
            validator = _validators.get(key)
            if validator is None:
                validator = build()
                _validators[key] = validator
    return validator


def _pkix_certificate_validator() -> Any:
    from pkilint.pkix import certificate, extension, name

    # As pkilint/bin/lint_pkix_cert.py builds it.
    return certificate.create_pkix_certificate_validator_container(
        certificate.create_decoding_validators(
            name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
        ),
        [
            certificate.create_issuer_validator_container([]),
            certificate.create_validity_validator_container(),
            certificate.create_subject_validator_container([]),
            certificate.create_extensions_validator_container([]),
            certificate.create_spki_validator_container([]),
        ],
    )


def warm() -> None:
    """Build the leaf certificate validator now (a service supervisor, before it forks its
    workers: they then share it instead of each building it on its first request)."""
    _cached(("pkix-certificate",), _pkix_certificate_validator)


def _serverauth_validator(cert_type: Any) -> Any:
    from pkilint.cabf import serverauth
    from pkilint.pkix import certificate

    # As pkilint/bin/lint_cabf_serverauth_cert.py builds it (validity period start: the
    # document's own notBefore, the CLI's default).
    return certificate.create_pkix_certificate_validator_container(
        serverauth.create_decoding_validators(),
        serverauth.create_validators(cert_type),
    )


def _crl_validator(kind: CrlKind, profile: CrlProfile) -> Any:
    # As pkilint/bin/lint_crl.py builds it.
    from pkilint import pkix
    from pkilint.cabf import cabf_crl
    from pkilint.pkix import crl, extension, name

    crl_type = crl.CertificateRevocationListType[kind.upper()]
    validity_additional: list[Any] = []
    doc_additional: list[Any] = []
    if profile == "br":
        doc_additional.append(cabf_crl.CabfCrlReasonCodeAllowlistValidator(crl_type))
        validity_additional.append(cabf_crl.create_validity_period_validator(crl_type))
    return crl.create_pkix_crl_validator_container(
        [
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [
            crl.create_issuer_validator_container([]),
            crl.create_validity_validator_container(validity_additional),
            crl.create_extensions_validator_container([]),
            *doc_additional,
        ],
    )


def _ocsp_response_validator() -> Any:
    # As pkilint/bin/lint_ocsp_response.py builds it.
    from pkilint import pkix
    from pkilint.pkix import extension, name, ocsp

    return ocsp.create_pkix_ocsp_response_validator_container(
        [
            ocsp.create_response_decoder(),
            pkix.create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
            pkix.create_extension_decoder(extension.EXTENSION_MAPPINGS),
        ],
        [],
    )


# --- running ---------------------------------------------------------------------------------


def _checked_der(der: bytes) -> bytes:
    if not isinstance(der, bytes | bytearray | memoryview):
        raise TypeError(f"DER input must be bytes, not {type(der).__name__}")
    data = bytes(der)
    if len(data) > MAX_DER_BYTES:
        raise ValueError(f"DER input is {len(data)} bytes; at most {MAX_DER_BYTES} are linted")
    return data


def _load(what: str, der: bytes, root_node: str) -> tuple[Any, list[Finding]]:
    """Decode, or turn the decoding failure into a FATAL finding (see the module docstring)."""
    from pkilint import loader

    load: Callable[..., Any] = {
        "certificate": loader.load_der_certificate,
        "crl": loader.load_der_crl,
        "ocsp_response": loader.load_der_ocsp_response,
    }[what]
    try:
        return load(der, "lint"), []
    except ValueError as e:
        # pkilint's loaders report every decoding failure (not DER, truncated, trailing
        # octets, schema mismatch) as ValueError; anything else is a pkilint bug and propagates.
        return None, [Finding(_CODE_UNDECODABLE, "FATAL", str(e), root_node)]


def _findings(results: Iterable[Any]) -> list[Finding]:
    return [
        Finding(
            code=str(fd.finding.code),
            severity=str(fd.finding.severity.name),
            message=None if fd.message is None else str(fd.message),
            node=str(result.node.path),
        )
        for result in results
        for fd in result.finding_descriptions
    ]


def _appliance_findings(doc: Any, kind: CertKind) -> list[Finding]:
    """Two RFC 5280 requirements that pkilint 0.13's RFC 5280 profile does not check.

    pkilint judges a certificate by what it claims to be: a "root" without
    basicConstraints cA is, to pkilint, a clean end-entity certificate. The
    ceremony knows what it is making, so a mismatch with ``kind`` is an ERROR.
    And RFC 5280 4.1.2.6 requires a CA certificate's subject to be a
    non-empty name (path validation chains on it), which pkilint lets pass.
    """
    findings: list[Finding] = []
    is_ca = bool(doc.is_ca)
    if is_ca and not doc.root.navigate("tbsCertificate.subject.rdnSequence").children:
        findings.append(Finding(_CODE_CA_SUBJECT_EMPTY, "ERROR",
                                "a CA certificate must have a non-empty subject (RFC 5280 4.1.2.6)",
                                "certificate.tbsCertificate.subject"))
    # is_self_issued DER-encodes issuer and subject (~0.1 ms): only read where it decides
    # something or is reported.
    problem: str | None = None
    if kind == "root" and not (is_ca and doc.is_self_issued):
        problem = "a root must be a self-issued CA certificate (basicConstraints cA=TRUE)"
    elif kind == "intermediate" and (not is_ca or doc.is_self_issued):
        problem = "an intermediate must be a CA certificate whose issuer is not its subject"
    elif kind == "ocsp-signer" and (
        is_ca or _OID_KP_OCSP_SIGNING not in {str(oid) for oid in doc.extended_key_usages}
    ):
        problem = "an OCSP signer must be a non-CA certificate with the id-kp-OCSPSigning EKU"
    elif kind == "leaf" and is_ca:
        problem = "a leaf must not be a CA certificate"
    if problem is not None:
        self_issued = bool(doc.is_self_issued)
        findings.append(Finding(
            _CODE_KIND_MISMATCH,
            "ERROR",
            f"linted as {kind!r}: {problem} (cA={is_ca}, self-issued={self_issued})",
            "certificate",
        ))
    return findings


def lint_certificate(der: bytes, kind: CertKind, *, tls_type: str | None = None) -> list[Finding]:
    """All pkilint findings (every severity) for a DER certificate.

    ``root``, ``intermediate``, ``ocsp-signer`` and ``leaf`` use pkilint's RFC
    5280 profile (as ``lint_pkix_cert``) plus the two checks of
    ``_appliance_findings``; ``tls-server`` uses the CA/Browser Forum TLS Baseline
    Requirements profile (as ``lint_cabf_serverauth_cert``), with the
    certificate type detected from the certificate unless ``tls_type`` names
    one (pkilint's option spelling, e.g. ``"DV-FINAL-CERTIFICATE"``), and with
    the same finding filters the CLI applies by default.
    """
    if kind not in get_args(CertKind):
        raise ValueError(f"unknown certificate kind {kind!r}")
    if tls_type is not None and kind != "tls-server":
        raise ValueError("tls_type applies only to kind 'tls-server'")
    data = _checked_der(der)
    doc, fatal = _load("certificate", data, "certificate")
    if doc is None:
        return fatal

    if kind != "tls-server":
        validator = _cached(("pkix-certificate",), _pkix_certificate_validator)
        return _findings(validator.validate(doc.root)) + _appliance_findings(doc, kind)

    from pkilint import finding_filter
    from pkilint.cabf import serverauth

    cert_type = _serverauth_type(doc, tls_type)
    if isinstance(cert_type, Finding):
        return [cert_type]
    validator = _cached(
        ("serverauth-certificate", cert_type.name), lambda: _serverauth_validator(cert_type)
    )
    results = validator.validate(doc.root)
    results, _ = finding_filter.filter_results(
        serverauth.create_serverauth_finding_filters(cert_type), results
    )
    return _findings(results)


def _serverauth_type(doc: Any, tls_type: str | None) -> Any:
    from pkilint import document as pkilint_document
    from pkilint.cabf import serverauth
    from pkilint.cabf.serverauth import serverauth_constants

    certificate_type = serverauth_constants.CertificateType
    if tls_type is not None:
        try:
            return certificate_type.from_option_str(tls_type)
        except KeyError:
            known = ", ".join(t.to_option_str for t in certificate_type)
            raise ValueError(f"unknown TLS certificate type {tls_type!r}; one of {known}") from None
    try:
        return serverauth.determine_certificate_type(doc)
    except (ValueError, pkilint_document.PyAsn1Error) as e:
        # The same failures pkilint's REST service reports as unprocessable input.
        return Finding(_CODE_UNDECODABLE, "FATAL", f"certificate type not determined: {e}",
                       "certificate")


def lint_crl(
    der: bytes,
    *,
    kind: CrlKind = "crl",
    profile: CrlProfile = "pkix",
    issuer_is_ca: bool = True,
) -> list[Finding]:
    """All pkilint findings for a DER CRL, as ``lint_crl --type CRL|ARL --profile PKIX|BR``.

    ``kind`` (CRL of end-entity certificates, or ARL of CA certificates) only
    matters under the ``br`` profile, where it sets the maximum validity
    period and the allowed reason codes. pkilint has no profile for a CRL
    signed by a delegated, non-CA CRL issuer, so ``issuer_is_ca=False`` is
    refused rather than linted as if a CA had issued it.
    """
    if kind not in get_args(CrlKind):
        raise ValueError(f"unknown CRL kind {kind!r}")
    if profile not in get_args(CrlProfile):
        raise ValueError(f"unknown CRL profile {profile!r}")
    if not issuer_is_ca:
        raise ValueError("pkilint lints only CRLs issued by the CA itself (issuer_is_ca=True)")
    data = _checked_der(der)
    doc, fatal = _load("crl", data, "certificateList")
    if doc is None:
        return fatal
    validator = _cached(("crl", kind, profile), lambda: _crl_validator(kind, profile))
    return _findings(validator.validate(doc.root))


def lint_ocsp_response(der: bytes) -> list[Finding]:
    """All pkilint findings for a DER OCSPResponse, as ``lint_ocsp_response``."""
    data = _checked_der(der)
    doc, fatal = _load("ocsp_response", data, "oCSPResponse")
    if doc is None:
        return fatal
    validator = _cached(("ocsp-response",), _ocsp_response_validator)
    return _findings(validator.validate(doc.root))


def blocking(findings: Iterable[Finding], skip: Iterable[str] = ()) -> list[Finding]:
    """The ERROR and FATAL findings, less those whose code is in ``skip``.

    ``skip`` is for a known, reviewed deviation (an ERROR the profile
    deliberately accepts). A FATAL finding is never skipped: it means pkilint
    could not decode or could not check the object, and "unchecked" is not a
    deviation anyone can have reviewed.
    """
    skipped = frozenset(skip)
    return [
        f
        for f in findings
        if f.severity == "FATAL" or (f.severity == "ERROR" and f.code not in skipped)
    ]


def require_clean(findings: list[Finding], what: str, skip: Iterable[str] = ()) -> None:
    """Raise ``LintError`` unless ``blocking(findings, skip)`` is empty; call it before signing."""
    bad = blocking(findings, skip)
    if bad:
        raise LintError(what, bad)
