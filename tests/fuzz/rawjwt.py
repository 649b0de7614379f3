"""A JWS over any payload bytes (PyJWT's encoder checks claims; the fuzzers must not)."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def es256(payload: bytes, key: ec.EllipticCurvePrivateKey, header: dict[str, Any]) -> str:
    signing_input = f"{_b64(json.dumps({'alg': 'ES256', **header}).encode())}.{_b64(payload)}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def timed(payload: bytes) -> bytes:
    """Seeds write ``$NOW`` and ``$EXP`` for times: the current time and five minutes on, so
    that seeds kept in the repository do not go stale (an expired token stops early)."""
    now = int(time.time())
    return payload.replace(b"$NOW", str(now).encode()).replace(b"$EXP", str(now + 300).encode())
