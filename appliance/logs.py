"""Structured operational logging as JSON lines.

Operators feed these lines to a log pipeline, so every record is one JSON
object. Secrets must never reach a log: a filter drops any extra field whose
name looks like a secret and redacts PIN-like assignments in messages, as a
second line of defence behind code that never logs secrets in the first place.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

_SECRET_FIELD = re.compile(r"pin|password|passphrase|secret|private|token_value|key_value", re.I)
_SECRET_IN_TEXT = re.compile(
    r"(?i)\b(pin|password|passphrase|secret)\b(\s*[=:]\s*)(\S+)"
)
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def redact_text(text: str) -> str:
    """Replace the value of ``pin=...``-style fragments with a marker."""
    return _SECRET_IN_TEXT.sub(lambda m: f"{m.group(1)}{m.group(2)}[REDACTED]", text)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object with its extra fields, secrets removed."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            if _SECRET_FIELD.search(key):
                out[key] = "[REDACTED]"
                continue
            plain = isinstance(value, (str, int, float, bool, type(None)))
            out[key] = value if plain else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            out["error_type"] = record.exc_info[0].__name__
            out["error"] = redact_text(str(record.exc_info[1]))
        return json.dumps(out, sort_keys=True)


def configure(level: str = "INFO", stream: Any = None) -> None:
    """Send the ``appliance`` loggers to ``stream`` (stderr by default) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger("appliance")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def get(name: str) -> logging.Logger:
    """A logger below the ``appliance`` hierarchy."""
    return logging.getLogger(name if name.startswith("appliance") else f"appliance.{name}")
