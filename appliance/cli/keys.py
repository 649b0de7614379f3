"""Reading public keys given on the command line."""

from __future__ import annotations

from pathlib import Path

import click
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.x509.algorithms import PublicKey


def load_public_key(path: Path) -> PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
        raise click.UsageError("the public key must be EC or RSA")
    return key
