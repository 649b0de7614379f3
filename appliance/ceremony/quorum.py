"""Dual control of ceremony steps: the verifiers and the quorum check live one floor down,
in :mod:`appliance.fips.quorum`, where the installation's officer quorum uses them too;
this name stays so ceremony code (and scripts' users) keep one import."""

from __future__ import annotations

from appliance.fips.quorum import (
    MAX_SECRET,
    MIN_SECRET,
    SCRYPT_N,
    SCRYPT_P,
    SCRYPT_R,
    Authenticator,
    QuorumError,
    QuorumRequest,
    check_quorum,
    check_secret,
    make_verifier,
)

__all__ = [
    "MAX_SECRET", "MIN_SECRET", "SCRYPT_N", "SCRYPT_P", "SCRYPT_R", "Authenticator",
    "QuorumError", "QuorumRequest", "check_quorum", "check_secret", "make_verifier",
]
