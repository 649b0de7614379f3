"""CSRs that no well-behaved tool makes, built from DER by hand (signed with a real key where
the signature matters), for the bad-input regression tests and the fuzz corpus."""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

SAN_OID = "2.5.29.17"
BASIC_CONSTRAINTS_OID = "2.5.29.19"
EXTENSION_REQUEST_OID = "1.2.840.113549.1.9.14"
ECDSA_SHA256_OID = "1.2.840.10045.4.3.2"
EC_PUBLIC_KEY_OID = "1.2.840.10045.2.1"
P256_OID = "1.2.840.10045.3.1.7"


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return bytes([tag]) + length + content


def oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    body = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        body += bytes(reversed(chunk))
    return tlv(0x06, bytes(body))


def seq(*items: bytes) -> bytes:
    return tlv(0x30, b"".join(items))


def integer(value: int) -> bytes:
    raw = value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True)
    return tlv(0x02, raw)


def extension(ext_oid: str, value: bytes, critical: bool = False) -> bytes:
    return seq(oid(ext_oid), *([b"\x01\x01\xff"] if critical else []), tlv(0x04, value))


def san_dns(*names: bytes) -> bytes:
    """A subjectAltName value of dNSName entries, the bytes taken as they are."""
    return seq(*(tlv(0x82, n) for n in names))


def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def p256_spki(k: ec.EllipticCurvePrivateKey) -> bytes:
    return k.public_key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)


def ec_spki(curve_oid: str, point: bytes, key_oid: str = EC_PUBLIC_KEY_OID) -> bytes:
    return seq(seq(oid(key_oid), oid(curve_oid)), tlv(0x03, b"\x00" + point))


def csr_der(*, extensions: list[bytes] | None = None, spki: bytes | None = None,
            version: int = 0, cn: str = "bad.example.com",
            signer: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """A CSR: version, CN subject, the key (``spki``, else the signer's), an
    extensionRequest holding ``extensions`` as given; signed by ``signer`` (ECDSA-SHA256)."""
    k = signer or key()
    subject = seq(tlv(0x31, seq(oid("2.5.4.3"), tlv(0x0C, cn.encode()))))
    attrs = b""
    if extensions is not None:
        attrs = seq(oid(EXTENSION_REQUEST_OID), tlv(0x31, seq(*extensions)))
    info = seq(integer(version), subject, spki if spki is not None else p256_spki(k),
               tlv(0xA0, attrs))
    sig = k.sign(info, ec.ECDSA(hashes.SHA256()))
    return seq(info, seq(oid(ECDSA_SHA256_OID)), tlv(0x03, b"\x00" + sig))


def pem(der: bytes) -> str:
    import base64
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i:i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + "\n".join(lines) + \
        "\n-----END CERTIFICATE REQUEST-----\n"


def good_csr(*dns: str, cn: str | None = None,
             signer: ec.EllipticCurvePrivateKey | None = None) -> str:
    """A well-formed CSR made by cryptography (the baseline the bad ones differ from)."""
    k = signer or key()
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    if dns:
        b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]),
                            critical=False)
    return b.sign(k, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def cases() -> dict[str, bytes]:
    """Every malformed-CSR case the issue lists, by name (DER)."""
    name = b"bad.example.com"
    return {
        "unknown_key_oid": csr_der(spki=seq(seq(oid("1.2.3.4.5")), tlv(0x03, b"\x00\x01\x02"))),
        "unknown_curve": csr_der(spki=ec_spki("1.2.3.4.5.6", b"\x04" + b"\x01" * 64)),
        "malformed_ec_point": csr_der(spki=ec_spki(P256_OID, b"\x04" + b"\x00" * 64)),
        "version_63": csr_der(version=63, extensions=[extension(SAN_OID, san_dns(name))]),
        "inner_asn1_error": csr_der(extensions=[extension(SAN_OID, b"\x30\x05\x82\x03ab")]),
        "duplicate_san": csr_der(extensions=[extension(SAN_OID, san_dns(name)),
                                             extension(SAN_OID, san_dns(name))]),
        "malformed_san": csr_der(extensions=[extension(SAN_OID, b"\x04\x02hi")]),
        "non_ia5_dns_name": csr_der(extensions=[extension(SAN_OID,
                                                          san_dns("bad.exämple.com".encode()))]),
        "malformed_basic_constraints": csr_der(extensions=[
            extension(SAN_OID, san_dns(name)),
            extension(BASIC_CONSTRAINTS_OID, b"\x30\x03\x02\x01")]),
    }
