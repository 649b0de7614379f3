"""Dual control: officers' secrets checked against their scrypt verifiers.

The verifiers live in a ceremony script (``officers:``) or, for the FIPS-style mode's
crypto-officer actions, in the installation's ``officers`` table; the secrets are
presented by the officers at the time of the act and never stored. This lives in the
fips room (below the runtime) so that both the ceremony runner and the installation's
quorum gate (``appliance.fips.officers``) use one implementation.

A quorum needs ``required`` *distinct* officers with *distinct* secrets: one person who
knows two officers' secrets, or two officers who share one, never meet a quorum alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from appliance.errors import ApplianceError

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**15, 8, 1
MIN_SECRET = 12
MAX_SECRET = 1024


class QuorumError(ApplianceError):
    code = "quorum_refused"
    status = 403
    acme_type = "unauthorized"


@dataclass(frozen=True)
class QuorumRequest:
    step_id: str
    required: int
    officers: tuple[str, ...]


# Called once per quorum step; returns (officer name, secret) pairs as presented.
Authenticator = Callable[[QuorumRequest], list[tuple[str, str]]]


def make_verifier(secret: str) -> str:
    if not MIN_SECRET <= len(secret) <= MAX_SECRET:
        raise QuorumError(f"an officer secret must be {MIN_SECRET}..{MAX_SECRET} characters")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
                            maxmem=128 * 1024 * 1024)
    return "$".join(["scrypt", str(SCRYPT_N), str(SCRYPT_R), str(SCRYPT_P),
                     base64.b64encode(salt).decode(), base64.b64encode(digest).decode()])


def check_secret(verifier: str, secret: str) -> bool:
    try:
        scheme, n, r, p, salt_b64, digest_b64 = verifier.split("$")
        n_i, r_i, p_i = int(n), int(r), int(p)
    except ValueError:
        return False
    if scheme != "scrypt" or not (2**10 <= n_i <= 2**20 and 1 <= r_i <= 32 and 1 <= p_i <= 16):
        return False
    if len(secret) > MAX_SECRET:
        return False
    expected = base64.b64decode(digest_b64)
    got = hashlib.scrypt(secret.encode(), salt=base64.b64decode(salt_b64), n=n_i, r=r_i, p=p_i,
                         dklen=len(expected), maxmem=256 * 1024 * 1024)
    return hmac.compare_digest(got, expected)


def check_quorum(request: QuorumRequest, presented: list[tuple[str, str]],
                 verifiers: dict[str, str]) -> list[str]:
    """The officers who met the quorum, or QuorumError saying why not (never naming a secret)."""
    names = [n for n, _ in presented]
    if len(presented) < request.required:
        raise QuorumError(f"step {request.step_id}: {request.required} officers required, "
                          f"{len(presented)} presented")
    if len(set(names)) != len(names):
        raise QuorumError(f"step {request.step_id}: an officer authenticated twice")
    outsiders = [n for n in names if n not in request.officers]
    if outsiders:
        raise QuorumError(f"step {request.step_id}: not officers of this step: "
                          f"{', '.join(outsiders)}")
    if len({s for _, s in presented}) != len(presented):
        raise QuorumError(f"step {request.step_id}: two officers presented the same secret")
    failed = [n for n, s in presented if not check_secret(verifiers[n], s)]
    if failed:
        raise QuorumError(f"step {request.step_id}: authentication failed for "
                          f"{', '.join(failed)}")
    return names
