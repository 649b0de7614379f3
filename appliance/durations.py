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


def check_bounds(minimum: int | None, default: int | None, maximum: int | None,
                 where: str = "") -> None:
    """ValueError unless ``minimum <= default <= maximum`` (for the values given).

    A bound pair that cannot be met makes every request fail, and a default outside its
    bounds is silently clamped: both are mistakes to refuse when they are written, naming
    the values.
    """
    prefix = f"{where}: " if where else ""
    if minimum is not None and maximum is not None and minimum > maximum:
        raise ValueError(f"{prefix}min_duration {format_seconds(minimum)} is longer than "
                         f"max_duration {format_seconds(maximum)}")
    if default is not None and minimum is not None and default < minimum:
        raise ValueError(f"{prefix}default_duration {format_seconds(default)} is shorter "
                         f"than min_duration {format_seconds(minimum)}")
    if default is not None and maximum is not None and default > maximum:
        raise ValueError(f"{prefix}default_duration {format_seconds(default)} is longer "
                         f"than max_duration {format_seconds(maximum)}")
