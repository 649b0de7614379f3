"""``cryptography`` private-key classes whose ``sign()`` runs in the token.

With these, ``cryptography`` builds every to-be-signed structure
(certificates, CRLs, OCSP responses, CSRs) and only the signature comes from
the token. Every signature is verified against the public key before it is
returned: ``cryptography`` would embed a malformed signature without
complaint, and a CA must never release one.
"""

from __future__ import annotations

import hashlib
from typing import Any, NoReturn

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric import padding as apad
from cryptography.hazmat.primitives.asymmetric.utils import (
    NoDigestInfo,
    Prehashed,
    encode_dss_signature,
)
from pkcs11 import MGF, Mechanism

from appliance.errors import KeyPolicyError, SignatureCheckError
from appliance.hsm.keys import KeyInfo, private_key_object
from appliance.hsm.pool import PooledSession, SessionPool
from appliance.x509 import algorithms

_HASHES: dict[str, tuple[type[hashes.HashAlgorithm], Any, Any, Any, Any]] = {
    # name: (class, PKCS1 v1.5 mech, PSS mech, PSS hash mech, MGF)
    "sha256": (hashes.SHA256, Mechanism.SHA256_RSA_PKCS, Mechanism.SHA256_RSA_PKCS_PSS,
               Mechanism.SHA256, MGF.SHA256),
    "sha384": (hashes.SHA384, Mechanism.SHA384_RSA_PKCS, Mechanism.SHA384_RSA_PKCS_PSS,
               Mechanism.SHA384, MGF.SHA384),
    "sha512": (hashes.SHA512, Mechanism.SHA512_RSA_PKCS, Mechanism.SHA512_RSA_PKCS_PSS,
               Mechanism.SHA512, MGF.SHA512),
}
# DigestInfo prefixes (RFC 8017 §9.2) for PKCS#1 v1.5 over a pre-computed digest.
_DIGEST_INFO = {
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


def _hash_name(algorithm: hashes.HashAlgorithm | Prehashed) -> str:
    """The name of an approved CA signature hash (the table decides; ``_HASHES`` only maps
    it to mechanisms)."""
    inner = algorithm._algorithm if isinstance(algorithm, Prehashed) else algorithm
    algorithms.signature_hash(inner.name)
    return inner.name


def _digest(data: bytes, algorithm: hashes.HashAlgorithm | Prehashed) -> bytes:
    if isinstance(algorithm, Prehashed):
        if len(data) != algorithm.digest_size:
            raise ValueError("prehashed data has the wrong length for its hash")
        return data
    return hashlib.new(algorithm.name, data).digest()


class _TokenKeyMixin:
    _pool: SessionPool
    _info: KeyInfo

    @property
    def info(self) -> KeyInfo:
        return self._info

    @property
    def label(self) -> str:
        return self._info.label

    def _check_mechanism(self, name: str) -> None:
        if name not in self._pool.profile.allowed_mechanisms:
            raise KeyPolicyError(
                f"mechanism {name} is not allowed by HSM profile {self._pool.profile.name!r}"
            )
        algorithms.check_mechanism(name)

    def _token_sign(self, data: bytes, mechanism: Any, param: Any = None) -> bytes:
        def work(ps: PooledSession) -> bytes:
            priv = private_key_object(ps, self._info)
            out: bytes = priv.sign(data, mechanism=mechanism, mechanism_param=param)
            return out

        return self._pool.run(work)

    def private_bytes(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise KeyPolicyError("a token key cannot be exported")

    def private_numbers(self) -> NoReturn:
        raise KeyPolicyError("a token key cannot be exported")

    def __copy__(self) -> Any:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self


class TokenECPrivateKey(_TokenKeyMixin, ec.EllipticCurvePrivateKey):
    """An ECDSA key in the token (the token hashes nothing: ``CKM_ECDSA`` over our digest)."""

    def __init__(self, pool: SessionPool, info: KeyInfo) -> None:
        if not isinstance(info.public_key, ec.EllipticCurvePublicKey):
            raise KeyPolicyError(f"key {info.label!r} is not an EC key")
        self._pool = pool
        self._info = info
        self._public = info.public_key

    def sign(
        self,
        data: bytes | bytearray | memoryview,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise KeyPolicyError("only ECDSA signatures are supported")
        if getattr(signature_algorithm, "deterministic_signing", False):
            raise KeyPolicyError(
                "deterministic ECDSA (RFC 6979) is not available from the token; "
                "use randomised ECDSA"
            )
        algorithm = signature_algorithm.algorithm
        _hash_name(algorithm)
        self._check_mechanism("ECDSA")
        digest = _digest(bytes(data), algorithm)
        raw = self._token_sign(digest, Mechanism.ECDSA)
        half = len(raw) // 2
        if len(raw) % 2 or half != (self.curve.key_size + 7) // 8:
            raise SignatureCheckError("token returned an ECDSA signature of the wrong length")
        der = encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )
        inner = algorithm._algorithm if isinstance(algorithm, Prehashed) else algorithm
        try:
            self._public.verify(der, digest, ec.ECDSA(Prehashed(inner)))
        except InvalidSignature:
            raise SignatureCheckError(
                f"signature by {self.label!r} did not verify; not released"
            ) from None
        return der

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise KeyPolicyError("token keys are sign-only")

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.key_size


class TokenRSAPrivateKey(_TokenKeyMixin, rsa.RSAPrivateKey):
    """An RSA key in the token: PKCS#1 v1.5 and PSS with SHA-2."""

    def __init__(self, pool: SessionPool, info: KeyInfo) -> None:
        if not isinstance(info.public_key, rsa.RSAPublicKey):
            raise KeyPolicyError(f"key {info.label!r} is not an RSA key")
        self._pool = pool
        self._info = info
        self._public = info.public_key

    def sign(
        self,
        data: bytes,
        padding: apad.AsymmetricPadding,
        algorithm: hashes.HashAlgorithm | Prehashed | NoDigestInfo,
    ) -> bytes:
        if isinstance(algorithm, NoDigestInfo):
            raise KeyPolicyError("raw RSA signatures without a DigestInfo are not allowed")
        name = _hash_name(algorithm)
        _cls, v15_mech, pss_mech, hash_mech, mgf = _HASHES[name]
        data = bytes(data)
        prehashed = isinstance(algorithm, Prehashed)
        if isinstance(padding, apad.PKCS1v15):
            if prehashed:
                self._check_mechanism(f"{name.upper()}_RSA_PKCS")
                sig = self._token_sign(_DIGEST_INFO[name] + _digest(data, algorithm),
                                       Mechanism.RSA_PKCS)
            else:
                self._check_mechanism(f"{name.upper()}_RSA_PKCS")
                sig = self._token_sign(data, v15_mech)
        elif isinstance(padding, apad.PSS):
            if isinstance(padding._mgf, apad.MGF1) and padding._mgf._algorithm.name != name:
                raise KeyPolicyError("PSS with an MGF1 hash other than the message hash")
            salt = self._salt_length(padding, name)
            self._check_mechanism(f"{name.upper()}_RSA_PKCS_PSS")
            param = (hash_mech, mgf, salt)
            if prehashed:
                sig = self._token_sign(_digest(data, algorithm), Mechanism.RSA_PKCS_PSS, param)
            else:
                sig = self._token_sign(data, pss_mech, param)
        else:
            raise KeyPolicyError(f"RSA padding {padding.name} is not supported for signing")
        try:
            self._public.verify(sig, data, padding, algorithm)
        except InvalidSignature:
            raise SignatureCheckError(
                f"signature by {self.label!r} did not verify; not released"
            ) from None
        return sig

    def _salt_length(self, padding: apad.PSS, name: str) -> int:
        digest_len = _HASHES[name][0]().digest_size
        salt = padding._salt_length
        if isinstance(salt, apad._DigestLength):
            return digest_len
        if isinstance(salt, apad._MaxLength):
            return (self.key_size + 7) // 8 - digest_len - 2
        if isinstance(salt, int):
            return salt
        raise KeyPolicyError("PSS salt length AUTO is only for verification")

    def decrypt(self, ciphertext: bytes, padding: apad.AsymmetricPadding) -> bytes:
        raise KeyPolicyError("token keys are sign-only")

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public

    @property
    def key_size(self) -> int:
        return self._public.key_size


TokenPrivateKey = TokenECPrivateKey | TokenRSAPrivateKey


def token_private_key(pool: SessionPool, info: KeyInfo) -> TokenPrivateKey:
    """The ``cryptography`` key object for a token key pair."""
    if isinstance(info.public_key, rsa.RSAPublicKey):
        return TokenRSAPrivateKey(pool, info)
    return TokenECPrivateKey(pool, info)


def spki_der(key: Any) -> bytes:
    pub = key.public_key() if hasattr(key, "public_key") else key
    der: bytes = pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der
