"""Hop assertions (appliance/ra/assertion.py): signed IN THE TOKEN by an RA's credential key,
verified with that key, nested hop below hop; every flaw is a HopAssertionError (401)."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import json
import time

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.hsm import keys
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import TokenECPrivateKey, token_private_key
from appliance.ra import assertion
from appliance.ra.assertion import Hop
from appliance.ra.errors import HopAssertionError
from appliance.x509 import algorithms
from tests.conftest import unique_label


def _credential(key: ec.EllipticCurvePrivateKey, name: str) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    algo = hashes.SHA256() if key.curve.key_size == 256 else hashes.SHA384()
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1)).sign(key, algo))


RaKeys = dict[str, tuple[TokenECPrivateKey, x509.Certificate]]


@pytest.fixture(scope="module")
def ra_keys(pool: SessionPool) -> RaKeys:
    """Three RAs' credential keys, made in the test token (P-256, one P-384)."""
    out = {}
    for name, kind in (("edge-1", "ec-p256"), ("edge-2", "ec-p256"), ("edge-3", "ec-p384")):
        key = token_private_key(pool, keys.generate_keypair(pool, unique_label("ra"), kind))
        assert isinstance(key, TokenECPrivateKey)
        out[name] = (key, _credential(key, name))
    return out


SUBJECT = assertion.digest(b"the CSR's DER")


def _hop(iss: str, below: str | None = None, op: assertion.Op = "sign", **kw: object) -> Hop:
    fields: dict[str, object] = dict(
        iss=iss, op=op, subject_sha256=SUBJECT, requester="admin:alice@example.com",
        provisioner={"name": "admins", "type": "jwk"},
        names=("www.Example.com", "example.com", "example.com"), lifetime=3600, below=below)
    fields.update(kw)
    return Hop(**fields)  # type: ignore[arg-type]


def _pub(ra_keys: RaKeys, name: str) -> ec.EllipticCurvePublicKey:
    return ra_keys[name][0].public_key()


def _b64(doc: dict[str, object]) -> str:
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(part: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return doc


def test_a_token_signed_assertion_verifies_with_the_ra_key(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    token = assertion.make(key, cert, _hop("edge-1"))
    header = _unb64(token.split(".")[0])
    der = cert.public_bytes(serialization.Encoding.DER)
    assert header["alg"] == "ES256" and header["typ"] == "ra-hop+jwt"
    assert header["x5t#S256"] == assertion.x5t_of(cert) == base64.urlsafe_b64encode(
        hashlib.sha256(der).digest()).rstrip(b"=").decode()
    hop = assertion.verify(token, key.public_key(), iss="edge-1", op="sign",
                           subject_sha256=SUBJECT)
    assert hop.names == ("example.com", "www.example.com")  # lower-case, once, sorted
    assert hop.requester == "admin:alice@example.com" and hop.lifetime == 3600
    assert hop.provisioner == {"name": "admins", "type": "jwk"} and hop.below is None
    assert hop.exp == hop.iat + 300 and hop.jti and hop.x5t == header["x5t#S256"]
    assert assertion.peek(token) == hop


def test_p384_credential_signs_es384(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-3"]
    token = assertion.make(key, cert, _hop("edge-3"))
    assert _unb64(token.split(".")[0])["alg"] == "ES384"
    assert assertion.verify(token, key.public_key(), iss="edge-3", op="sign",
                            subject_sha256=SUBJECT).iss == "edge-3"
    # ES384 under a P-256 key's name is refused before any signature check.
    with pytest.raises(HopAssertionError, match="does not fit"):
        assertion.verify(token, _pub(ra_keys, "edge-1"), iss="edge-3", op="sign",
                         subject_sha256=SUBJECT)


def test_three_hops_nest_and_each_verifies_with_its_own_key(ra_keys: RaKeys) -> None:
    bottom = assertion.make(*ra_keys["edge-3"], _hop("edge-3"))
    middle = assertion.make(*ra_keys["edge-2"], _hop(
        "edge-2", bottom, requester="edge-3", provisioner={"name": "edge-3", "type": "ra"}))
    top = assertion.make(*ra_keys["edge-1"], _hop(
        "edge-1", middle, requester="edge-2", provisioner={"name": "edge-2", "type": "ra"}))
    hop, seen = assertion.verify(top, _pub(ra_keys, "edge-1"), iss="edge-1", op="sign",
                                 subject_sha256=SUBJECT), []
    while True:
        seen.append(hop.iss)
        if hop.below is None:
            break
        lower = assertion.peek(hop.below)
        hop = assertion.verify(hop.below, _pub(ra_keys, lower.iss), iss=lower.iss, op="sign",
                               subject_sha256=SUBJECT)
    assert seen == ["edge-1", "edge-2", "edge-3"]
    assert hop.requester == "admin:alice@example.com"
    # A lower hop does not verify with the key of the hop above it.
    with pytest.raises(HopAssertionError, match="signature"):
        assertion.verify(middle, _pub(ra_keys, "edge-1"), iss="edge-2", op="sign",
                         subject_sha256=SUBJECT)


def test_register_and_revoke_claims(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    reg = {"name": "edge-9", "max_duration": "24h", "policy": None}
    token = assertion.make(key, cert, _hop("edge-1", op="register", register=reg))
    assert assertion.verify(token, key.public_key(), iss="edge-1", op="register",
                            subject_sha256=SUBJECT).register == reg
    with pytest.raises(HopAssertionError, match="register"):
        assertion.make(key, cert, _hop("edge-1", op="register"))
    serial = assertion.serial_digest("00:AB:cd")
    assert serial == assertion.digest(b"abcd")
    revoke = assertion.make(key, cert, _hop("edge-1", op="revoke", names=(),
                                            subject_sha256=serial, reason="keyCompromise"))
    assert assertion.verify(revoke, key.public_key(), iss="edge-1", op="revoke",
                            subject_sha256=serial).reason == "keyCompromise"
    with pytest.raises(HopAssertionError, match="no names"):
        assertion.make(key, cert, _hop("edge-1", op="revoke", subject_sha256=serial))


def _tamper(token: str, **changes: object) -> str:
    head, payload, sig = token.split(".")
    doc = _unb64(payload)
    doc.update(changes)
    return f"{head}.{_b64(doc)}.{sig}"


def test_tampered_payload_is_refused(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    token = assertion.make(key, cert, _hop("edge-1"))
    for change in ({"names": ["evil.example"]}, {"lifetime": 999_999},
                   {"requester": "admin:mallory"}):
        with pytest.raises(HopAssertionError, match="signature does not verify"):
            assertion.verify(_tamper(token, **change), key.public_key(), iss="edge-1",
                             op="sign", subject_sha256=SUBJECT)
    sig = token.rsplit(".", 1)[1]
    flipped = token[: -len(sig)] + ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(HopAssertionError, match="signature"):
        assertion.verify(flipped, key.public_key(), iss="edge-1", op="sign",
                         subject_sha256=SUBJECT)


def test_wrong_key_op_subject_issuer_are_refused(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    token = assertion.make(key, cert, _hop("edge-1"))
    pub = key.public_key()
    with pytest.raises(HopAssertionError, match="signature"):
        assertion.verify(token, _pub(ra_keys, "edge-2"), iss="edge-1", op="sign",
                         subject_sha256=SUBJECT)
    with pytest.raises(HopAssertionError, match="'sign', not 'renew'"):
        assertion.verify(token, pub, iss="edge-1", op="renew", subject_sha256=SUBJECT)
    with pytest.raises(HopAssertionError, match="another sign subject"):
        assertion.verify(token, pub, iss="edge-1", op="sign",
                         subject_sha256=assertion.digest(b"another CSR"))
    with pytest.raises(HopAssertionError, match="by 'edge-1', not 'edge-2'"):
        assertion.verify(token, pub, iss="edge-2", op="sign", subject_sha256=SUBJECT)
    # A software key cannot pass for the token key: make refuses a certificate of another key.
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(Exception, match="not for the credential key"):
        assertion.make(other, cert, _hop("edge-1"))


def test_expired_and_future_assertions_are_refused(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    now = time.time()
    old = assertion.make(key, cert, _hop("edge-1"), now=now - 300 - 61)
    with pytest.raises(HopAssertionError, match="expired"):
        assertion.verify(old, key.public_key(), iss="edge-1", op="sign",
                         subject_sha256=SUBJECT)
    # Within the 60 s leeway it still verifies; an explicit ``now`` is honoured.
    recent = assertion.make(key, cert, _hop("edge-1"), now=now - 300 - 30)
    assertion.verify(recent, key.public_key(), iss="edge-1", op="sign",
                     subject_sha256=SUBJECT)
    with pytest.raises(HopAssertionError, match="expired"):
        assertion.verify(recent, key.public_key(), iss="edge-1", op="sign",
                         subject_sha256=SUBJECT, now=now + 60)
    future = assertion.make(key, cert, _hop("edge-1"), now=now + 120)
    with pytest.raises(HopAssertionError, match="future"):
        assertion.verify(future, key.public_key(), iss="edge-1", op="sign",
                         subject_sha256=SUBJECT)


def _raw(ra_keys: RaKeys, claims: dict[str, object]) -> str:
    """A token signed by edge-1's key with arbitrary claims (make refuses to write them)."""
    key, cert = ra_keys["edge-1"]
    base = assertion.peek(assertion.make(key, cert, _hop("edge-1"))).claims()
    base.update(claims)
    return jwt.encode(base, key, algorithm="ES256",
                      headers={"typ": "ra-hop+jwt", "x5t#S256": "A" * 43})


def test_oversized_and_malformed_tokens_are_refused(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    pub = key.public_key()
    big = _hop("edge-1", names=tuple(f"host-{i:03}.{'x' * 120}.example" for i in range(120)))
    with pytest.raises(HopAssertionError, match="at most 16384"):
        assertion.make(key, cert, big)
    with pytest.raises(HopAssertionError, match="larger than 65536"):
        assertion.peek("a" * 65_537)
    for bad in (None, "", "a.b", "a..c", 42):
        with pytest.raises(HopAssertionError):
            assertion.peek(bad)
    long_lived = _raw(ra_keys, {"exp": int(time.time()) + 3600})
    with pytest.raises(HopAssertionError, match="at most 300 seconds"):
        assertion.verify(long_lived, pub, iss="edge-1", op="sign", subject_sha256=SUBJECT)
    with pytest.raises(HopAssertionError, match="unknown extra"):
        assertion.peek(_raw(ra_keys, {"extra": 1}))
    with pytest.raises(HopAssertionError, match="requester"):
        assertion.peek(_raw(ra_keys, {"requester": "r" * 257}))
    with pytest.raises(HopAssertionError, match="sorted"):
        assertion.peek(_raw(ra_keys, {"names": ["b.example", "a.example"]}))
    with pytest.raises(HopAssertionError, match="nested deeper"):
        assertion.peek(_raw(ra_keys, {"provisioner": {"name": [[[[["x"]]]]], "type": "t"}}))
    # alg "none" or HS256 (the key as a MAC secret) never passes.
    _, payload, _ = assertion.make(key, cert, _hop("edge-1")).split(".")
    for alg in ("none", "HS256", "ES512"):
        head = _b64({"alg": alg, "typ": "ra-hop+jwt", "x5t#S256": "A" * 43})
        with pytest.raises(HopAssertionError, match="does not fit"):
            assertion.verify(f"{head}.{payload}.x", pub, iss="edge-1", op="sign",
                             subject_sha256=SUBJECT)
    wrong_typ = _b64({"alg": "ES256", "typ": "JWT", "x5t#S256": "A" * 43})
    with pytest.raises(HopAssertionError, match="typ"):
        assertion.peek(f"{wrong_typ}.{payload}.x")


def test_paths_deeper_than_eight_hops_are_refused(ra_keys: RaKeys) -> None:
    key, cert = ra_keys["edge-1"]
    token = None
    # Small hops so that depth, not size, is what stops it.
    for _ in range(8):
        token = assertion.make(key, cert, _hop("edge-1", token, names=(), requester="r",
                                               provisioner={"name": "p", "type": "ra"}))
    assert token is not None
    hop, depth = assertion.peek(token), 1
    while hop.below:
        hop, depth = assertion.peek(hop.below), depth + 1
    assert depth == 8
    with pytest.raises(HopAssertionError, match="deeper than 8 hops"):
        assertion.make(key, cert, _hop("edge-1", token, names=(), requester="r",
                                       provisioner={"name": "p", "type": "ra"}))


def test_the_table_decides_the_algorithms() -> None:
    assert algorithms.jws_algs("ra") == ("ES256", "ES384")
    assert algorithms.FIPS.jws.ra == ("ES256", "ES384")
    narrowed = algorithms.DEFAULT.narrowed(
        jws=dataclasses.replace(algorithms.DEFAULT.jws, ra=("ES384",)))
    key = ec.generate_private_key(ec.SECP256R1())
    token = assertion.make(key, _credential(key, "edge-5"), _hop("edge-5"))
    with algorithms.using(narrowed), pytest.raises(HopAssertionError, match="not accepted"):
        assertion.verify(token, key.public_key(), iss="edge-5", op="sign",
                         subject_sha256=SUBJECT)
    with algorithms.using(narrowed), pytest.raises(HopAssertionError, match="not accepted"):
        assertion.make(key, _credential(key, "edge-5"), _hop("edge-5"))


def test_names_of_a_csr() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "WWW.example.com")]))
           .add_extension(x509.SubjectAlternativeName([
               x509.DNSName("www.example.com"), x509.DNSName("api.example.com")]), False)
           .sign(key, hashes.SHA256()))
    assert assertion.names_of(csr) == ("api.example.com", "www.example.com")
