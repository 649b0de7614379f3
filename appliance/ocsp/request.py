"""The first CertID of a DER OCSPRequest, read by a small strict DER walker.

Why not ``cryptography.x509.ocsp.load_der_ocsp_request``: it refuses a request
with more than one CertID (RFC 6960 allows several; RFC 5019 says answer the
first), and the responder needs nothing of the request but that CertID.
Extensions (nonces included) and signatures are skipped on purpose: responses
are pre-signed and identical for every client (RFC 5019 §2.2).

Everything is bounds-checked; any deviation from DER's tag-length-value shape,
trailing octets, or a missing piece is a :class:`MalformedRequest`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_REQUEST_BYTES: Final = 10_000

# OID contents (without tag and length) of the CertID hash algorithms we answer for.
SHA1_OID: Final = bytes.fromhex("2b0e03021a")
SHA256_OID: Final = bytes.fromhex("608648016503040201")
HASH_NAMES: Final = {SHA1_OID: "sha1", SHA256_OID: "sha256"}

_SEQUENCE: Final = 0x30
_OCTET_STRING: Final = 0x04
_INTEGER: Final = 0x02
_OID: Final = 0x06
_CTX0: Final = 0xA0
_CTX1: Final = 0xA1


class MalformedRequest(ValueError):
    """Not a DER OCSPRequest with at least one CertID."""


@dataclass(frozen=True, slots=True)
class CertId:
    hash_name: str | None  # "sha1", "sha256", or None for any other algorithm
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial: int


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of contents, end of contents) of the TLV at ``pos``; DER lengths only."""
    if pos + 2 > end:
        raise MalformedRequest("truncated")
    tag = data[pos]
    if tag & 0x1F == 0x1F:
        raise MalformedRequest("high tag numbers are not used in OCSP requests")
    first = data[pos + 1]
    pos += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 2 or pos + count > end:
            raise MalformedRequest("bad length")  # indefinite, or longer than any request
        length = int.from_bytes(data[pos:pos + count], "big")
        if length < 0x80 or (count == 2 and length < 0x100):
            raise MalformedRequest("length not minimally encoded")
        pos += count
    if pos + length > end:
        raise MalformedRequest("truncated")
    return tag, pos, pos + length


def expect_tlv(data: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """Contents (start, end) of the TLV at ``pos``, which must carry ``tag``."""
    got, start, stop = _tlv(data, pos, end)
    if got != tag:
        raise MalformedRequest(f"expected {what}")
    return start, stop


def first_cert_id(data: bytes) -> CertId:
    """The first CertID of the request in ``data``."""
    if not data or len(data) > MAX_REQUEST_BYTES:
        raise MalformedRequest("empty or too large")
    fast = _short_form(data)
    return fast if fast is not None else _walk(data)


def _short_form(data: bytes) -> CertId | None:
    """The CertID of the common request shape, or None to let :func:`_walk` decide.

    Nearly every request is small: one Request, no version, requestorName or signature,
    every length in DER's short form. This reads that shape with plain index checks
    (~1 µs against ~10 µs for the general walker). It accepts only a subset of what
    :func:`_walk` accepts and returns the same CertID (``tests/unit/test_ocsp_request.py``
    checks that on valid and mutated requests); anything else returns None.
    """
    try:
        end = len(data)
        if data[0] != _SEQUENCE or data[1] >= 0x80 or data[1] != end - 2 \
                or data[2] != _SEQUENCE or data[3] >= 0x80 or data[3] != end - 4 \
                or data[4] != _SEQUENCE:  # OCSPRequest, TBSRequest
            return None
        list_len = data[5]
        list_end = 6 + list_len
        if list_len >= 0x80 or list_end > end:  # requestList
            return None
        if list_end != end:  # requestExtensions [2]: one TLV up to the end
            ext_len = data[list_end + 1]
            if data[list_end] != 0xA2 or ext_len >= 0x80 or list_end + 2 + ext_len != end:
                return None
        if data[6] != _SEQUENCE or data[7] >= 0x80 or 8 + data[7] != list_end:  # one Request
            return None
        cid_end = 10 + data[9]
        if data[8] != _SEQUENCE or data[9] >= 0x80 or cid_end > list_end:  # CertID
            return None
        alg_end = 12 + data[11]
        oid_len = data[13]
        oid_end = 14 + oid_len
        if data[10] != _SEQUENCE or data[11] >= 0x80 or data[12] != _OID or oid_len == 0 \
                or oid_len >= 0x80 or oid_end > alg_end or alg_end > cid_end:
            return None
        if oid_end != alg_end and (alg_end != oid_end + 2 or data[oid_end] != 0x05
                                   or data[oid_end + 1] != 0):
            return None  # parameters: absent or NULL
        name_end = alg_end + 2 + data[alg_end + 1]
        if data[alg_end] != _OCTET_STRING or data[alg_end + 1] >= 0x80 or name_end > cid_end:
            return None
        key_end = name_end + 2 + data[name_end + 1]
        if data[name_end] != _OCTET_STRING or data[name_end + 1] >= 0x80 or key_end > cid_end:
            return None
        ser_len = data[key_end + 1]
        if data[key_end] != _INTEGER or ser_len == 0 or ser_len >= 0x80 \
                or key_end + 2 + ser_len != cid_end:
            return None
        raw = data[key_end + 2:cid_end]
        if len(raw) > 1 and ((raw[0] == 0 and raw[1] < 0x80)
                             or (raw[0] == 0xFF and raw[1] >= 0x80)):
            return None
        return CertId(
            hash_name=HASH_NAMES.get(data[14:oid_end]),
            issuer_name_hash=data[alg_end + 2:name_end],
            issuer_key_hash=data[name_end + 2:key_end],
            serial=int.from_bytes(raw, "big", signed=True),
        )
    except IndexError:
        return None


def _walk(data: bytes) -> CertId:
    """The general reader: any DER-valid request shape (several Requests, long lengths,
    version, requestorName, a signature)."""
    end = len(data)
    req_start, req_end = expect_tlv(data, 0, end, _SEQUENCE, "OCSPRequest")
    if req_end != end:
        raise MalformedRequest("trailing data")
    tbs_start, tbs_end = expect_tlv(data, req_start, req_end, _SEQUENCE, "TBSRequest")
    # Whatever follows tbsRequest (an optional [0] signature) must be one well-formed TLV.
    if tbs_end != req_end:
        tag, _, stop = _tlv(data, tbs_end, req_end)
        if tag != _CTX0 or stop != req_end:
            raise MalformedRequest("unexpected data after tbsRequest")
    pos = tbs_start
    tag, _, stop = _tlv(data, pos, tbs_end)
    if tag == _CTX0:  # version [0] EXPLICIT
        pos = stop
        tag, _, stop = _tlv(data, pos, tbs_end)
    if tag == _CTX1:  # requestorName [1] EXPLICIT
        pos = stop
        tag, _, stop = _tlv(data, pos, tbs_end)
    if tag != _SEQUENCE:
        raise MalformedRequest("expected requestList")
    list_start, list_end = expect_tlv(data, pos, tbs_end, _SEQUENCE, "requestList")
    if list_start == list_end:
        raise MalformedRequest("empty requestList")
    if list_end != tbs_end:  # requestExtensions [2] EXPLICIT, and nothing else
        tag, _, stop = _tlv(data, list_end, tbs_end)
        if tag != 0xA2 or stop != tbs_end:
            raise MalformedRequest("unexpected data after requestList")
    # Every Request of the list must at least be a well-formed SEQUENCE.
    first: tuple[int, int] | None = None
    p = list_start
    while p < list_end:
        tag, s, e = _tlv(data, p, list_end)
        if tag != _SEQUENCE:
            raise MalformedRequest("expected Request")
        if first is None:
            first = (s, e)
        p = e
    assert first is not None
    r_start, r_end = first
    cid_start, cid_end = expect_tlv(data, r_start, r_end, _SEQUENCE, "CertID")
    alg_start, alg_end = expect_tlv(data, cid_start, cid_end, _SEQUENCE, "hashAlgorithm")
    oid_start, oid_end = expect_tlv(data, alg_start, alg_end, _OID, "hash algorithm OID")
    if oid_start == oid_end:
        raise MalformedRequest("empty OID")
    if oid_end != alg_end:  # parameters: absent, or exactly NULL
        tag, s, e = _tlv(data, oid_end, alg_end)
        if tag != 0x05 or s != e or e != alg_end:
            raise MalformedRequest("unexpected hash algorithm parameters")
    name_start, name_end = expect_tlv(data, alg_end, cid_end, _OCTET_STRING, "issuerNameHash")
    key_start, key_end = expect_tlv(data, name_end, cid_end, _OCTET_STRING, "issuerKeyHash")
    ser_start, ser_end = expect_tlv(data, key_end, cid_end, _INTEGER, "serialNumber")
    if ser_end != cid_end:
        raise MalformedRequest("trailing data in CertID")
    if ser_start == ser_end:
        raise MalformedRequest("empty serial number")
    raw = data[ser_start:ser_end]
    if len(raw) > 1 and ((raw[0] == 0 and raw[1] < 0x80) or (raw[0] == 0xFF and raw[1] >= 0x80)):
        raise MalformedRequest("serial number not minimally encoded")
    return CertId(
        hash_name=HASH_NAMES.get(data[oid_start:oid_end]),
        issuer_name_hash=data[name_start:name_end],
        issuer_key_hash=data[key_start:key_end],
        serial=int.from_bytes(raw, "big", signed=True),
    )
