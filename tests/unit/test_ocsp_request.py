"""The OCSP request reader and the GET path decoder: no token, no database."""

from __future__ import annotations

import base64
import contextlib
import os
import random
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from appliance.ocsp.certid import cert_id_hashes
from appliance.ocsp.request import MAX_REQUEST_BYTES, MalformedRequest, first_cert_id
from appliance.ocsp.responder import decode_get

DER = serialization.Encoding.DER


def _cert(name: str, serial: int, issuer: x509.Certificate | None = None,
          key: ec.EllipticCurvePrivateKey | None = None) -> tuple[x509.Certificate,
                                                                   ec.EllipticCurvePrivateKey]:
    own = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(subject)
            .issuer_name(issuer.subject if issuer else subject).public_key(own.public_key())
            .serial_number(serial).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1))
            .sign(key or own, hashes.SHA256()))
    return cert, own


@pytest.fixture(scope="module")
def pair() -> tuple[x509.Certificate, x509.Certificate]:
    ca, key = _cert("ca", 1)
    leaf, _ = _cert("leaf", 0x1234567890ABCDEF1234567890ABCDEF, ca, key)
    return ca, leaf


def _request(ca: x509.Certificate, leaf: x509.Certificate, algo: hashes.HashAlgorithm,
             nonce: bool = False) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(leaf, ca, algo)
    if nonce:
        b = b.add_extension(x509.OCSPNonce(os.urandom(32)), critical=False)
    return b.build().public_bytes(DER)


@pytest.mark.parametrize("algo", [hashes.SHA1(), hashes.SHA256()])
def test_cert_id_matches_cryptography_and_our_issuer_hashes(
        pair: tuple[x509.Certificate, x509.Certificate], algo: hashes.HashAlgorithm) -> None:
    ca, leaf = pair
    der = _request(ca, leaf, algo, nonce=True)
    ref = ocsp.load_der_ocsp_request(der)
    cid = first_cert_id(der)
    assert cid.hash_name == algo.name
    assert (cid.issuer_name_hash, cid.issuer_key_hash, cid.serial) == (
        ref.issuer_name_hash, ref.issuer_key_hash, ref.serial_number)
    assert cert_id_hashes(ca)[algo.name] == (ref.issuer_name_hash, ref.issuer_key_hash)


def test_other_hash_algorithms_are_read_but_not_named(
        pair: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, leaf = pair
    assert first_cert_id(_request(ca, leaf, hashes.SHA384())).hash_name is None


def _tlv(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 0x80 else (bytes([0x81, n]) if n < 0x100
                                          else bytes([0x82]) + n.to_bytes(2, "big"))
    return bytes([tag]) + length + body


def _certid(serial: bytes, oid: bytes = bytes.fromhex("06052b0e03021a")) -> bytes:
    return _tlv(0x30, _tlv(0x30, oid + b"\x05\x00") + _tlv(0x04, b"n" * 20)
                + _tlv(0x04, b"k" * 20) + _tlv(0x02, serial))


def test_several_cert_ids_the_first_is_answered() -> None:
    requests = _tlv(0x30, _certid(b"\x01")) + _tlv(0x30, _certid(b"\x02"))
    version = _tlv(0xA0, _tlv(0x02, b"\x00"))
    requestor = _tlv(0xA1, _tlv(0x82, b"a.example"))
    exts = _tlv(0xA2, _tlv(0x30, b""))
    der = _tlv(0x30, _tlv(0x30, version + requestor + _tlv(0x30, requests) + exts))
    cid = first_cert_id(der)
    assert cid.serial == 1 and cid.issuer_name_hash == b"n" * 20
    # cryptography refuses a request with two CertIDs; we answer the first (RFC 5019)
    plain = _tlv(0x30, _tlv(0x30, _tlv(0x30, requests)))
    assert first_cert_id(plain).serial == 1
    with pytest.raises(NotImplementedError):
        ocsp.load_der_ocsp_request(plain)
    signed = _tlv(0x30, _tlv(0x30, _tlv(0x30, requests)) + _tlv(0xA0, b"\x30\x00"))
    assert first_cert_id(signed).serial == 1


@pytest.mark.parametrize("der", [
    b"",
    b"\x30",
    b"\x30\x00",  # no tbsRequest
    b"\x30\x80\x30\x00\x00\x00",  # indefinite length (BER)
    b"\x30\x81\x05" + b"\x30\x03\x30\x01\x00",  # non-minimal length
    _tlv(0x30, _tlv(0x30, _tlv(0x30, b""))),  # empty requestList
    _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\x00\x01"))))),  # padded serial
    _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b""))))),  # empty serial
    _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\x01"))))) + b"\x00",  # trailing
    _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\x01")))) + b"\x04\x00"),
    _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x31, _certid(b"\x01"))))),  # SET, not SEQUENCE
    _tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\x01", b"\x06\x00"))))),
    b"\x30" + b"\x82\xff\xff" + b"\x00" * 20,  # longer than the data
    b"\x00" * (MAX_REQUEST_BYTES + 1),
])
def test_malformed(der: bytes) -> None:
    with pytest.raises(MalformedRequest):
        first_cert_id(der)


def test_fuzzed_requests_raise_nothing_but_malformed(
        pair: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, leaf = pair
    good = _request(ca, leaf, hashes.SHA1(), nonce=True)
    rnd = random.Random(1234)
    for _ in range(5000):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 4)):
            op = rnd.random()
            i = rnd.randrange(len(data))
            if op < 0.5:
                data[i] = rnd.randrange(256)
            elif op < 0.75:
                del data[i:i + rnd.randint(1, 8)]
            else:
                data[i:i] = os.urandom(rnd.randint(1, 8))
        with contextlib.suppress(MalformedRequest):
            first_cert_id(bytes(data))


def test_get_path_variants(pair: tuple[x509.Certificate, x509.Certificate]) -> None:
    ca, leaf = pair
    der = _request(ca, leaf, hashes.SHA1())
    b64 = base64.b64encode(der).decode()
    for path in (
        "/ocsp/" + b64,
        "/ocsp/" + quote(b64, safe=""),
        "/ocsp/" + quote(quote(b64, safe=""), safe=""),
        "/ocsp/" + b64.rstrip("="),
        "/ocsp/" + b64.replace("+", " "),
        "/ocsp/" + b64.replace("+", "%20"),
        "/ocsp/" + b64.replace("+", "-").replace("/", "_"),
        "/ocsp//" + b64,
        "/ocsp///" + quote(b64, safe=""),
        "/ocsp/" + "\n".join([b64[:40], b64[40:]]),
    ):
        assert decode_get(path) == der, path
    for path in ("/ocsp", "/ocsp/", "/ocsp/%%%", "/ocsp/a", "/other/" + b64,
                 "/ocsp/" + "A" * 20_000):
        assert decode_get(path) is None, path


def _mutations(good: bytes, rnd: random.Random, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        data = bytearray(good)
        for _ in range(rnd.randint(1, 3)):
            op = rnd.random()
            i = rnd.randrange(len(data))
            if op < 0.6:
                data[i] = rnd.choice([0x00, 0x02, 0x04, 0x05, 0x06, 0x30, 0x7F, 0x80, 0x81,
                                      0xA0, 0xA2, 0xFF, data[i] + 1 & 0xFF, data[i] - 1 & 0xFF])
            elif op < 0.8:
                del data[i:i + rnd.randint(1, 3)]
            else:
                data[i:i] = bytes(rnd.randrange(256) for _ in range(rnd.randint(1, 3)))
        out.append(bytes(data))
    return out


def test_the_short_form_reader_agrees_with_the_general_walker(
        pair: tuple[x509.Certificate, x509.Certificate]) -> None:
    """The fast reader may decline (None) but must never accept what the walker refuses
    nor read a different CertID, on valid requests and on 20,000 mutations of them."""
    from appliance.ocsp import request as rq

    ca, leaf = pair
    rnd = random.Random(99)
    goods = [_request(ca, leaf, algo) for algo in (hashes.SHA1(), hashes.SHA256())]
    goods.append(_tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\x01"))))))
    goods.append(_tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\xff\x01"))))))
    small_nonce = _tlv(0xA2, _tlv(0x30, _tlv(0x30, bytes.fromhex("06092b0601050507300102")
                                             + _tlv(0x04, _tlv(0x04, b"n" * 16)))))
    goods.append(_tlv(0x30, _tlv(0x30, _tlv(0x30, _tlv(0x30, _certid(b"\x05")))
                                 + small_nonce)))
    for good in goods:
        assert rq._short_form(good) == rq._walk(good)  # the common shapes take the fast path
    long_form = _request(ca, leaf, hashes.SHA1(), nonce=True)  # 32-octet nonce: 0x81 lengths
    assert rq._short_form(long_form) is None and first_cert_id(long_form) == rq._walk(long_form)
    accepted = 0
    for good in goods:
        for data in _mutations(good, rnd, 4000):
            fast = rq._short_form(data)
            if fast is None:
                continue
            accepted += 1
            assert rq._walk(data) == fast, data.hex()
    assert accepted > 1000  # the mutations did exercise the fast path


def test_the_plain_get_fast_path_agrees_with_the_general_decoder(
        pair: tuple[x509.Certificate, x509.Certificate]) -> None:
    from appliance.ocsp import responder

    ca, leaf = pair
    rnd = random.Random(7)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_="
    paths = []
    for nonce in (False, True):
        der = _request(ca, leaf, hashes.SHA1(), nonce=nonce)
        b64 = base64.b64encode(der).decode()
        paths += ["/ocsp/" + b64, "/ocsp/" + b64.rstrip("="), "/ocsp//" + b64,
                  "/ocsp/" + base64.urlsafe_b64encode(der).decode().rstrip("=")]
    for _ in range(3000):
        p = list(rnd.choice(paths))
        i = rnd.randrange(6, len(p))
        p[i] = rnd.choice(alphabet)
        paths.append("".join(p))
    for path in paths:
        # The general decoder: the same function with the fast path switched off.
        assert responder.decode_get(path) == responder.decode_get(path, fast=False), path
