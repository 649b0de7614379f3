"""Reading the flattened JWS of an ACME request (RFC 8555 §6.2) and checking it.

josepy parses keys, computes thumbprints and checks signatures; the ACME rules
around them (exactly one of ``jwk``/``kid``, ``nonce``, ``url``) are here, and the
algorithms and key sizes a CA accepts are asked of the one table
(``appliance.x509.algorithms``). Every field is bounded before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, cast

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy import jwa
from josepy.errors import DeserializationError
from josepy.jwk import JWK

from appliance import bounded_json
from appliance.acme.problems import AcmeProblem
from appliance.errors import InputError
from appliance.x509 import algorithms

MAX_FIELD = 64 * 1024
# The members each key type must have (RFC 7518 §6), checked before josepy reads them.
KEY_MEMBERS = {"RSA": ("n", "e"), "EC": ("crv", "x", "y")}


def b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > MAX_FIELD:
        raise AcmeProblem("malformed", f"{what} must be a base64url string")
    if "=" in text or "+" in text or "/" in text:
        raise AcmeProblem("malformed", f"{what} must be unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, binascii.Error):
        raise AcmeProblem("malformed", f"{what} is not valid base64url") from None


def read_body(raw: bytes) -> Any:
    """A request body (the JWS envelope) as bounded JSON."""
    try:
        return bounded_json.loads(raw, "request body")
    except InputError as exc:
        raise AcmeProblem("malformed", str(exc)) from None


def payload_json(raw: bytes, what: str) -> Any:
    try:
        return bounded_json.loads(raw, what)
    except InputError as exc:
        raise AcmeProblem("malformed", str(exc)) from None


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class Envelope:
    """A parsed, not yet verified, flattened JWS."""

    protected: dict[str, Any]
    protected_b64: str
    payload_b64: str
    signature: bytes

    @property
    def signing_input(self) -> bytes:
        return f"{self.protected_b64}.{self.payload_b64}".encode()

    @property
    def payload(self) -> bytes:
        return b64decode(self.payload_b64, "payload") if self.payload_b64 else b""


def parse(body: Any, what: str = "request") -> Envelope:
    if not isinstance(body, dict):
        raise AcmeProblem("malformed", f"the {what} must be a flattened JWS JSON object")
    if set(body) - {"protected", "payload", "signature"}:
        raise AcmeProblem("malformed", f"the {what} JWS may only have protected, payload and "
                          "signature (no unprotected header)")
    protected_b64, payload_b64 = body.get("protected"), body.get("payload")
    if not isinstance(protected_b64, str) or not isinstance(payload_b64, str):
        raise AcmeProblem("malformed", f"the {what} JWS needs protected and payload strings")
    try:
        protected = bounded_json.loads(b64decode(protected_b64, "protected header"),
                                       "protected header")
    except InputError as exc:
        raise AcmeProblem("malformed", str(exc)) from None
    if not isinstance(protected, dict):
        raise AcmeProblem("malformed", "the protected header must be a JSON object")
    if payload_b64:
        b64decode(payload_b64, "payload")
    return Envelope(protected, protected_b64, payload_b64,
                    b64decode(body.get("signature"), "signature"))


def load_jwk(value: Any) -> JWK:
    """An account (or certificate) public key as a JWK, within the sizes a CA accepts."""
    if not isinstance(value, dict) or len(json.dumps(value)) > 4096:
        raise AcmeProblem("malformed", "jwk must be a JSON object")
    kty = value.get("kty")
    if kty not in KEY_MEMBERS:
        raise algorithms.mark(AcmeProblem("badPublicKey", algorithms.refusal_text(
            "only RSA and EC account keys are accepted", f"account key type {kty!r}",
            "RSA or EC")))
    for member in KEY_MEMBERS[kty]:
        if not isinstance(value.get(member), str):
            raise AcmeProblem("malformed", f"jwk member {member!r} must be a string")
    try:
        jwk = cast(JWK, JWK.from_json(value))
        public_key(jwk)
    except (DeserializationError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise AcmeProblem("malformed", f"jwk does not parse: {str(exc)[:200]}") from None
    try:
        algorithms.check_account_key(public_key(jwk))
    except algorithms.AlgorithmRefused as exc:
        raise algorithms.mark(AcmeProblem("badPublicKey", str(exc)), exc) from None
    return jwk


def public_key(jwk: JWK) -> Any:
    """The ``cryptography`` public key a JWK holds, through josepy's public surface (its
    key wrapper forwards ``public_bytes``), so no private attribute of josepy is relied on."""
    der = jwk.key.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
    return _load_spki(der)


@lru_cache(maxsize=4096)
def _load_spki(der: bytes) -> Any:
    return serialization.load_der_public_key(der)


def thumbprint(jwk: JWK) -> str:
    return b64encode(jwk.thumbprint())


def check_signature(env: Envelope, jwk: JWK) -> None:
    alg = env.protected.get("alg")
    if not isinstance(alg, str) or not algorithms.jws_alg_allowed(alg, "acme"):
        approved = ', '.join(algorithms.jws_algs('acme'))
        raise algorithms.mark(AcmeProblem("badSignatureAlgorithm", algorithms.refusal_text(
            f"algorithm {alg!r} is not accepted; use one of {approved}",
            f"JWS algorithm {alg!r}", f"one of {approved}")))
    key = public_key(jwk)
    if alg.startswith("ES"):
        if not isinstance(key, ec.EllipticCurvePublicKey) or \
                algorithms.JWS_ALG_OF_CURVE.get(key.curve.name) != alg:
            raise AcmeProblem("badSignatureAlgorithm", f"{alg} does not fit the key")
    elif not isinstance(key, rsa.RSAPublicKey):
        raise AcmeProblem("badSignatureAlgorithm", f"{alg} does not fit the key")
    try:
        ok = jwa.JWASignature.from_json(alg).verify(key, env.signing_input, env.signature)
    except Exception:  # josepy raises a few kinds for a malformed signature
        ok = False
    if not ok:
        raise AcmeProblem("unauthorized", "the JWS signature does not verify")


@dataclass(frozen=True)
class Verified:
    envelope: Envelope
    jwk: JWK
    kid: str | None  # the account URL when signed by an account key

    @property
    def payload(self) -> bytes:
        return self.envelope.payload

    @property
    def post_as_get(self) -> bool:
        return self.envelope.payload_b64 == ""

    def json(self) -> dict[str, Any]:
        if self.post_as_get:
            return {}
        value = payload_json(self.payload, "payload")
        if not isinstance(value, dict):
            raise AcmeProblem("malformed", "the payload must be a JSON object")
        return value


def verify(env: Envelope, *, url: str, redeem_nonce: Callable[[str], bool],
           account_key: Callable[[str], JWK], want: str = "kid") -> Verified:
    """Check url, nonce and signature; ``want`` is "kid" (an account signs), "jwk" (a new
    key signs: newAccount, revokeCert by certificate key) or "either"."""
    p = env.protected
    if p.get("url") != url:
        raise AcmeProblem("unauthorized", "the JWS url does not match the request URL")
    has_jwk, has_kid = "jwk" in p, "kid" in p
    if has_jwk == has_kid:
        raise AcmeProblem("malformed", "the JWS must carry exactly one of jwk and kid")
    if want == "kid" and not has_kid:
        raise AcmeProblem("malformed", "this request must be signed by an account (kid)")
    if want == "jwk" and not has_jwk:
        raise AcmeProblem("malformed", "this request must carry the key (jwk), not a kid")
    nonce = p.get("nonce")
    if not isinstance(nonce, str) or not redeem_nonce(nonce):
        raise AcmeProblem("badNonce", "the nonce is missing, unknown, used or expired")
    if has_kid:
        kid = p["kid"]
        if not isinstance(kid, str) or len(kid) > 512:
            raise AcmeProblem("malformed", "kid must be the account URL")
        jwk = account_key(kid)
    else:
        kid = None
        jwk = load_jwk(p["jwk"])
    check_signature(env, jwk)
    return Verified(env, jwk, kid)
