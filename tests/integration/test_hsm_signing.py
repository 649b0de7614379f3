"""Token keys sign what ``cryptography`` builds; OpenSSL accepts the results."""

from __future__ import annotations

import dataclasses
import datetime as dt
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import NameOID

from appliance.errors import KeyPolicyError, SignatureCheckError
from appliance.hsm import keys, rng
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import TokenECPrivateKey, TokenPrivateKey, token_private_key
from tests.conftest import unique_label

KEY_TYPES = ["ec-p256", "ec-p384", "ec-p521", "rsa-2048", "rsa-3072", "rsa-4096"]
HASH_FOR = {"ec-p256": hashes.SHA256(), "ec-p384": hashes.SHA384(), "ec-p521": hashes.SHA512(),
            "rsa-2048": hashes.SHA256(), "rsa-3072": hashes.SHA384(),
            "rsa-4096": hashes.SHA512()}


@pytest.fixture(scope="module")
def token_keys(pool: SessionPool) -> dict[str, TokenPrivateKey]:
    return {kt: token_private_key(pool, keys.generate_keypair(pool, unique_label(kt), kt))
            for kt in KEY_TYPES}


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Appliance Tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _root(key: TokenPrivateKey, pool: SessionPool, cn: str, algo: hashes.HashAlgorithm,
          pss: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn)).issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(rng.random_serial(pool))
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(ski, critical=False)
    )
    if pss:
        return builder.sign(key, algo, rsa_padding=padding.PSS(padding.MGF1(algo),
                                                               padding.PSS.DIGEST_LENGTH))
    return builder.sign(key, algo)


def _leaf(issuer: x509.Certificate, key: TokenPrivateKey, pool: SessionPool,
          algo: hashes.HashAlgorithm, pss: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject_key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name("leaf.example.test")).issuer_name(issuer.subject)
        .public_key(subject_key.public_key())
        .serial_number(rng.random_serial(pool))
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("leaf.example.test")]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()),
                       False)
    )
    if pss:
        return builder.sign(key, algo, rsa_padding=padding.PSS(padding.MGF1(algo),
                                                               padding.PSS.DIGEST_LENGTH))
    return builder.sign(key, algo)


def _openssl_verify(tmp_path: Path, root: x509.Certificate, leaf: x509.Certificate) -> str:
    root_pem, leaf_pem = tmp_path / "root.pem", tmp_path / "leaf.pem"
    root_pem.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    proc = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(root_pem),
                           str(leaf_pem)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("key_type", KEY_TYPES)
def test_every_key_type_signs_certificates_openssl_accepts(
    tmp_path: Path, pool: SessionPool, token_keys: dict[str, TokenPrivateKey], key_type: str
) -> None:
    key, algo = token_keys[key_type], HASH_FOR[key_type]
    root = _root(key, pool, f"Root {key_type}", algo)
    leaf = _leaf(root, key, pool, algo)
    assert _openssl_verify(tmp_path, root, leaf).strip().endswith("OK")
    leaf.verify_directly_issued_by(root)


@pytest.mark.parametrize("key_type", ["rsa-2048", "rsa-3072"])
def test_rsa_pss_signatures_verify_in_openssl(
    tmp_path: Path, pool: SessionPool, token_keys: dict[str, TokenPrivateKey], key_type: str
) -> None:
    key, algo = token_keys[key_type], HASH_FOR[key_type]
    root = _root(key, pool, f"PSS Root {key_type}", algo, pss=True)
    leaf = _leaf(root, key, pool, algo, pss=True)
    _openssl_verify(tmp_path, root, leaf)
    text = subprocess.run(["openssl", "x509", "-noout", "-text"], input=leaf.public_bytes(
        serialization.Encoding.PEM), capture_output=True, check=True).stdout.decode()
    assert "rsassaPss" in text


def test_csr_and_crl_are_signed_by_the_token(
    pool: SessionPool, token_keys: dict[str, TokenPrivateKey]
) -> None:
    key = token_keys["ec-p384"]
    csr = (x509.CertificateSigningRequestBuilder().subject_name(_name("csr"))
           .sign(key, hashes.SHA384()))
    assert csr.is_signature_valid
    root = _root(key, pool, "CRL issuer", hashes.SHA384())
    now = dt.datetime.now(dt.UTC)
    revoked = [x509.RevokedCertificateBuilder().serial_number(rng.random_serial(pool))
               .revocation_date(now).build() for _ in range(3)]
    crl = x509.CertificateRevocationListBuilder(
        issuer_name=root.subject, last_update=now, next_update=now + dt.timedelta(days=1),
        revoked_certificates=revoked,
    ).sign(key, hashes.SHA384())
    assert crl.is_signature_valid(key.public_key())
    assert len(crl) == 3


def test_signature_that_does_not_verify_is_never_released(
    pool: SessionPool, token_keys: dict[str, TokenPrivateKey]
) -> None:
    """A key object whose public half is wrong (a mis-registered key) signs in the token,
    the check against the expected public key fails, and nothing is returned."""
    real = token_keys["ec-p256"]
    other = keys.generate_keypair(pool, unique_label("other"), "ec-p256")
    wrong = TokenECPrivateKey(pool, dataclasses.replace(real.info, public_key=other.public_key))
    with pytest.raises(SignatureCheckError, match="did not verify"):
        wrong.sign(b"data", ec.ECDSA(hashes.SHA256()))


def test_unsafe_requests_are_refused(token_keys: dict[str, TokenPrivateKey]) -> None:
    ec_key, rsa_key = token_keys["ec-p256"], token_keys["rsa-2048"]
    with pytest.raises(KeyPolicyError, match="deterministic"):
        ec_key.sign(b"x", ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    with pytest.raises(KeyPolicyError, match="sha1"):
        ec_key.sign(b"x", ec.ECDSA(hashes.SHA1()))
    with pytest.raises(KeyPolicyError, match="sha1"):
        rsa_key.sign(b"x", padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(KeyPolicyError, match="cannot be exported"):
        ec_key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    with pytest.raises(KeyPolicyError, match="sign-only"):
        rsa_key.decrypt(b"x", padding.PKCS1v15())


def test_profile_can_forbid_mechanisms(token, token_keys) -> None:  # type: ignore[no-untyped-def]
    restricted = SessionPool(token.profile(allowed_mechanisms=["SHA256_RSA_PKCS"]))
    try:
        key = token_private_key(restricted, token_keys["rsa-2048"].info)
        key.sign(b"ok", padding.PKCS1v15(), hashes.SHA256())
        with pytest.raises(KeyPolicyError, match="not allowed"):
            key.sign(b"no", padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256())
    finally:
        restricted.close()


def test_serials_come_from_the_token_and_are_well_formed(pool: SessionPool) -> None:
    serials = [rng.random_serial(pool) for _ in range(200)]
    assert len(set(serials)) == 200
    for s in serials:
        assert 0 < s < 2**159 and (s.bit_length() + 8) // 8 <= 20
    assert max(s.bit_length() for s in serials) > 120  # 127 random bits, not a counter
    assert len(rng.random_bytes(pool, 32)) == 32
    with pytest.raises(ValueError):
        rng.random_bytes(pool, 0)
