"""Which keys, curves and hashes the appliance works with: decided here, once.

Every "is this algorithm acceptable" question of the core asks this module, so a
narrower mode (the FIPS-style one) has one table to change and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from appliance.errors import KeyPolicyError

PublicKey = ec.EllipticCurvePublicKey | rsa.RSAPublicKey

KeyType = Literal["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ec-p521"]
ALL_KEY_TYPES: tuple[KeyType, ...] = (
    "rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384", "ec-p521",
)

CaHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512
HashName = Literal["sha256", "sha384", "sha512"]
HASHES: dict[str, CaHash] = {
    "sha256": hashes.SHA256(), "sha384": hashes.SHA384(), "sha512": hashes.SHA512(),
}
ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)


@dataclass(frozen=True)
class KeySpec:
    """What a key type name means: algorithm and size or curve."""

    name: KeyType
    algorithm: Literal["ec", "rsa"]
    bits: int
    curve: str | None = None

    @classmethod
    def parse(cls, name: str) -> KeySpec:
        try:
            return _SPECS[name]
        except KeyError:
            raise KeyPolicyError(
                f"unknown key type {name!r}; choose one of {', '.join(_SPECS)}"
            ) from None

    @classmethod
    def of_public_key(cls, key: PublicKey) -> KeySpec:
        if isinstance(key, rsa.RSAPublicKey):
            return cls.parse(f"rsa-{key.key_size}")
        return cls.parse(f"ec-p{key.curve.key_size}")


_SPECS: dict[str, KeySpec] = {
    "rsa-2048": KeySpec("rsa-2048", "rsa", 2048),
    "rsa-3072": KeySpec("rsa-3072", "rsa", 3072),
    "rsa-4096": KeySpec("rsa-4096", "rsa", 4096),
    "ec-p256": KeySpec("ec-p256", "ec", 256, "p256"),
    "ec-p384": KeySpec("ec-p384", "ec", 384, "p384"),
    "ec-p521": KeySpec("ec-p521", "ec", 521, "p521"),
}


def default_hash(public_key: PublicKey) -> str:
    """The hash a CA key signs with when a step names none: matched to the key's strength."""
    spec = KeySpec.of_public_key(public_key)
    return {"ec-p256": "sha256", "ec-p384": "sha384", "ec-p521": "sha512",
            "rsa-2048": "sha256"}.get(spec.name, "sha384")


def rsa_padding(signer_public: PublicKey, choice: str, algo: CaHash) -> Any:
    """PSS when asked for and the signer is RSA; ``None`` (PKCS#1 v1.5 or ECDSA) otherwise."""
    if isinstance(signer_public, rsa.RSAPublicKey) and choice == "pss":
        return padding.PSS(padding.MGF1(algo), padding.PSS.DIGEST_LENGTH)
    return None
