"""The ``cluster_nodes`` rows as readers see them: each with its state (live, stale, stopped).

The state is decided by the reader, from its own clock and its own
``cluster.stale_after_seconds``: a node is *stopped* when its serve said so on a clean
stop, *stale* when its last heartbeat is older than that (killed, hung, cut off from the
database, or its clock far behind), else *live*. Nodes' clocks are assumed to be in step
(NTP), as certificates' validity already assumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import inspect, select

from appliance.rfc3339 import to_utc
from appliance.store.db import Database
from appliance.store.models import ClusterNode

State = Literal["live", "stale", "stopped"]


@dataclass(frozen=True)
class NodeView:
    node_id: str
    version: str
    schema_revision: str
    role: str
    hostname: str
    pid: int
    api_listen: str | None
    http_listen: str | None
    started_at: datetime
    last_heartbeat: datetime
    age_seconds: float
    state: State
    token_ok: bool | None
    selftests_passed: bool | None
    details: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "version": self.version,
                "schema_revision": self.schema_revision, "role": self.role,
                "hostname": self.hostname, "pid": self.pid,
                "api_listen": self.api_listen, "http_listen": self.http_listen,
                "started_at": self.started_at.isoformat(),
                "last_heartbeat": self.last_heartbeat.isoformat(),
                "age_seconds": round(self.age_seconds, 1), "state": self.state,
                "token_reachable": self.token_ok, "selftests_passed": self.selftests_passed,
                "details": self.details}


def parse_details(text: str | None) -> dict[str, Any]:
    """The row's details; a value that is not a JSON object reads as none."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def state_of(details: dict[str, Any], age_seconds: float, stale_after: float) -> State:
    if details.get("state") == "stopped":
        return "stopped"
    return "stale" if age_seconds > stale_after else "live"


def view(row: ClusterNode, stale_after: float, now: datetime | None = None) -> NodeView:
    now = now or datetime.now(UTC)
    last = to_utc(row.last_heartbeat)
    details = parse_details(row.details)
    age = max((now - last).total_seconds(), 0.0)
    return NodeView(row.node_id, row.version, row.schema_revision, row.role, row.hostname,
                    row.pid, row.api_listen, row.http_listen, to_utc(row.started_at), last,
                    age, state_of(details, age, stale_after), row.token_ok,
                    row.selftests_passed, details)


def read_all(db: Database, stale_after: float) -> list[NodeView]:
    """Every node that ever beat, by node id; none before the table exists (a database
    older than migration 0012, whose nodes did not write heartbeats)."""
    if not inspect(db.engine).has_table(ClusterNode.__tablename__):
        return []
    with db.sessions() as s:
        rows = s.execute(select(ClusterNode).order_by(ClusterNode.node_id)).scalars().all()
    now = datetime.now(UTC)
    return [view(r, stale_after, now) for r in rows]
