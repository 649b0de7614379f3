"""Signing and checking checkpoints with the audit key (a token key like any CA key)."""

from __future__ import annotations

import hashlib

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from appliance.hsm.signer import TokenPrivateKey, spki_der
from appliance.x509.algorithms import PublicKey

ALGORITHMS = ("ecdsa-sha256", "rsa-pkcs1-sha256")


class CheckpointSigner:
    def __init__(self, key: TokenPrivateKey) -> None:
        self.key = key
        self.label = key.label
        self.spki_sha256 = hashlib.sha256(spki_der(key)).hexdigest()

    def sign(self, payload: bytes) -> tuple[str, bytes]:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return "rsa-pkcs1-sha256", self.key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        return "ecdsa-sha256", self.key.sign(payload, ec.ECDSA(hashes.SHA256()))


def verify_signature(public_key: PublicKey, algorithm: str, payload: bytes, sig: bytes) -> bool:
    try:
        if algorithm == "rsa-pkcs1-sha256" and isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(sig, payload, padding.PKCS1v15(), hashes.SHA256())
            return True
        if algorithm == "ecdsa-sha256" and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(sig, payload, ec.ECDSA(hashes.SHA256()))
            return True
    except InvalidSignature:
        return False
    return False
