"""tls-alpn-01 (RFC 8737): a TLS handshake with ALPN ``acme-tls/1``, then the certificate.

The self-signed certificate the applicant presents *is* the evidence, so the handshake
does not verify it; its subjectAltName and acmeIdentifier extension are inspected here.
"""

from __future__ import annotations

import hashlib
import ipaddress

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

from appliance.acme.validation.connect import connect, format_host, wrap_tls
from appliance.acme.validation.deadline import Deadline, watchdog
from appliance.acme.validation.errors import ValidationError
from appliance.acme.validation.settings import ValidationSettings

#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ACME_IDENTIFIER_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.31")
#: The ALPN protocol name of tls-alpn-01 (RFC 8737 §6.2).
ACME_TLS_ALPN = "acme-tls/1"


def validate_tls_alpn01(kind: str, name: str, key_authz: str,
                        settings: ValidationSettings, deadline: Deadline) -> str:
    """RFC 8737 §3: handshake with ALPN acme-tls/1, then inspect the self-signed cert."""
    port = settings.tls_alpn_port
    # RFC 8738 §6: an IP identifier is named in SNI by its reverse-DNS name.
    sni = ipaddress.ip_address(name).reverse_pointer if kind == "ip" else name
    sock, address = connect(name, port, settings, deadline)
    where = f"{format_host(address)}:{port}"
    what = f"{where} (SNI {sni})"
    with watchdog(sock, deadline) as watch:
        tls = watch.sock = wrap_tls(sock, sni, [ACME_TLS_ALPN], deadline, what, watch)
        negotiated = tls.selected_alpn_protocol()
        der = tls.getpeercert(binary_form=True)
    if negotiated != ACME_TLS_ALPN:
        raise ValidationError(
            "tls", f"{what} did not negotiate ALPN {ACME_TLS_ALPN!r} (got {negotiated!r})"
        )
    if not der:
        raise ValidationError("incorrectResponse", f"{what} presented no certificate")
    _check_acme_certificate(der, kind, name, key_authz, what)
    return f"tls-alpn-01 on {where} with SNI {sni}"


def _check_acme_certificate(der: bytes, kind: str, name: str, key_authz: str,
                            what: str) -> None:
    """The RFC 8737 §3 certificate checks: one SAN for exactly the identifier and a
    critical acmeIdentifier extension holding SHA-256(key authorization)."""
    try:
        cert = x509.load_der_x509_certificate(der)
        extensions = cert.extensions
    except (ValueError, x509.DuplicateExtension) as exc:
        raise ValidationError(
            "incorrectResponse", f"{what}: unparseable certificate: {exc}"
        ) from exc
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ValidationError(
            "incorrectResponse", f"{what}: certificate has no subjectAltName"
        ) from None
    names = list(san)
    want: x509.GeneralName
    if kind == "ip":
        want = x509.IPAddress(ipaddress.ip_address(name))
        ok = names == [want]
    else:
        want = x509.DNSName(name)
        ok = (len(names) == 1 and isinstance(names[0], x509.DNSName)
              and names[0].value.lower() == name)
    if not ok:
        shown = ", ".join(f"{type(n).__name__}:{n.value}" for n in names)
        raise ValidationError(
            "incorrectResponse",
            f"{what}: subjectAltName must be exactly {type(want).__name__}:{name}, "
            f"got [{shown}]",
        )
    try:
        ext = extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
    except x509.ExtensionNotFound:
        raise ValidationError(
            "incorrectResponse", f"{what}: certificate has no acmeIdentifier extension"
        ) from None
    if not ext.critical:
        raise ValidationError(
            "incorrectResponse", f"{what}: the acmeIdentifier extension is not critical"
        )
    value = ext.value
    raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
    # DER OCTET STRING (tag 0x04, length 32) around the digest (RFC 8737 §3).
    expected = b"\x04\x20" + hashlib.sha256(key_authz.encode("utf-8")).digest()
    if raw != expected:
        raise ValidationError(
            "incorrectResponse",
            f"{what}: acmeIdentifier is {raw.hex()!r}, expected {expected.hex()!r} "
            f"(OCTET STRING of SHA-256 of the key authorization)",
        )
