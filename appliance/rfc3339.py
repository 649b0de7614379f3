"""RFC 3339 times as clients send them (``notBefore``/``notAfter`` in /1.0/sign and ACME)."""

from __future__ import annotations

from datetime import UTC, datetime

MAX_CHARS = 64
# X.509 validity is UTCTime from 1950 and GeneralizedTime to 9999 (RFC 5280 4.1.2.5).
MIN_YEAR, MAX_YEAR = 1950, 9998


def parse(value: object) -> datetime:
    """An aware UTC-or-offset datetime; ``Z`` accepted, a naive time taken as UTC.
    ValueError for anything else (callers turn it into their protocol's error)."""
    if not isinstance(value, str) or len(value) > MAX_CHARS:
        raise ValueError("not an RFC 3339 time")
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    try:
        # In UTC it must still be a datetime: year 1 at +01:00 is not (OverflowError later).
        parsed.astimezone(UTC)
    except OverflowError:
        raise ValueError("time out of range") from None
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        raise ValueError("time out of range")
    return parsed


def to_utc(value: datetime) -> datetime:
    """In UTC. A naive time is taken as UTC: SQLite hands back naive datetimes and every
    time the appliance stores is UTC (PostgreSQL hands back aware ones in its zone)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def format_z(value: datetime) -> str:
    """``2026-12-06T20:34:02Z``: whole seconds, UTC, as ACME, transcripts and messages show it."""
    return to_utc(value).strftime("%Y-%m-%dT%H:%M:%SZ")
