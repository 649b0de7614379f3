"""A deliberately small ACME client for protocol tests that real clients cannot do: send a
bad nonce, a wrong url, a reused EAB key, a key change, a malformed CSR.

Real issuance paths are tested with certbot and lego; this client only signs JWS
(ES256 account keys, HS256 EAB bindings) and keeps the nonce chain.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    n = key.public_key().public_numbers()
    return {"crv": "P-256", "kty": "EC", "x": b64(n.x.to_bytes(32, "big")),
            "y": b64(n.y.to_bytes(32, "big"))}


def thumbprint(key: ec.EllipticCurvePrivateKey) -> str:
    canon = json.dumps(jwk_of(key), sort_keys=True, separators=(",", ":")).encode()
    return b64(hashlib.sha256(canon).digest())


def sign(key: ec.EllipticCurvePrivateKey, protected: dict[str, Any],
         payload: Any) -> dict[str, str]:
    p64 = b64(json.dumps(protected).encode())
    body = "" if payload is None else b64(json.dumps(payload).encode())
    der = key.sign(f"{p64}.{body}".encode(), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return {"protected": p64, "payload": body,
            "signature": b64(r.to_bytes(32, "big") + s.to_bytes(32, "big"))}


def eab_binding(kid: str, hmac_b64: str, account_key: ec.EllipticCurvePrivateKey,
                url: str) -> dict[str, str]:
    mac_key = base64.urlsafe_b64decode(hmac_b64 + "=" * (-len(hmac_b64) % 4))
    p64 = b64(json.dumps({"alg": "HS256", "kid": kid, "url": url}).encode())
    body = b64(json.dumps(jwk_of(account_key)).encode())
    mac = hmac.new(mac_key, f"{p64}.{body}".encode(), hashlib.sha256).digest()
    return {"protected": p64, "payload": body, "signature": b64(mac)}


@dataclass
class Client:
    directory_url: str
    ca_file: Path
    key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    kid: str | None = None
    nonce: str | None = None
    session: requests.Session = field(default_factory=requests.Session)

    def __post_init__(self) -> None:
        self.dir = self.session.get(self.directory_url, verify=str(self.ca_file),
                                    timeout=30).json()

    def new_nonce(self) -> str:
        r = self.session.head(self.dir["newNonce"], verify=str(self.ca_file), timeout=30)
        return str(r.headers["Replay-Nonce"])

    def post(self, url: str, payload: Any, *, nonce: str | None = None,
             use_jwk: bool = False, key: ec.EllipticCurvePrivateKey | None = None,
             signed_url: str | None = None) -> requests.Response:
        """POST a JWS (payload None = POST-as-GET); keeps the returned nonce."""
        k = key or self.key
        protected: dict[str, Any] = {"alg": "ES256", "url": signed_url or url,
                                     "nonce": nonce or self.nonce or self.new_nonce()}
        if use_jwk or self.kid is None:
            protected["jwk"] = jwk_of(k)
        else:
            protected["kid"] = self.kid
        r = self.session.post(url, data=json.dumps(sign(k, protected, payload)),
                              headers={"Content-Type": "application/jose+json"},
                              verify=str(self.ca_file), timeout=60)
        self.nonce = r.headers.get("Replay-Nonce")
        return r

    def register(self, eab: tuple[str, str] | None = None, **extra: Any) -> requests.Response:
        payload: dict[str, Any] = {"termsOfServiceAgreed": True, **extra}
        if eab is not None:
            payload["externalAccountBinding"] = eab_binding(eab[0], eab[1], self.key,
                                                            self.dir["newAccount"])
        r = self.post(self.dir["newAccount"], payload, use_jwk=True)
        if r.status_code in (200, 201):
            self.kid = r.headers["Location"]
        return r

    def order(self, *identifiers: tuple[str, str], **extra: Any) -> requests.Response:
        return self.post(self.dir["newOrder"], {"identifiers": [
            {"type": t, "value": v} for t, v in identifiers], **extra})

    def key_authorization(self, token: str) -> str:
        return f"{token}.{thumbprint(self.key)}"


class FlaskResponse:
    """What ``Client`` reads of a response, from a Flask test response."""

    def __init__(self, resp: Any) -> None:
        self.status_code, self.headers, self.content = resp.status_code, resp.headers, resp.data
        self.text = resp.get_data(as_text=True)

    def json(self) -> Any:
        return json.loads(self.content)


class FlaskSession:
    """The ``requests.Session`` calls ``Client`` makes, answered by a Flask app in process
    (``app.test_client()``): one such session per app stands for one worker."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def get(self, url: str, **_: Any) -> FlaskResponse:
        return FlaskResponse(self.client.get(url))

    def head(self, url: str, **_: Any) -> FlaskResponse:
        return FlaskResponse(self.client.head(url))

    def post(self, url: str, data: str, headers: dict[str, str], **_: Any) -> FlaskResponse:
        return FlaskResponse(self.client.post(url, data=data, headers=headers))
