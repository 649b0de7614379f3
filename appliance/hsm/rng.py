"""Randomness from the token's RNG, for serial numbers and identifiers.

Serials must be unpredictable (BR 7.1: at least 64 random bits) and the
token's RNG is the one source the appliance already trusts with its keys.
"""

from __future__ import annotations

from appliance.errors import HsmError
from appliance.hsm.pool import PooledSession, SessionPool

MAX_RANDOM_BYTES = 4096


def random_bytes(pool: SessionPool, n: int) -> bytes:
    if not 1 <= n <= MAX_RANDOM_BYTES:
        raise ValueError(f"random_bytes: n must be 1..{MAX_RANDOM_BYTES}")

    def work(ps: PooledSession) -> bytes:
        out: bytes = ps.session.generate_random(n * 8)
        return out

    data = pool.run(work)
    if len(data) != n:
        raise HsmError(f"token RNG returned {len(data)} bytes, asked for {n}")
    return data


def random_serial(pool: SessionPool, bits: int = 127) -> int:
    """A positive certificate serial of ``bits`` random bits (64..159), at most 20 DER bytes."""
    if not 64 <= bits <= 159:
        raise ValueError("serial bits must be 64..159")
    while True:
        raw = int.from_bytes(random_bytes(pool, (bits + 7) // 8), "big")
        serial = raw >> ((bits + 7) // 8 * 8 - bits)
        if serial:
            return serial
