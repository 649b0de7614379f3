"""The algorithm table: what it approves today, and that narrowing it is the only thing a
stricter mode needs (the real checks of the CSR, ACME, EAB, token and ceremony paths follow
the narrowed table, with no other change)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from appliance.acme import eab, jws
from appliance.acme.problems import AcmeProblem
from appliance.ceremony import script
from appliance.errors import ConfigError, KeyPolicyError
from appliance.issuance import pipeline
from appliance.provisioners import renewal, tokens
from appliance.x509 import algorithms
from appliance.x509.algorithms import DEFAULT, AlgorithmRefused

URL = "https://ca.test/acme/new-account"
_JWK_CURVE = {"secp256r1": ("P-256", 32, hashes.SHA256()), "secp384r1": ("P-384", 48,
              hashes.SHA384()), "secp521r1": ("P-521", 66, hashes.SHA512())}


def _exactly(message: str) -> str:
    return f"^{re.escape(message)}$"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _ec_jwk(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    crv, size, _ = _JWK_CURVE[key.curve.name]
    n = key.public_key().public_numbers()
    return {"kty": "EC", "crv": crv, "x": b64(n.x.to_bytes(size, "big")),
            "y": b64(n.y.to_bytes(size, "big"))}


def _es_jws(key: ec.EllipticCurvePrivateKey, alg: str) -> dict[str, str]:
    """A flattened JWS by ``key`` (any of the three curves) over an empty payload."""
    _, size, algo = _JWK_CURVE[key.curve.name]
    p64 = b64(json.dumps({"alg": alg, "nonce": "n", "url": URL, "jwk": _ec_jwk(key)}).encode())
    r, s = decode_dss_signature(key.sign(f"{p64}.".encode(), ec.ECDSA(algo)))
    return {"protected": p64, "payload": "",
            "signature": b64(r.to_bytes(size, "big") + s.to_bytes(size, "big"))}


def _acme_verify(body: dict[str, str]) -> jws.Verified:
    return jws.verify(jws.parse(body), url=URL, redeem_nonce=lambda _n: True,
                      account_key=lambda _k: pytest.fail("no kid expected"), want="jwk")


def _binding(alg: str, mac_key: bytes, account_jwk: dict[str, str]) -> dict[str, str]:
    p64 = b64(json.dumps({"alg": alg, "kid": "kid1", "url": URL}).encode())
    body = b64(json.dumps(account_jwk).encode())
    digest = algorithms.HMAC_HASH.get(alg, "sha256")
    mac = hmac.new(mac_key, f"{p64}.{body}".encode(), digest).digest()
    return {"protected": p64, "payload": body, "signature": b64(mac)}


def _csr(key: Any, algo: hashes.HashAlgorithm | None = None) -> x509.CertificateSigningRequest:
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")]))
            .sign(key, algo))


def _rsa_public(bits: int, e: int = 65537) -> rsa.RSAPublicKey:
    """An RSA public key of exactly ``bits`` bits (not a real key: only its size is read)."""
    return rsa.RSAPublicNumbers(e, (1 << (bits - 1)) | 1).public_key()


def _ceremony(tmp_path: Path, key_type: str, signature_hash: str = "sha384") -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(f"""version: 1
name: narrowed
operators: [op]
steps:
  - id: root-key
    type: key
    label: root-2026
    key_type: {key_type}
  - id: root
    type: root
    key: root-key
    authority: root
    subject: {{CN: Root}}
    validity: {{days: 3650}}
    signature_hash: {signature_hash}
""")
    return path


def _without(items: tuple[str, ...], *drop: str) -> tuple[Any, ...]:
    return tuple(i for i in items if i not in drop)


# -- (1) what the table approves today ---------------------------------------------------

def test_the_default_table_approves_what_the_appliance_always_did() -> None:
    assert algorithms.current() is DEFAULT
    t = DEFAULT
    assert t.ca_key_types == ("rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384",
                              "ec-p521")
    assert t.ca_hashes == ("sha256", "sha384", "sha512") == t.csr_hashes
    assert t.mechanisms == algorithms.ALL_MECHANISMS
    assert algorithms.jws_algs("ott") == ("ES256",)
    assert set(algorithms.jws_algs("x5c")) == set(algorithms.jws_algs("acme")) == {
        "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
    assert algorithms.jws_algs("eab") == ("HS256", "HS384", "HS512")
    assert not algorithms.jws_alg_allowed("none", "acme")
    assert not algorithms.jws_alg_allowed(["ES256"], "acme")  # an unhashable JSON value
    assert not algorithms.jws_alg_allowed("HS256", "x5c")


def test_ca_keys_and_signature_hashes() -> None:
    for name in algorithms.ALL_KEY_TYPES:
        assert algorithms.check_ca_key_type(name).name == name
    with pytest.raises(KeyPolicyError, match="unknown key type 'rsa-1024'"):
        algorithms.check_ca_key_type("rsa-1024")
    with pytest.raises(AlgorithmRefused, match="hash sha1 is not allowed for CA signatures; "
                       "use SHA-256, SHA-384 or SHA-512"):
        algorithms.signature_hash("sha1")
    p256, p384 = (ec.generate_private_key(c()).public_key() for c in (ec.SECP256R1,
                                                                       ec.SECP384R1))
    p521 = ec.generate_private_key(ec.SECP521R1()).public_key()
    assert [algorithms.default_hash(k) for k in (p256, p384, p521)] == [
        "sha256", "sha384", "sha512"]
    assert algorithms.default_hash(_rsa_public(2048)) == "sha256"
    assert algorithms.default_hash(_rsa_public(4096)) == "sha384"
    assert isinstance(algorithms.ca_signature_hash(p384), hashes.SHA384)
    assert isinstance(algorithms.ca_signature_hash(p384, "sha512"), hashes.SHA512)
    # RSA OCSP responses are PKCS#1 v1.5 with SHA-256 whatever the key's size.
    assert isinstance(algorithms.ocsp_signature_hash(_rsa_public(4096)), hashes.SHA256)
    assert isinstance(algorithms.ocsp_signature_hash(p521), hashes.SHA512)
    assert algorithms.check_ca_key(p521).name == "ec-p521"


@pytest.mark.parametrize("bits,ok", [(2048, True), (2056, True), (8192, True), (1024, False),
                                     (2047, False), (2049, False), (8200, False)])
def test_csr_rsa_sizes(bits: int, ok: bool) -> None:
    if ok:
        pipeline.check_subject_key(_rsa_public(bits))
    else:
        with pytest.raises(pipeline.IssuanceError, match=_exactly(f"RSA key of {bits} bits is not "
                           "allowed")):
            pipeline.check_subject_key(_rsa_public(bits))


def test_csr_keys_and_hashes() -> None:
    with pytest.raises(pipeline.IssuanceError, match=_exactly("RSA public exponent must be 65537")):
        pipeline.check_subject_key(_rsa_public(2048, e=3))
    with pytest.raises(pipeline.IssuanceError, match=_exactly("curve secp256k1 is not allowed")):
        pipeline.check_subject_key(ec.generate_private_key(ec.SECP256K1()).public_key())
    # Issue 14 widened the default mode: Ed25519 subject keys (RFC 8410), nothing else.
    pipeline.check_csr(_csr(ed25519.Ed25519PrivateKey.generate()))
    with pytest.raises(pipeline.IssuanceError,
                       match=_exactly("only RSA, ECDSA and Ed25519 keys are accepted")):
        pipeline.check_csr(_csr(ed448.Ed448PrivateKey.generate()))
    for curve, algo in ((ec.SECP256R1(), hashes.SHA256()), (ec.SECP384R1(), hashes.SHA384()),
                        (ec.SECP521R1(), hashes.SHA512())):
        pipeline.check_csr(_csr(ec.generate_private_key(curve), algo))
    with pytest.raises(pipeline.IssuanceError, match=_exactly("the CSR must be signed with "
                       "SHA-256, SHA-384 or SHA-512")):
        pipeline.check_csr(_csr(ec.generate_private_key(ec.SECP256R1()), hashes.SHA224()))
    # cryptography no longer signs a SHA-1 CSR; the rule still names it.
    for weak in (hashes.SHA1(), None):
        with pytest.raises(AlgorithmRefused, match="SHA-256, SHA-384 or SHA-512"):
            algorithms.check_csr_hash(weak)


def test_acme_account_keys_and_algorithms() -> None:
    for curve in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()):
        key = ec.generate_private_key(curve)
        _acme_verify(_es_jws(key, algorithms.JWS_ALG_OF_CURVE[curve.name]))
    n = _rsa_public(1024).public_numbers().n
    with pytest.raises(AcmeProblem, match="RSA key of 1024 bits not accepted") as e:
        jws.load_jwk({"kty": "RSA", "n": b64(n.to_bytes(128, "big")), "e": "AQAB"})
    assert e.value.kind == "badPublicKey"
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(AcmeProblem, match="ES512 does not fit the key") as e:
        _acme_verify(_es_jws(p384, "ES512"))
    with pytest.raises(AcmeProblem, match="algorithm 'HS256' is not accepted; use one of RS256, "
                       "RS384, RS512, PS256, PS384, PS512, ES256, ES384, ES512") as e:
        _acme_verify(_es_jws(p384, "HS256"))
    assert e.value.kind == "badSignatureAlgorithm"


def test_eab_macs() -> None:
    account = _ec_jwk(ec.generate_private_key(ec.SECP256R1()))
    for alg in ("HS256", "HS384", "HS512"):
        eab.check_binding(_binding(alg, b"m" * 32, account), account_jwk=account, url=URL,
                          hmac_key=b"m" * 32)
    with pytest.raises(AcmeProblem,
                       match=_exactly("externalAccountBinding must use HS256, HS384 or HS512")):
        eab.check_binding(_binding("HS1", b"m" * 32, account), account_jwk=account, url=URL,
                          hmac_key=b"m" * 32)


def test_a_table_can_only_be_narrowed() -> None:
    with pytest.raises(ValueError, match="csr_hashes"):
        DEFAULT.narrowed(csr_hashes=("sha1", "sha256"))
    with pytest.raises(ValueError, match=r"jws\.acme"):
        DEFAULT.narrowed(jws=replace(DEFAULT.jws, acme=("HS256",)))
    with pytest.raises(ValueError, match="csr_keys"):
        DEFAULT.narrowed(csr_keys=replace(DEFAULT.csr_keys, rsa_bits=(1024, 8192)))
    with pytest.raises(ValueError, match="account_keys"):
        DEFAULT.narrowed(account_keys=replace(DEFAULT.account_keys, curves=("secp256k1",)))
    wider = replace(DEFAULT, ca_key_types=(*DEFAULT.ca_key_types, "rsa-1024"))
    with pytest.raises(ValueError, match="ca_key_types"):
        algorithms.install(wider)  # type: ignore[arg-type]
    assert algorithms.current() is DEFAULT
    no_rsa = DEFAULT.narrowed(csr_keys=replace(DEFAULT.csr_keys, rsa_bits=None))
    assert no_rsa.csr_keys.rsa_bits is None


# -- (2) narrowing the table is all it takes ---------------------------------------------

def test_a_narrowed_table_refuses_a_p521_csr() -> None:
    csr = _csr(ec.generate_private_key(ec.SECP521R1()), hashes.SHA512())
    pipeline.check_csr(csr)
    narrow = DEFAULT.narrowed(csr_keys=replace(
        DEFAULT.csr_keys, curves=_without(DEFAULT.csr_keys.curves, "secp521r1")))
    with algorithms.using(narrow), pytest.raises(
            pipeline.IssuanceError, match=_exactly("curve secp521r1 is not allowed")):
        pipeline.check_csr(csr)
    pipeline.check_csr(csr)  # the default again after the block


def test_a_narrowed_table_refuses_sha512_csrs_and_small_rsa() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    narrow = DEFAULT.narrowed(csr_hashes=("sha256", "sha384"), csr_keys=replace(
        DEFAULT.csr_keys, rsa_bits=(3072, 8192)))
    with algorithms.using(narrow):
        with pytest.raises(pipeline.IssuanceError, match=_exactly("the CSR must be signed with "
                           "SHA-256 or SHA-384")):
            pipeline.check_csr(_csr(p256, hashes.SHA512()))
        with pytest.raises(pipeline.IssuanceError, match="RSA key of 2048 bits"):
            pipeline.check_subject_key(_rsa_public(2048))
        pipeline.check_subject_key(_rsa_public(3072))


def test_a_narrowed_table_refuses_an_es512_acme_jws() -> None:
    body = _es_jws(ec.generate_private_key(ec.SECP521R1()), "ES512")
    _acme_verify(body)
    narrow = DEFAULT.narrowed(jws=replace(DEFAULT.jws, acme=_without(DEFAULT.jws.acme,
                                                                     "ES512")))
    with algorithms.using(narrow), pytest.raises(AcmeProblem) as e:
        _acme_verify(body)
    assert e.value.kind == "badSignatureAlgorithm"
    assert "ES512" not in str(e.value).split("use one of ")[1]


def test_a_narrowed_table_refuses_a_p521_account_key() -> None:
    jwk = _ec_jwk(ec.generate_private_key(ec.SECP521R1()))
    jws.load_jwk(jwk)
    narrow = DEFAULT.narrowed(account_keys=replace(
        DEFAULT.account_keys, curves=_without(DEFAULT.account_keys.curves, "secp521r1")))
    with algorithms.using(narrow), pytest.raises(AcmeProblem, match="curve secp521r1 not "
                                                 "accepted") as e:
        jws.load_jwk(jwk)
    assert e.value.kind == "badPublicKey"


def test_a_narrowed_table_refuses_an_hs512_eab_binding() -> None:
    account = _ec_jwk(ec.generate_private_key(ec.SECP256R1()))
    binding = _binding("HS512", b"m" * 32, account)
    eab.check_binding(binding, account_jwk=account, url=URL, hmac_key=b"m" * 32)
    narrow = DEFAULT.narrowed(jws=replace(DEFAULT.jws, eab=("HS256", "HS384")))
    with algorithms.using(narrow), pytest.raises(
            AcmeProblem, match=_exactly("externalAccountBinding must use HS256 or HS384")):
        eab.check_binding(binding, account_jwk=account, url=URL, hmac_key=b"m" * 32)


def test_a_narrowed_table_refuses_an_rsa_2048_ceremony_key(tmp_path: Path) -> None:
    path = _ceremony(tmp_path, "rsa-2048")
    assert script.load(path).ceremony.steps[0].key_type == "rsa-2048"  # type: ignore[union-attr]
    narrow = DEFAULT.narrowed(ca_key_types=_without(DEFAULT.ca_key_types, "rsa-2048"))
    with algorithms.using(narrow), pytest.raises(
            ConfigError, match="key type rsa-2048 is not approved for CA keys"):
        script.load(path)


def test_a_narrowed_table_refuses_a_ceremony_signature_hash(tmp_path: Path) -> None:
    path = _ceremony(tmp_path, "ec-p384", signature_hash="sha256")
    script.load(path)
    narrow = DEFAULT.narrowed(ca_hashes=("sha384", "sha512"))
    with algorithms.using(narrow):
        with pytest.raises(ConfigError, match="hash sha256 is not allowed for CA signatures; "
                           "use SHA-384 or SHA-512"):
            script.load(path)
        # ...and so is every CA signature that would default to it (the OCSP signer's).
        with pytest.raises(AlgorithmRefused, match="hash sha256"):
            algorithms.ocsp_signature_hash(_rsa_public(2048))


def test_a_narrowed_table_refuses_one_time_and_renewal_tokens() -> None:
    key = tokens.new_key()
    jwk = tokens.public_jwk(key.public_key())
    token = tokens.mint(key, provisioner="p", audience="aud", sans=["a.test"])
    tokens.verify(token, jwk, provisioner="p", audience="aud")
    with algorithms.using(DEFAULT.narrowed(jws=replace(DEFAULT.jws, ott=()))), \
            pytest.raises(tokens.TokenError, match="invalid token"):
        tokens.verify(token, jwk, provisioner="p", audience="aud")

    now = datetime.now(UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a.test")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1).not_valid_before(now)
            .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    x5c = [base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()]
    t = int(now.timestamp())
    renew = jwt.encode({"aud": "aud", "iat": t, "nbf": t, "exp": t + 300,
                        "jti": hashlib.sha256(b"j").hexdigest()}, key, algorithm="ES256",
                       headers={"x5c": x5c})
    assert renewal.certificate_from_token(renew, "aud")[0] == cert
    narrow = DEFAULT.narrowed(jws=replace(DEFAULT.jws, x5c=_without(DEFAULT.jws.x5c, "ES256")))
    with algorithms.using(narrow), pytest.raises(tokens.TokenError, match="invalid renewal"):
        renewal.certificate_from_token(renew, "aud")


def test_using_restores_the_table_after_an_error() -> None:
    narrow = DEFAULT.narrowed(mechanisms=("ECDSA",))
    with pytest.raises(RuntimeError), algorithms.using(narrow):
        assert algorithms.current() is narrow
        with pytest.raises(AlgorithmRefused, match="mechanism SHA256_RSA_PKCS is not approved"):
            algorithms.check_mechanism("SHA256_RSA_PKCS")
        raise RuntimeError
    assert algorithms.current() is DEFAULT
    algorithms.check_mechanism("SHA256_RSA_PKCS")


# -- (3) the FIPS table (issue 14) --------------------------------------------------------

FIPS = algorithms.FIPS


def test_the_fips_table_is_narrowed_from_the_default_and_says_its_mode() -> None:
    assert FIPS.mode == "FIPS" and DEFAULT.mode is None
    assert not FIPS.csr_keys.ed25519 and DEFAULT.csr_keys.ed25519
    assert FIPS.csr_keys.rsa_bits == (2048, 8192) and FIPS.csr_keys.curves == (
        "secp256r1", "secp384r1", "secp521r1")
    assert FIPS.ca_hashes == FIPS.csr_hashes == ("sha256", "sha384", "sha512")
    assert FIPS.jws.eab == ("HS256", "HS384", "HS512")
    assert "CHACHA20" not in " ".join((*(FIPS.tls.ciphers12 or ()), *(FIPS.tls.suites13 or ())))
    assert FIPS.tls.groups == ("P-256", "P-384", "P-521")
    assert FIPS.strength_112_until == datetime(2030, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert DEFAULT.strength_112_until is None and DEFAULT.tls.ciphers12 is None
    # Nothing can put Ed25519 back or lift the 2030 limit by narrowing.
    with pytest.raises(ValueError, match="csr_keys"):
        FIPS.narrowed(csr_keys=replace(FIPS.csr_keys, ed25519=True))
    with pytest.raises(ValueError, match="strength_112_until"):
        FIPS.narrowed(strength_112_until=None)
    with pytest.raises(ValueError, match="tls"):
        FIPS.narrowed(tls=DEFAULT.tls)
    # ...except the HSM profile's flag, whose table is still within the default.
    assert algorithms.fips_table(eddsa_validated=True).csr_keys.ed25519
    assert algorithms.fips_table() is FIPS


@pytest.mark.parametrize("make,named", [
    (lambda: _csr(rsa.generate_private_key(65537, 1024), hashes.SHA256()), "RSA-1024"),
    (lambda: _csr(ed25519.Ed25519PrivateKey.generate()), "Ed25519"),
    (lambda: _csr(ec.generate_private_key(ec.SECP256K1()), hashes.SHA256()), "secp256k1"),
    (lambda: _csr(ec.generate_private_key(ec.SECP256R1()), hashes.SHA224()), "SHA-224"),
])
def test_fips_refuses_csrs_as_not_approved_naming_fips(make: Any, named: str) -> None:
    csr = make()
    with algorithms.using(FIPS), pytest.raises(pipeline.NotApprovedError) as e:
        pipeline.check_csr(csr)
    assert str(e.value).startswith("not approved in FIPS mode: ") and named in str(e.value)
    assert (e.value.code, e.value.status, e.value.server_fault) == ("not_approved", 400, False)


def test_fips_accepts_approved_csrs() -> None:
    with algorithms.using(FIPS):
        pipeline.check_csr(_csr(rsa.generate_private_key(65537, 2048), hashes.SHA256()))
        pipeline.check_csr(_csr(ec.generate_private_key(ec.SECP384R1()), hashes.SHA384()))


def test_default_refusals_keep_todays_words_and_code() -> None:
    with pytest.raises(pipeline.IssuanceError) as e:
        pipeline.check_subject_key(_rsa_public(1024))
    assert str(e.value) == "RSA key of 1024 bits is not allowed" and e.value.code == "bad_request"
    assert not isinstance(e.value, pipeline.NotApprovedError)


def test_security_strength_over_the_lifetime() -> None:
    rsa2048, rsa3072 = _rsa_public(2048), _rsa_public(3072)
    p256 = ec.generate_private_key(ec.SECP256R1()).public_key()
    late = datetime(2031, 1, 1, tzinfo=UTC)
    early = datetime(2030, 12, 31, tzinfo=UTC)
    algorithms.check_strength(rsa2048, late, "the certificate")  # default: no limit
    with algorithms.using(FIPS):
        with pytest.raises(algorithms.NotApproved) as e:
            algorithms.check_strength(rsa2048, late, "the requested certificate")
        assert "not approved in FIPS mode: RSA-2048 (112-bit security strength) for the " \
               "requested certificate valid until 2031-01-01" in str(e.value)
        algorithms.check_strength(rsa2048, early, "the certificate")
        algorithms.check_strength(rsa3072, late, "the certificate")
        algorithms.check_strength(p256, late, "the certificate")
        with pytest.raises(algorithms.NotApproved, match="RSA-2048"):
            algorithms.check_strength(algorithms.KeySpec.parse("rsa-2048"), late, "a root")


def _root_until(tmp_path: Path, key_type: str, not_after: str) -> Path:
    path = _ceremony(tmp_path, key_type)
    path.write_text(path.read_text().replace("validity: {days: 3650}",
                                             f"validity: {{not_after: '{not_after}'}}"))
    return path


def test_fips_ceremony_refuses_an_rsa_2048_root_valid_to_2045(tmp_path: Path) -> None:
    path = _root_until(tmp_path, "rsa-2048", "2045-01-01T00:00:00Z")
    script.load(path)  # the default mode accepts it
    with algorithms.using(FIPS), pytest.raises(
            ConfigError, match=r"not approved in FIPS mode: RSA-2048 .*root certificate of "
                               "step root valid until 2045-01-01"):
        script.load(path)
    with algorithms.using(FIPS):
        script.load(_root_until(tmp_path, "rsa-3072", "2045-01-01T00:00:00Z"))
        script.load(_root_until(tmp_path, "rsa-2048", "2030-06-01T00:00:00Z"))
        # days counted from now: 25 years is past 2030 too
        path = _ceremony(tmp_path, "rsa-2048")
        path.write_text(path.read_text().replace("days: 3650", "days: 9000"))
        with pytest.raises(ConfigError, match="FIPS mode: RSA-2048"):
            script.load(path)


def test_fips_ceremony_refuses_p192_and_sha1_by_schema(tmp_path: Path) -> None:
    with algorithms.using(FIPS):
        for key_type, sig in (("ec-p192", "sha384"), ("rsa-1024", "sha384"),
                              ("ec-p256", "sha1")):
            with pytest.raises(ConfigError):
                script.load(_ceremony(tmp_path, key_type, signature_hash=sig))


def _rsa_jwk(bits: int) -> dict[str, str]:
    n = rsa.generate_private_key(65537, bits).public_key().public_numbers()
    return {"kty": "RSA", "n": b64(n.n.to_bytes((n.n.bit_length() + 7) // 8, "big")),
            "e": b64(n.e.to_bytes(3, "big"))}


def test_fips_acme_rsa_1024_account_key_is_bad_public_key() -> None:
    jwk = _rsa_jwk(1024)
    with pytest.raises(AcmeProblem, match=_exactly("RSA key of 1024 bits not accepted")):
        jws.load_jwk(jwk)
    with algorithms.using(FIPS), pytest.raises(AcmeProblem) as e:
        jws.load_jwk(jwk)
    assert e.value.kind == "badPublicKey"
    assert str(e.value).startswith("not approved in FIPS mode: RSA-1024 account key")
    with algorithms.using(FIPS):
        jws.load_jwk(_rsa_jwk(2048))
        okp = {"kty": "OKP", "crv": "Ed25519", "x": b64(b"x" * 32)}
        with pytest.raises(AcmeProblem, match="not approved in FIPS mode: account key type "
                                              "'OKP'") as e:
            jws.load_jwk(okp)
        assert e.value.kind == "badPublicKey"


def test_fips_acme_jws_algorithm_names_fips() -> None:
    body = _es_jws(ec.generate_private_key(ec.SECP256R1()), "ES256")
    narrow = replace(FIPS, jws=replace(FIPS.jws, acme=_without(FIPS.jws.acme, "ES256")))
    with algorithms.using(narrow), pytest.raises(AcmeProblem) as e:
        _acme_verify(body)
    assert e.value.kind == "badSignatureAlgorithm"
    assert "not approved in FIPS mode: JWS algorithm 'ES256'" in str(e.value)


def test_fips_eab_and_tokens_name_fips() -> None:
    account = _ec_jwk(ec.generate_private_key(ec.SECP256R1()))
    binding = _binding("HS512", b"m" * 32, account)
    with algorithms.using(replace(FIPS, jws=replace(FIPS.jws, eab=("HS256",)))), \
            pytest.raises(AcmeProblem, match="not approved in FIPS mode: "
                                             "externalAccountBinding MAC 'HS512'"):
        eab.check_binding(binding, account_jwk=account, url=URL, hmac_key=b"m" * 32)
    key = tokens.new_key()
    jwk = tokens.public_jwk(key.public_key())
    hs = jwt.encode({"iss": "p", "aud": "aud"}, "s" * 32, algorithm="HS256")
    with pytest.raises(tokens.TokenError, match=r"^invalid token: "):
        tokens.verify(hs, jwk, provisioner="p", audience="aud")
    with algorithms.using(FIPS), pytest.raises(
            tokens.TokenError, match=_exactly("not approved in FIPS mode: token algorithm "
                                              "'HS256'; use ES256")):
        tokens.verify(hs, jwk, provisioner="p", audience="aud")


def test_fips_tls_context_offers_only_aes_gcm() -> None:
    import ssl

    from appliance.web import tls_policy

    text = tls_policy.openssl_conf_text(FIPS.tls)
    assert text is not None and "Ciphersuites = TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256" \
        in text and "Groups = P-256:P-384:P-521" in text
    assert tls_policy.openssl_conf_text(DEFAULT.tls) is None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_policy.apply(ctx, DEFAULT.tls)
    assert "TLS_CHACHA20_POLY1305_SHA256" in tls_policy.offered_suites(ctx)
    assert "ECDHE-ECDSA-CHACHA20-POLY1305" in tls_policy.offered_suites(ctx)
    # Without the OpenSSL configuration at start, TLS 1.3 would still offer ChaCha20: the
    # context is refused rather than served (fail closed).
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with algorithms.using(FIPS), pytest.raises(ConfigError,
                                               match="TLS_CHACHA20_POLY1305_SHA256"):
        tls_policy.apply(ctx, FIPS.tls)
    assert set(tls_policy.offered_suites(ctx)) - {"TLS_CHACHA20_POLY1305_SHA256"} <= set(
        FIPS.tls.ciphers12 or ()) | set(FIPS.tls.suites13 or ())


def test_fips_ceremony_refuses_an_rsa_2048_issuer_signing_past_2030(tmp_path: Path) -> None:
    path = _root_until(tmp_path, "rsa-2048", "2030-06-01T00:00:00Z")
    path.write_text(path.read_text() + """  - id: sub-key
    type: key
    label: sub-2026
    key_type: ec-p384
  - id: sub
    type: intermediate
    key: sub-key
    issuer: root
    authority: sub
    subject: {CN: Sub}
    validity: {not_after: '2035-01-01T00:00:00Z'}
""")
    script.load(path)
    with algorithms.using(FIPS), pytest.raises(
            ConfigError, match=r"not approved in FIPS mode: RSA-2048 .* the issuer's signature "
                               "on the intermediate certificate of step sub"):
        script.load(path)


@pytest.mark.parametrize("template", ["tls-server", "tls-client", "iot-device", "smime-email"])
def test_shipped_templates_build_a_lint_clean_ed25519_leaf(template: str) -> None:
    """The default mode's Ed25519 subject keys (RFC 8410): key usages that only sign, an SKI,
    and nothing pkilint objects to."""
    from tests.unit.test_templates import CA, assert_lints_clean, shipped, template_input

    ca = CA()
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev1.example.com")])
    request = (x509.CertificateSigningRequestBuilder().subject_name(name).add_extension(
        x509.SubjectAlternativeName([x509.DNSName("dev1.example.com"),
                                     x509.RFC822Name("a@example.com")]), critical=False)
        .sign(key, None))
    pipeline.check_csr(request)
    cert = ca.issue(shipped(template, template_input(ca, request)), key.public_key())
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_encipherment and not ku.key_agreement
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    assert_lints_clean(cert)
