"""Export of audit records as JSON lines, with every field needed to re-verify the chain."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance import rfc3339
from appliance.store.models import AuditEvent


def parse_since(text: str) -> str:
    """An ISO 8601 instant, normalised to the log's own time format (UTC, 'Z')."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO 8601 time: {text!r}") from None
    return rfc3339.to_utc(when).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def export_jsonl(session: Session, since: str | None = None,
                 node_id: str | None = None) -> Iterator[str]:
    stmt = select(AuditEvent).order_by(AuditEvent.node_id, AuditEvent.seq)
    if since is not None:
        stmt = stmt.where(AuditEvent.time >= since)
    if node_id is not None:
        stmt = stmt.where(AuditEvent.node_id == node_id)
    for rec in session.execute(stmt.execution_options(yield_per=2000)).scalars():
        yield json.dumps({
            "node_id": rec.node_id, "seq": rec.seq, "time": rec.time, "actor": rec.actor,
            "role": rec.role, "event_type": rec.event_type, "outcome": rec.outcome,
            "object_ids": json.loads(rec.object_ids), "details": json.loads(rec.details),
            "object_ids_json": rec.object_ids, "details_json": rec.details,
            "prev_hash": rec.prev_hash, "hash": rec.hash,
        }, sort_keys=True)
