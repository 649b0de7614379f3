"""ACME building blocks without a server: JWS parsing and checks, EAB bindings, ARI certIDs
and windows, identifiers."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from appliance.acme import ari, eab, jws
from appliance.acme.identifiers import parse_list
from appliance.acme.problems import AcmeProblem
from tests.acme_client import b64, eab_binding, jwk_of, sign, thumbprint

URL = "https://ca.test/acme/a/new-order"


def _verify(body: dict[str, str], *, url: str = URL, nonce_ok: bool = True,
            want: str = "jwk") -> jws.Verified:
    return jws.verify(jws.parse(body), url=url, redeem_nonce=lambda _n: nonce_ok,
                      account_key=lambda _k: pytest.fail("no kid expected"), want=want)


def _kind(exc: pytest.ExceptionInfo[AcmeProblem]) -> str:
    return exc.value.kind


def test_jws_good_and_each_refusal() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    prot = {"alg": "ES256", "nonce": "n", "url": URL, "jwk": jwk_of(key)}
    v = _verify(sign(key, prot, {"a": 1}))
    assert v.json() == {"a": 1} and not v.post_as_get
    assert _verify(sign(key, prot, None)).post_as_get
    with pytest.raises(AcmeProblem) as e:
        _verify(sign(key, prot, {}), url=URL + "x")
    assert _kind(e) == "unauthorized"
    with pytest.raises(AcmeProblem) as e:
        _verify(sign(key, prot, {}), nonce_ok=False)
    assert _kind(e) == "badNonce"
    with pytest.raises(AcmeProblem) as e:  # signed by another key
        _verify(sign(ec.generate_private_key(ec.SECP256R1()), prot, {}))
    assert _kind(e) == "unauthorized"
    with pytest.raises(AcmeProblem) as e:
        _verify(sign(key, {**prot, "alg": "ES384"}, {}))
    assert _kind(e) == "badSignatureAlgorithm"
    with pytest.raises(AcmeProblem) as e:
        _verify(sign(key, {**prot, "alg": "none"}, {}))
    assert _kind(e) == "badSignatureAlgorithm"
    with pytest.raises(AcmeProblem) as e:
        _verify(sign(key, {**prot, "kid": "k"}, {}))
    assert _kind(e) == "malformed"
    body = sign(key, prot, {})
    with pytest.raises(AcmeProblem):
        jws.parse({**body, "header": {}})
    with pytest.raises(AcmeProblem):
        jws.parse({**body, "protected": body["protected"] + "="})
    with pytest.raises(AcmeProblem):
        jws.parse({**body, "signature": "x" * (jws.MAX_FIELD + 1)})
    with pytest.raises(AcmeProblem):
        jws.parse([body])


def test_account_keys_within_bounds() -> None:
    small = rsa.generate_private_key(65537, 1024).public_key().public_numbers()
    n = small.n.to_bytes((small.n.bit_length() + 7) // 8, "big")
    with pytest.raises(AcmeProblem) as e:
        jws.load_jwk({"kty": "RSA", "n": b64(n), "e": "AQAB"})
    assert _kind(e) == "badPublicKey"
    with pytest.raises(AcmeProblem) as e:
        jws.load_jwk({"kty": "oct", "k": "abc"})
    assert _kind(e) == "badPublicKey"
    with pytest.raises(AcmeProblem):
        jws.load_jwk({"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"})
    key = ec.generate_private_key(ec.SECP256R1())
    assert jws.thumbprint(jws.load_jwk(jwk_of(key))) == thumbprint(key)


def test_eab_binding_checks() -> None:
    account = ec.generate_private_key(ec.SECP256R1())
    mac = b64(b"m" * 32)
    url = "https://ca.test/acme/a/new-account"
    good = eab_binding("kid1", mac, account, url)
    assert eab.binding_key_id(good) == "kid1"
    eab.check_binding(good, account_jwk=jwk_of(account), url=url, hmac_key=b"m" * 32)
    with pytest.raises(AcmeProblem):  # wrong key
        eab.check_binding(good, account_jwk=jwk_of(account), url=url, hmac_key=b"x" * 32)
    with pytest.raises(AcmeProblem):  # over another account key
        eab.check_binding(good, account_jwk=jwk_of(ec.generate_private_key(ec.SECP256R1())),
                          url=url, hmac_key=b"m" * 32)
    with pytest.raises(AcmeProblem):  # for another URL
        eab.check_binding(eab_binding("kid1", mac, account, url + "x"),
                          account_jwk=jwk_of(account), url=url, hmac_key=b"m" * 32)
    prot = json.loads(jws.b64decode(good["protected"], "p"))
    with pytest.raises(AcmeProblem):  # an EAB JWS carries no nonce
        bad = dict(good, protected=b64(json.dumps({**prot, "nonce": "n"}).encode()))
        eab.check_binding(bad, account_jwk=jwk_of(account), url=url, hmac_key=b"m" * 32)


def _cert(serial: int, days: float = 1.0) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = datetime.now(UTC).replace(microsecond=0)
    return (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                key.public_key()), False)
            .sign(key, hashes.SHA256()))


@pytest.mark.parametrize("serial", [1, 0x7F, 0x80, 0xFF00, (1 << 159) - 1, 1 << 158])
def test_ari_cert_id_round_trip(serial: int) -> None:
    cert = _cert(serial)
    cid = ari.parse_cert_id(ari.cert_id(cert))
    assert cid.serial == serial
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert cid.key_identifier == aki.key_identifier
    raw = ari.serial_der_bytes(serial)
    assert not raw[0] & 0x80 and (len(raw) == 1 or raw[0] or raw[1] & 0x80)  # minimal DER


def test_ari_cert_id_refusals_and_windows() -> None:
    for bad in ("", "a", "a.b.c", "AA.gA", "AA.", ".AQ", "x" * 300):
        with pytest.raises(AcmeProblem):
            ari.parse_cert_id(bad)
    nb = datetime(2026, 1, 1, tzinfo=UTC)
    na = nb + timedelta(days=90)
    start, end = ari.window(nb, na, None)
    assert (start, end) == (nb + timedelta(days=60), nb + timedelta(days=75))
    now = datetime(2026, 1, 10, tzinfo=UTC)
    start, end = ari.window(nb, na, now - timedelta(hours=1), now=now)
    assert start < end <= now  # revoked: renew now


def test_identifiers() -> None:
    got = parse_list([{"type": "dns", "value": "WWW.Example.TEST"},
                      {"type": "dns", "value": "*.example.test"},
                      {"type": "ip", "value": "::ffff:10.0.0.1"},
                      {"type": "dns", "value": "www.example.test"}])
    assert [(i.type, i.value, i.wildcard) for i in got] == [
        ("dns", "www.example.test", False), ("dns", "*.example.test", True),
        ("ip", "::ffff:a00:1", False)]
    for bad in ([], [{"type": "dns"}], [{"type": "dns", "value": "a..b"}],
                [{"type": "uri", "value": "x"}], [{"type": "dns", "value": "a", "x": 1}],
                [{"type": "ip", "value": "1.2.3"}]):
        with pytest.raises(AcmeProblem):
            parse_list(bad)
