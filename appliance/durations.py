"""Durations as operators write them: ``90s``, ``5m``, ``24h``, ``30d`` (and ``1h30m``)."""

from __future__ import annotations

import re

_PART = re.compile(r"(\d{1,7})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SECONDS = 100 * 366 * 86400


def parse(text: str) -> int:
    """Seconds in ``text``; a clear ValueError for anything else."""
    value = text.strip().lower()
    if not value or len(value) > 32 or _PART.sub("", value):
        raise ValueError(f"not a duration: {text!r} (use e.g. 90s, 5m, 24h, 30d, 1h30m)")
    seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value))
    if not 0 < seconds <= MAX_SECONDS:
        raise ValueError(f"duration {text!r} out of range")
    return seconds


def format_seconds(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
