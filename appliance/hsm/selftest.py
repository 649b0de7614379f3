"""Power-on and on-demand self-tests.

Known-answer tests prove the software hash and verify paths compute what the
standards say (a broken build or library must not go on signing), and a
token round trip proves the token signs and its signatures verify. Run at
start of every command that signs, and by ``appliance hsm selftest``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag

from appliance.errors import SelfTestError
from appliance.hsm import kat_vectors as kat
from appliance.hsm.keys import _CURVES
from appliance.hsm.pool import PooledSession, SessionPool


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str = ""


def _sha_kats() -> list[Check]:
    out = []
    for name, expected in kat.SHA_ABC.items():
        got = hashlib.new(name, b"abc").hexdigest()
        ok = got == expected
        out.append(Check(f"kat-{name}", ok, "" if ok else "digest differs"))
    return out


def _verify_kat(name: str, verify: Callable[[bytes], None]) -> list[Check]:
    """A good vector must verify and a one-bit change of the message must not."""
    checks = []
    try:
        verify(kat.MESSAGE)
        checks.append(Check(name, True))
    except InvalidSignature:
        checks.append(Check(name, False, "known-good signature rejected"))
    tampered = bytes([kat.MESSAGE[0] ^ 1]) + kat.MESSAGE[1:]
    try:
        verify(tampered)
        checks.append(Check(f"{name}-negative", False, "tampered message accepted"))
    except InvalidSignature:
        checks.append(Check(f"{name}-negative", True))
    return checks


def software_checks() -> list[Check]:
    checks = _sha_kats()
    ec_pub = serialization.load_der_public_key(kat.EC_P256_SPKI)
    rsa_pub = serialization.load_der_public_key(kat.RSA_2048_SPKI)
    assert isinstance(ec_pub, ec.EllipticCurvePublicKey)
    assert isinstance(rsa_pub, rsa.RSAPublicKey)
    checks += _verify_kat(
        "kat-ecdsa-p256-sha256",
        lambda m: ec_pub.verify(kat.EC_P256_SIG, m, ec.ECDSA(hashes.SHA256())),
    )
    checks += _verify_kat(
        "kat-rsa-pkcs1-sha256",
        lambda m: rsa_pub.verify(kat.RSA_PKCS1_SHA256_SIG, m, padding.PKCS1v15(), hashes.SHA256()),
    )
    checks += _verify_kat(
        "kat-rsa-pss-sha256",
        lambda m: rsa_pub.verify(
            kat.RSA_PSS_SHA256_SIG, m, padding.PSS(padding.MGF1(hashes.SHA256()), 32),
            hashes.SHA256(),
        ),
    )
    return checks


def hmac_kats() -> list[Check]:
    """HMAC-SHA-256/384/512 against RFC 4231 test case 2 (EAB MACs and token HMACs use them)."""
    out = []
    for name, expected in kat.HMAC_RFC4231_TC2.items():
        got = hmac.new(kat.HMAC_KEY, kat.HMAC_DATA, name).hexdigest()
        ok = hmac.compare_digest(got, expected)
        out.append(Check(f"kat-hmac-{name}", ok, "" if ok else "MAC differs"))
    return out


def aes_gcm_kats() -> list[Check]:
    """AES-256-GCM both ways (the API's TLS suites): the published ciphertext and tag come
    out, they decrypt back, and a changed tag is refused."""
    aead = AESGCM(kat.AES256_GCM_KEY)
    expected = kat.AES256_GCM_CIPHERTEXT + kat.AES256_GCM_TAG
    got = aead.encrypt(kat.AES256_GCM_IV, kat.AES256_GCM_PLAINTEXT, None)
    checks = [Check("kat-aes256-gcm-encrypt", got == expected,
                    "" if got == expected else "ciphertext or tag differs")]
    try:
        plain = aead.decrypt(kat.AES256_GCM_IV, expected, None)
        ok = plain == kat.AES256_GCM_PLAINTEXT
        checks.append(Check("kat-aes256-gcm-decrypt", ok, "" if ok else "plaintext differs"))
    except InvalidTag:
        checks.append(Check("kat-aes256-gcm-decrypt", False, "known-good tag rejected"))
    tampered = expected[:-1] + bytes([expected[-1] ^ 1])
    try:
        aead.decrypt(kat.AES256_GCM_IV, tampered, None)
        checks.append(Check("kat-aes256-gcm-negative", False, "changed tag accepted"))
    except InvalidTag:
        checks.append(Check("kat-aes256-gcm-negative", True))
    return checks


def fips_software_checks() -> list[Check]:
    """Every algorithm a FIPS-mode process runs outside the token: the default KATs plus
    HMAC and AES-GCM."""
    return software_checks() + hmac_kats() + aes_gcm_kats()


def token_checks(pool: SessionPool) -> list[Check]:
    """RNG sanity and a sign/verify with a throw-away (session-only) key in the token."""

    def rng(ps: PooledSession) -> Check:
        a, b = ps.session.generate_random(256), ps.session.generate_random(256)
        ok = len(a) == 32 and a != b and any(a)
        return Check("token-rng", ok, "" if ok else "token RNG output looks broken")

    def sign_verify(ps: PooledSession) -> Check:
        params = ps.session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: _CURVES["p256"][0]}, local=True
        )
        pub, priv = params.generate_keypair(
            store=False, capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
            private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False},
        )
        try:
            from appliance.hsm.keys import decode_public_key

            public_key = decode_public_key(pub)
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            digest = hashlib.sha256(kat.MESSAGE).digest()
            raw = priv.sign(digest, mechanism=Mechanism.ECDSA)
            der = encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                       int.from_bytes(raw[32:], "big"))
            try:
                public_key.verify(der, kat.MESSAGE, ec.ECDSA(hashes.SHA256()))
            except InvalidSignature:
                return Check("token-sign-verify", False, "token signature did not verify")
            return Check("token-sign-verify", True)
        finally:
            priv.destroy()
            pub.destroy()

    return [pool.run(rng), pool.run(sign_verify)]


def run(pool: SessionPool | None) -> list[Check]:
    """All checks; the token ones only when a pool is given."""
    checks = software_checks()
    if pool is not None:
        try:
            checks += token_checks(pool)
        except Exception as exc:
            checks.append(Check("token", False, f"{type(exc).__name__}: {exc}"))
    return checks


def require(pool: SessionPool | None) -> list[Check]:
    """Run the checks and refuse to go on if any failed. Token errors (a refused PIN, an
    unreachable token) propagate as themselves, so the caller reports the real cause."""
    checks = software_checks()
    if pool is not None:
        checks += token_checks(pool)
    failed = [c for c in checks if not c.ok]
    if failed:
        summary = "; ".join(f"{c.name}: {c.detail}" for c in failed)
        raise SelfTestError(f"self-test failed: {summary}")
    return checks
