"""x5c provisioners: a one-time token signed by the key of a certificate that chains to
the provisioner's configured roots, the certificate (and intermediates) in the ``x5c``
header. Path validation is ``cryptography``'s (RFC 5280 client profile): signatures,
validity, CA constraints, clientAuth on the leaf.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.x509 import verification

from appliance import bounded_json
from appliance.provisioners.tokens import (
    LEEWAY,
    MAX_TOKEN_BYTES,
    MAX_TOKEN_LIFETIME,
    TokenClaims,
    TokenError,
    check_cert_lifetime,
    check_times,
)
from appliance.provisioners.tokens import invalid as tokens_invalid
from appliance.x509 import algorithms

MAX_CHAIN = 5


def header_chain(token: str) -> list[x509.Certificate]:
    """The certificates in a JWT's ``x5c`` header (leaf first), bounded; nothing is trusted
    yet: the caller verifies the chain (x5c provisioner) or the exact DER (renewal)."""
    if len(token) > MAX_TOKEN_BYTES * 4:
        raise TokenError("token too large")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenError(f"malformed token: {exc}") from None
    chain = header.get("x5c")
    if not isinstance(chain, list) or not 1 <= len(chain) <= MAX_CHAIN or \
            not all(isinstance(c, str) for c in chain):
        raise TokenError("the token must carry its certificate (chain) in the x5c header")
    try:
        certs = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True))
                 for c in chain]
        for cert in certs:  # read now: cryptography parses these lazily
            cert.public_key()
            cert.subject.rfc4514_string()
    except (ValueError, TypeError, x509.InvalidVersion, UnsupportedAlgorithm):
        raise TokenError("an x5c certificate does not parse") from None
    return certs


def verify(token: str, roots_pem: str, *, provisioner: str,
           audience: str | Sequence[str]) -> TokenClaims:
    certs = header_chain(token)
    roots = x509.load_pem_x509_certificates(roots_pem.encode())
    verifier = (verification.PolicyBuilder().store(verification.Store(roots))
                .time(datetime.now(UTC)).build_client_verifier())
    try:
        verifier.verify(certs[0], certs[1:])
    except verification.VerificationError as exc:
        raise TokenError(f"the x5c certificate does not chain to {provisioner}'s roots: "
                         f"{exc}") from None
    try:
        claims = jwt.decode(
            token, certs[0].public_key(),  # type: ignore[arg-type]
            algorithms=list(algorithms.jws_algs("x5c")),
            audience=audience, issuer=provisioner, leeway=LEEWAY,
            options={"require": ["exp", "nbf", "iat", "jti", "sub", "iss", "aud"]})
    except jwt.PyJWTError as exc:
        raise tokens_invalid(token, exc, "x5c") from None
    check_times(claims)
    check_cert_lifetime(claims)
    bounded_json.check(claims, "ott")
    if claims["exp"] - claims["iat"] > MAX_TOKEN_LIFETIME:
        raise TokenError("token lifetime exceeds one day")
    jti, sub = claims["jti"], claims["sub"]
    if not isinstance(jti, str) or not 8 <= len(jti) <= 200:
        raise TokenError("token id (jti) missing or malformed")
    if not isinstance(sub, str) or not sub:
        raise TokenError("token subject is empty")
    sans = claims.get("sans", [sub])
    if not isinstance(sans, list) or not all(isinstance(s, str) and s for s in sans) or \
            len(sans) > 100:
        raise TokenError("token sans must be a list of names")
    claims["x5c_subject"] = certs[0].subject.rfc4514_string()
    return TokenClaims(jti=jti, subject=sub, sans=tuple(sans), expires_at=int(claims["exp"]),
                       raw=claims)
