"""Sealed provisioner keys (JWE, PBES2-HS256+A128KW + A256GCM): format, bounds, and
decrypts outside jwcrypto (one written here from RFC 7516/7518 on ``cryptography`` alone,
and joserfc's), so a file jwcrypto writes is known to open elsewhere."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.keywrap import aes_key_unwrap
from joserfc import jwe as rfc_jwe
from joserfc.jwk import OctKey
from jwcrypto import jwe as jc_jwe
from jwcrypto import jwk as jc_jwk

from appliance.provisioners import sealed, tokens

PASSWORD = "correct horse battery"


def _b64d(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def independent_decrypt(compact: str, password: str) -> dict[str, object]:
    """RFC 7518 §4.8 and §5.3 by hand: PBKDF2 over (alg || 0x00 || p2s), AES key unwrap
    of the CEK, AES-256-GCM with the encoded protected header as AAD."""
    prot_b64, ek_b64, iv_b64, ct_b64, tag_b64 = compact.split(".")
    head = json.loads(_b64d(prot_b64))
    salt = head["alg"].encode() + b"\x00" + _b64d(head["p2s"])
    kek = PBKDF2HMAC(hashes.SHA256(), 16, salt, head["p2c"]).derive(password.encode())
    cek = aes_key_unwrap(kek, _b64d(ek_b64))
    plain = AESGCM(cek).decrypt(_b64d(iv_b64), _b64d(ct_b64) + _b64d(tag_b64),
                                prot_b64.encode())
    out: dict[str, object] = json.loads(plain)
    return out


@pytest.fixture(scope="module")
def key_and_jwe() -> tuple[ec.EllipticCurvePrivateKey, str]:
    key = tokens.new_key()
    return key, sealed.seal(key, PASSWORD)


def test_header_is_step_ca_shaped(key_and_jwe: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    _, text = key_and_jwe
    parts = text.split(".")
    assert len(parts) == 5
    head = json.loads(_b64d(parts[0]))
    assert head["alg"] == "PBES2-HS256+A128KW" and head["enc"] == "A256GCM"
    assert head["cty"] == "jwk+json" and head["p2c"] == 600_000
    assert len(_b64d(head["p2s"])) >= 16
    assert len(_b64d(parts[1])) == 40  # a wrapped 256-bit CEK
    assert b"PRIVATE" not in text.encode() and '"d"' not in text


def test_second_implementation_decrypts(
        key_and_jwe: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    key, text = key_and_jwe
    jwk = independent_decrypt(text, PASSWORD)
    public = tokens.public_jwk(key.public_key())
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256"
    assert jwk["kid"] == public["kid"]  # the kid the appliance stores
    d = int.from_bytes(_b64d(str(jwk["d"])), "big")
    assert d == key.private_numbers().private_value
    # ...and jwcrypto's strict parse, restricted to these algorithms, agrees.
    strict = jc_jwe.JWE()
    strict.allowed_algs = ["PBES2-HS256+A128KW", "A256GCM"]
    strict.deserialize(text, key=jc_jwk.JWK.from_password(PASSWORD))
    assert json.loads(strict.payload)["d"] == jwk["d"]


def test_joserfc_interoperates() -> None:
    """joserfc (a second library) opens what is sealed here, and a key joserfc sealed opens
    here. joserfc caps p2c at 300,000, below the 600,000 used by default: the format is
    the same, so the check runs at its cap."""
    key = tokens.new_key()
    password = OctKey.import_key(PASSWORD)
    opened = rfc_jwe.decrypt_compact(sealed.seal(key, PASSWORD, p2c=300_000), password,
                                     algorithms=["PBES2-HS256+A128KW", "A256GCM"])
    assert opened.protected["cty"] == "jwk+json"
    assert opened.plaintext is not None
    d = int.from_bytes(_b64d(json.loads(opened.plaintext)["d"]), "big")
    assert d == key.private_numbers().private_value
    theirs = rfc_jwe.encrypt_compact(
        {"alg": "PBES2-HS256+A128KW", "enc": "A256GCM", "cty": "jwk+json", "p2c": 300_000},
        sealed.private_jwk(key).export_private(), password,
        algorithms=["PBES2-HS256+A128KW", "A256GCM"])
    assert sealed.unseal(theirs, PASSWORD).private_numbers() == key.private_numbers()


def test_unseal_roundtrip_and_wrong_password(
        key_and_jwe: tuple[ec.EllipticCurvePrivateKey, str]) -> None:
    key, text = key_and_jwe
    assert sealed.unseal(text, PASSWORD).private_numbers() == key.private_numbers()
    with pytest.raises(sealed.SealError, match="wrong password"):
        sealed.unseal(text, PASSWORD + "x")
    tampered = text[:-3] + ("AAA" if not text.endswith("AAA") else "BBB")
    with pytest.raises(sealed.SealError, match="wrong password, or the file is damaged"):
        sealed.unseal(tampered, PASSWORD)


def _reheadered(text: str, **changes: object) -> str:
    parts = text.split(".")
    head = json.loads(_b64d(parts[0]))
    head.update(changes)
    return ".".join([_b64e(json.dumps(head).encode()), *parts[1:]])


@pytest.mark.parametrize(("changes", "message"), [
    ({"p2c": 10**9}, "p2c must be an integer"),
    ({"p2c": "600000"}, "p2c must be an integer"),
    ({"p2c": 10}, "p2c must be an integer"),
    ({"alg": "dir"}, "must use alg"),
    ({"enc": "A128CBC-HS256"}, "must use alg"),
    ({"zip": "DEF"}, "compressed"),
])
def test_hostile_headers_refused_before_any_work(
        key_and_jwe: tuple[ec.EllipticCurvePrivateKey, str], changes: dict[str, object],
        message: str) -> None:
    _, text = key_and_jwe
    started = time.monotonic()
    with pytest.raises(sealed.SealError, match=message):
        sealed.unseal(_reheadered(text, **changes), PASSWORD)
    assert time.monotonic() - started < 5  # a billion PBKDF2 rounds were not run


def test_garbage_is_a_clear_error() -> None:
    for text in ("", "a.b.c.d.e", "eyJ.x.y.z.w", "{}", '{"ciphertext": 1}'):
        with pytest.raises(sealed.SealError):
            sealed.unseal(text, PASSWORD)


def test_new_password_bounds() -> None:
    with pytest.raises(sealed.SealError, match="at least 8"):
        sealed.seal(tokens.new_key(), "short")
    with pytest.raises(sealed.SealError, match="longer than"):
        sealed.check_new_password("x" * 1025)


def test_password_file(tmp_path: Path) -> None:
    f = tmp_path / "pw"
    f.write_text(PASSWORD + "\n")
    assert sealed.read_password_file(f) == PASSWORD
    f.write_text("one\ntwo\n")
    with pytest.raises(sealed.SealError, match="one line"):
        sealed.read_password_file(f)
    f.write_bytes(b"\xff\xfe")
    with pytest.raises(sealed.SealError, match="UTF-8"):
        sealed.read_password_file(f)
    f.write_text("")
    with pytest.raises(sealed.SealError, match="empty"):
        sealed.read_password_file(f)


def test_owner_key_formats(tmp_path: Path) -> None:
    key = tokens.new_key()
    pw_calls: list[int] = []

    def password() -> str:
        pw_calls.append(1)
        return PASSWORD

    plain = tmp_path / "k.pem"
    plain.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption()))
    enc = tmp_path / "k-enc.pem"
    enc.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.BestAvailableEncryption(PASSWORD.encode())))
    as_jwk = tmp_path / "k.jwk"
    as_jwk.write_text(sealed.private_jwk(key).export_private())
    as_jwe = tmp_path / "k.jwe"
    as_jwe.write_text(sealed.seal(key, PASSWORD) + "\n")
    for path, asks in ((plain, 0), (as_jwk, 0), (enc, 1), (as_jwe, 1)):
        pw_calls.clear()
        got = sealed.load_private_key(path, password)
        assert got.private_numbers() == key.private_numbers(), path
        assert len(pw_calls) == asks, path  # a password only for what is encrypted
    with pytest.raises(sealed.SealError, match="wrong password"):
        sealed.load_private_key(enc, lambda: "not the password")
    other = tmp_path / "rsa.pem"
    other.write_text("not a key at all")
    with pytest.raises(sealed.SealError, match="neither"):
        sealed.load_private_key(other, password)
    p384 = tmp_path / "p384.pem"
    p384.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(sealed.SealError, match="P-256"):
        sealed.load_private_key(p384, password)


def test_public_key_refuses_private_parts() -> None:
    key = tokens.new_key()
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    public_jwk = json.dumps(tokens.public_jwk(key.public_key())).encode()
    for data in (pem, public_jwk):
        got = sealed.load_public_key(data, "k")
        assert got.public_numbers() == key.public_key().public_numbers()
    private_pem = key.private_bytes(serialization.Encoding.PEM,
                                    serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
    private_jwk = sealed.private_jwk(key).export_private().encode()
    for data in (private_pem, private_jwk, sealed.seal(key, PASSWORD).encode()):
        with pytest.raises(sealed.SealError, match="private"):
            sealed.load_public_key(data, "k")
    with pytest.raises(sealed.SealError, match="not a public key"):
        sealed.load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                               "k")


def test_shred_overwrites_then_removes(tmp_path: Path) -> None:
    f = tmp_path / "secret.pem"
    original = b"-----BEGIN PRIVATE KEY-----" * 10
    f.write_bytes(original)
    witness = tmp_path / "same-inode"
    witness.hardlink_to(f)  # sees the blocks the name pointed at
    sealed.shred(f)
    assert not f.exists()
    left = witness.read_bytes()
    assert len(left) == len(original) and b"PRIVATE" not in left
    sealed.shred(f)  # already gone: nothing to do
