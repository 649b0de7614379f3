"""CertID pieces of an issuer: the hashes of its name and of its public key (RFC 6960 4.1.1)."""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from appliance.ocsp.request import MalformedRequest, expect_tlv

# SHA-1 here only identifies a certificate (as RFC 6960 / RFC 5019 clients do); nothing is
# signed with it.
CERTID_HASHES: dict[str, hashes.HashAlgorithm] = {
    "sha1": hashes.SHA1(),  # noqa: S303
    "sha256": hashes.SHA256(),
}


def key_hash_input(cert: x509.Certificate) -> bytes:
    """The subjectPublicKey BIT STRING's value (less its unused-bits octet): what the
    CertID's issuerKeyHash and a responder ID by key hash are hashes of."""
    spki = cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    try:
        start, end = expect_tlv(spki, 0, len(spki), 0x30, "SubjectPublicKeyInfo")
        _, alg_end = expect_tlv(spki, start, end, 0x30, "AlgorithmIdentifier")
        bits_start, bits_end = expect_tlv(spki, alg_end, end, 0x03, "BIT STRING")
    except MalformedRequest as exc:  # cryptography wrote it: cannot happen
        raise ValueError(f"cannot read the public key: {exc}") from None
    return spki[bits_start + 1:bits_end]


def cert_id_hashes(cert: x509.Certificate) -> dict[str, tuple[bytes, bytes]]:
    """Per CertID hash name: (issuerNameHash, issuerKeyHash) of certificates ``cert`` issued."""
    name = cert.subject.public_bytes()
    key = key_hash_input(cert)
    return {n: (hashlib.new(n, name).digest(), hashlib.new(n, key).digest())
            for n in CERTID_HASHES}
