"""The file ``audit export-key`` writes: audit public keys (PEM) and signed checkpoints.

One text file an auditor keeps: each key a ``PUBLIC KEY`` PEM block preceded
by an explanatory line (RFC 7468 allows text outside the blocks, so ``openssl
pkey -pubin -in FILE`` reads it as it is), then every checkpoint as an anchor
line. ``audit verify --export LOG --public-key FILE`` takes both from it; a
plain PEM file works too (keys only).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from appliance.audit.anchor import Checkpoint
from appliance.hsm.signer import spki_der
from appliance.x509.algorithms import PublicKey

MAX_BYTES = 64 * 1024 * 1024
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----\r?\n[A-Za-z0-9+/=\r\n]+-----END PUBLIC KEY-----")


@dataclass(frozen=True)
class ExportedKey:
    node_id: str
    label: str
    key: PublicKey


def render(keys: Iterable[ExportedKey], checkpoints: Iterable[Checkpoint], when: str) -> str:
    out = [f"# appliance audit public keys and checkpoints, exported {when}"]
    for k in keys:
        pem = k.key.public_bytes(serialization.Encoding.PEM,
                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        digest = hashlib.sha256(spki_der(k.key)).hexdigest()
        out.append(f"# audit key of node {k.node_id}: label {k.label}, spki-sha256 {digest}")
        out.append(pem.rstrip("\n"))
    out.append("# checkpoints, one per line (as the anchor stream holds them)")
    out.extend(cp.line() for cp in checkpoints)
    return "\n".join(out) + "\n"


def parse(text: str) -> tuple[list[PublicKey], list[Checkpoint]]:
    """Keys and checkpoints of a key file (or of a plain PEM); ValueError says what is wrong."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES} bytes")
    keys: list[PublicKey] = []
    for block in _PEM.findall(text):
        key = serialization.load_pem_public_key(block.encode())
        if not isinstance(key, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey)):
            raise ValueError("an audit public key must be EC or RSA")
        keys.append(key)
    if not keys:
        raise ValueError("no PEM public key in it")
    checkpoints = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("{"):
            try:
                checkpoints.append(Checkpoint.parse(line))
            except ValueError as exc:
                raise ValueError(f"line {number}: {exc}") from None
    return keys, checkpoints
