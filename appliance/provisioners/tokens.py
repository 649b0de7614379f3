"""One-time tokens (JWTs) of JWK provisioners: minting on the operator's side, checking
on the CA's.

Checks follow step-ca's: ES256 signature by the provisioner key, ``iss`` = the
provisioner, ``aud`` = the sign URL, ``sub`` non-empty, ``nbf``/``exp``/``iat``
with one minute of leeway, a lifetime of at most one day, and a ``jti`` that
was never seen before (a primary key in the database, so a replay fails in
every worker and node sharing the database).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from appliance import bounded_json
from appliance.issuance.request import MAX_CERT_LIFETIME, TokenError
from appliance.x509 import algorithms

LEEWAY = 60
MAX_TOKEN_LIFETIME = 86400
MAX_TOKEN_BYTES = 8192
# What a JWK provisioner's key (P-256, ``new_key``) signs with; which algorithms a token may
# carry to be accepted is the table's (``algorithms.jws_algs("ott")``).
ALGORITHM = "ES256"
MAX_NUMERIC_DATE = 253_402_300_799  # 9999-12-31T23:59:59Z


__all__ = ["TokenError"]  # defined beside the pipeline, which refuses a replayed token too


@dataclass(frozen=True)
class TokenClaims:
    jti: str
    subject: str
    sans: tuple[str, ...]
    expires_at: int
    raw: dict[str, Any]


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_jwk(key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    jwk: dict[str, Any] = json.loads(ECAlgorithm.to_jwk(key))
    jwk["kid"] = _thumbprint(jwk)
    jwk["alg"] = ALGORITHM
    jwk["use"] = "sig"
    return jwk


def _thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint: the key id both sides can compute from the key alone."""
    members = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"),
                         sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(members.encode()).digest()).rstrip(b"=").decode()


def mint(key: ec.EllipticCurvePrivateKey, *, provisioner: str, audience: str,
         sans: list[str], lifetime: int = 300, kid: str | None = None,
         now: float | None = None, cert_lifetime: int | None = None) -> str:
    if not sans:
        raise TokenError("a token needs at least one SAN")
    t = int(now if now is not None else time.time())
    claims = {"iss": provisioner, "aud": audience, "sub": sans[0], "sans": sans,
              "iat": t, "nbf": t, "exp": t + lifetime, "jti": secrets.token_urlsafe(24)}
    if cert_lifetime is not None:
        claims["cert_lifetime"] = cert_lifetime
    headers = {"kid": kid or public_jwk(key.public_key())["kid"], "typ": "JWT"}
    return jwt.encode(claims, key, algorithm=ALGORITHM, headers=headers)


@lru_cache(maxsize=256)
def _verifying_key(jwk_text: str) -> Any:
    """The provisioner's public key, parsed once per distinct stored JWK text (a changed
    credential is a different text, so it takes effect on the next request)."""
    return jwt.PyJWK(json.loads(jwk_text), algorithm=ALGORITHM).key


def check_times(claims: dict[str, Any]) -> None:
    """``exp``, ``nbf`` and ``iat`` as NumericDates (RFC 7519 §2): numbers, not the strings
    PyJWT lets through, within what a datetime holds (the spent-token row stores ``exp``)."""
    for name in ("exp", "nbf", "iat"):
        value = claims.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not 0 <= value <= MAX_NUMERIC_DATE:
            raise TokenError(f"invalid token: {name} must be a NumericDate (seconds since "
                             "1970)")


def check_cert_lifetime(claims: dict[str, Any]) -> None:
    """``cert_lifetime``, if present, is a whole number of seconds in range: checked with
    the token, before it is spent (the provisioner's maximum is applied at issuance)."""
    value = claims.get("cert_lifetime")
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 0 < value <= MAX_CERT_LIFETIME:
        raise TokenError("invalid token: cert_lifetime must be a whole number of seconds "
                         f"from 1 to {MAX_CERT_LIFETIME}")


_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")  # base64url, unpadded: what ``mint`` and step write


def _plain_segment(segment: str) -> dict[str, Any] | None:
    """A canonical unpadded base64url segment holding a JSON object, or None (anything else:
    the caller asks PyJWT, whose answer, and error, stands)."""
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        return None
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
            return None  # not canonical (stray bits in the last character)
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a token, signature not checked: what PyJWT's unverified decode
    returns. The common shape (three unpadded segments, JSON-object header without
    ``crit`` or ``b64``, a string ``kid`` if any) is read here, a third of PyJWT's cost;
    every other token goes to PyJWT, so what is refused, and its words, are PyJWT's. The
    token is verified in full (PyJWT, with the key) right after either way."""
    parts = token.split(".")
    if len(parts) == 3 and _SEGMENT.fullmatch(parts[2]):
        header = _plain_segment(parts[0])
        if header is not None and "crit" not in header and "b64" not in header \
                and isinstance(header.get("kid", ""), str):
            claims = _plain_segment(parts[1])
            if claims is not None:
                return claims
    found: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return found


def unverified_issuer(token: str) -> str:
    """The provisioner a token names, to find its key (nothing is trusted yet)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    try:
        iss = _unverified_claims(token).get("iss")
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    if not isinstance(iss, str) or not iss:
        raise TokenError("token has no issuer")
    return iss


def invalid(token: str, exc: jwt.PyJWTError, purpose: algorithms.JwsPurpose) -> TokenError:
    """A token jwt refused: today's words, unless the table's mode (FIPS) refused its
    algorithm, which is then named."""
    if isinstance(exc, jwt.InvalidAlgorithmError):
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            alg = None
        approved = algorithms.one_of(algorithms.jws_algs(purpose))
        return algorithms.mark(TokenError(algorithms.refusal_text(
            f"invalid token: {exc}", f"token algorithm {alg!r}", approved)))
    return TokenError(f"invalid token: {exc}")


def verify(token: str, jwk: dict[str, Any], *, provisioner: str,
           audience: str | Sequence[str]) -> TokenClaims:
    """``audience``: the ``aud`` values taken (one of them must be in the token's)."""
    if len(token) > MAX_TOKEN_BYTES:
        raise TokenError("token too large")
    try:
        key = _verifying_key(json.dumps(jwk, sort_keys=True))
        claims = jwt.decode(
            token, key, algorithms=list(algorithms.jws_algs("ott")), audience=audience,
            issuer=provisioner,
            leeway=LEEWAY, options={"require": ["exp", "nbf", "iat", "jti", "sub", "iss", "aud"]},
        )
    except jwt.PyJWTError as exc:
        raise invalid(token, exc, "ott") from None
    check_times(claims)
    check_cert_lifetime(claims)
    bounded_json.check(claims, "ott")
    if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME:
        raise TokenError("token lifetime exceeds one day")
    if claims["iat"] > time.time() + LEEWAY:
        raise TokenError("token issued in the future")
    sub, jti = claims["sub"], claims["jti"]
    if not isinstance(sub, str) or not sub:
        raise TokenError("token subject is empty")
    if not isinstance(jti, str) or not 8 <= len(jti) <= 256:
        raise TokenError("token id (jti) missing or malformed")
    sans = claims.get("sans", [sub])
    if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans) or \
            len(sans) > 100:
        raise TokenError("token sans must be a list of names")
    return TokenClaims(jti=jti, subject=sub, sans=tuple(sans), expires_at=int(claims["exp"]),
                       raw=claims)
