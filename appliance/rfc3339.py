"""RFC 3339 times as clients send them (``notBefore``/``notAfter`` in /1.0/sign and ACME)."""

from __future__ import annotations

from datetime import UTC, datetime

MAX_CHARS = 64


def parse(value: object) -> datetime:
    """An aware UTC-or-offset datetime; ``Z`` accepted, a naive time taken as UTC.
    ValueError for anything else (callers turn it into their protocol's error)."""
    if not isinstance(value, str) or len(value) > MAX_CHARS:
        raise ValueError("not an RFC 3339 time")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
