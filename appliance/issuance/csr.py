"""Reading a client's CSR completely, once, before anything else looks at it.

``cryptography`` parses a CSR lazily: the key, the extensions, the signature algorithm and
each name are decoded when first asked for, and each can fail its own way (``ValueError``,
``UnsupportedAlgorithm``, ``InvalidVersion``, ``DuplicateExtension``…) deep in the pipeline.
``load_csr`` asks for every part up front, so a CSR it returns can be read anywhere without
an exception, and every malformed one is an ``InputError`` naming the field and the part.
The SAN values are held to the syntax the certificate description demands (the template
model's own rules), so a name no certificate may carry is the client's error, not a template
failure later.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from appliance import policy
from appliance.errors import InputError
from appliance.templates import model as template_model

MAX_CSR_BYTES = 10_000
MAX_SANS = 100
SIGNATURE_MEMO = 1024  # CSRs whose signature check is remembered (by their exact DER)
# What a malformed CSR part raises in cryptography (none of them is a bug of ours).
PARSE_ERRORS = (ValueError, TypeError, UnsupportedAlgorithm, x509.InvalidVersion,
                x509.DuplicateExtension, x509.UnsupportedGeneralNameType)


def load_csr(data: str | bytes, field: str = "csr") -> x509.CertificateSigningRequest:
    """A CSR (PEM or DER) whose every part has been read; ``InputError`` otherwise."""
    if isinstance(data, str):
        if not data.isascii():
            raise InputError(field, "a CSR is PEM (ASCII) or DER")
        raw = data.encode("ascii")
    else:
        raw = data
    if len(raw) > MAX_CSR_BYTES:
        raise InputError(field, f"CSR larger than {MAX_CSR_BYTES} bytes")
    try:
        csr = (x509.load_pem_x509_csr(raw) if b"-----BEGIN" in raw
               else x509.load_der_x509_csr(raw))
    except PARSE_ERRORS as exc:
        raise InputError(field, f"not a valid CSR (PEM or DER): {_why(exc)}") from None
    _read(csr, field)
    return csr


def _why(exc: BaseException) -> str:
    return (str(exc) or type(exc).__name__)[:200]


def _read(csr: x509.CertificateSigningRequest, field: str) -> None:
    part = "the public key"
    try:
        csr.public_key()
        part = "the signature algorithm"
        _ = csr.signature_algorithm_oid
        csr.signature_hash_algorithm  # noqa: B018 - read to parse it
        part = "the subject"
        csr.subject.rfc4514_string()
        part = "the extensions"
        for ext in csr.extensions:
            part = f"the extension {ext.oid.dotted_string}"
            _ = ext.value
        part = "the attributes"
        for attr in csr.attributes:
            _ = attr.value
        part = "the signature"
        signature_valid(csr)
        part = "the names"
        names = policy.Names.from_csr(csr)
    except PARSE_ERRORS as exc:
        raise InputError(field, f"{part} of the CSR cannot be read: {_why(exc)}") from None
    _check_sans(names, field)


_verified: OrderedDict[bytes, bool] = OrderedDict()
_verified_lock = threading.Lock()


def signature_valid(csr: x509.CertificateSigningRequest) -> bool:
    """``csr.is_signature_valid``, computed once per CSR: ``load_csr`` reads it (to refuse
    a signature that cannot be parsed as the client's error) and the pipeline's
    ``check_csr`` asks again; each would verify the same signature over the same bytes.
    Remembered by the CSR's whole DER (what the answer is a function of, byte for byte:
    another CSR, or the same one altered anywhere, is another key), bounded."""
    der = csr.public_bytes(serialization.Encoding.DER)
    with _verified_lock:
        known = _verified.get(der)
        if known is not None:
            _verified.move_to_end(der)
            return known
    valid = csr.is_signature_valid
    with _verified_lock:
        _verified[der] = valid
        while len(_verified) > SIGNATURE_MEMO:
            _verified.popitem(last=False)
    return valid


def _check_sans(names: policy.Names, field: str) -> None:
    count = len(names.dns) + len(names.ip) + len(names.email) + len(names.uri)
    if count > MAX_SANS:
        raise InputError(field, f"the CSR asks for {count} names; at most {MAX_SANS}")
    for kind, values in (("dns", names.dns), ("email", names.email), ("uri", names.uri)):
        for value in values:
            if not value.isascii():
                raise InputError(field, f"subjectAltName {kind} {policy.quote(value)} is not ASCII "
                                 "(IA5String; internationalised names go as A-labels)")
            try:
                template_model.normalize_san(kind, value)
            except ValueError as exc:
                raise InputError(field, f"subjectAltName {kind}: {exc}") from None
