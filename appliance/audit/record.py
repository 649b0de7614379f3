"""How a record is hashed. Changing this breaks every existing chain: don't.

The hash covers every field but itself, serialised as canonical JSON (sorted
keys, no spaces, UTF-8), so anyone can re-compute it from an export without
this code.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
MAX_DETAILS_BYTES = 64 * 1024
HASHED_FIELDS = (
    "node_id", "seq", "time", "actor", "role", "event_type", "outcome",
    "object_ids", "details", "prev_hash",
)
OUTCOMES = ("success", "failure", "denied")


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_hash(fields: dict[str, Any]) -> str:
    body = {name: fields[name] for name in HASHED_FIELDS}
    return hashlib.sha256(canonical(body).encode("utf-8")).hexdigest()


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def checkpoint_payload(node_id: str, seq: int, head_hash: str, time: str) -> bytes:
    """The bytes the audit key signs: a versioned, canonical statement of the chain head."""
    return canonical({
        "v": 1, "type": "appliance-audit-checkpoint",
        "node_id": node_id, "seq": seq, "head_hash": head_hash, "time": time,
    }).encode("utf-8")
