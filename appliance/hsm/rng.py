"""Randomness from the token's RNG, for serial numbers and identifiers.

Serials must be unpredictable (BR 7.1: at least 64 random bits) and the
token's RNG is the one source the appliance already trusts with its keys.

The continuous test (a conditional self-test of the FIPS-style mode, kept in every mode
since it costs one comparison): each draw of at least 8 bytes is compared with the previous
one in this process; a repeat means the source is stuck, so it fails closed and stays
failed (every later draw is refused) until the process restarts.
"""

from __future__ import annotations

import threading

from appliance.errors import HsmError, SelfTestError
from appliance.hsm.pool import PooledSession, SessionPool

MAX_RANDOM_BYTES = 4096
CONTINUOUS_MIN_BYTES = 8  # 64 bits: a chance repeat of a healthy source is negligible

_lock = threading.Lock()
_previous: bytes | None = None
_failure: str | None = None


def continuous_failure() -> str | None:
    """Why the continuous test failed in this process, or None."""
    return _failure


def continuous_test(data: bytes) -> None:
    """Compare a draw with the previous one; a repeat latches the failure and raises."""
    global _previous, _failure
    if len(data) < CONTINUOUS_MIN_BYTES:
        return
    with _lock:
        if _failure is None and data == _previous:
            _failure = f"token RNG returned the same {len(data)} bytes twice in a row"
        if _failure is not None:
            raise SelfTestError(f"continuous RNG test failed: {_failure}")
        _previous = data


def random_bytes(pool: SessionPool, n: int) -> bytes:
    if not 1 <= n <= MAX_RANDOM_BYTES:
        raise ValueError(f"random_bytes: n must be 1..{MAX_RANDOM_BYTES}")

    def work(ps: PooledSession) -> bytes:
        out: bytes = ps.session.generate_random(n * 8)
        return out

    data = pool.run(work)
    if len(data) != n:
        raise HsmError(f"token RNG returned {len(data)} bytes, asked for {n}")
    continuous_test(data)
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
