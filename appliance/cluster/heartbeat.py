"""This node's heartbeat: its row in ``cluster_nodes``, rewritten every
``cluster.heartbeat_seconds`` by a thread in ``appliance serve``'s parent process.

The row says what the node is (version, schema revision, role, host, pid, listeners)
and how it is (token reachable, newest self-test); ``appliance cluster status`` reads it
and a schema upgrade is refused while another node of another version beats
(``appliance.ops.schema``).

Not audited, by decision: a heartbeat is liveness, like a metric; it changes nothing the
CA issues, revokes or trusts. The audit log already names every node that changes
anything (each node's records carry its node id and sequence). What an operator should
hear of goes to the operational log instead: a node id's first heartbeat (its row is
created), and a node id that another host takes over while the previous holder's
heartbeat is still fresh (two hosts configured with one node id: their audit sequences
would collide), which is also kept in the row (``details.took_over_from``). A clean
stop marks the row ``stopped`` (if it is still this process's), so status tells a node
that was shut down from one that went silent.
"""

from __future__ import annotations

import json
import os
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from appliance import __version__, config, logs
from appliance.background import ParentThread
from appliance.cluster import nodes
from appliance.runtime import Appliance
from appliance.store import migrate
from appliance.store.models import ClusterNode, SelfTestRun

log = logs.get("cluster.heartbeat")
TOKEN_CHECK_SECONDS = 5.0

# One token check in flight per pool at most: a token that hangs costs one thread, not one
# per beat (the beats meanwhile report it unreachable).
_checks: dict[int, threading.Thread] = {}
_checks_lock = threading.Lock()


def token_reachable(app: Appliance, timeout: float = TOKEN_CHECK_SECONDS) -> bool:
    """Whether a session on the token opens and is logged in (``SessionPool.connect``),
    within ``timeout``; any failure is False, nothing raises. A refused PIN is not tried
    again by the pool (no lockout)."""
    try:
        pool = app.pool
    except Exception:
        return False
    result: list[bool] = []

    def check() -> None:
        try:
            pool.connect()
            result.append(True)
        except Exception:
            result.append(False)

    with _checks_lock:
        running = _checks.get(id(pool))
        if running is not None and running.is_alive():
            return False
        thread = _checks[id(pool)] = threading.Thread(target=check, name="token-check",
                                                      daemon=True)
        thread.start()
    thread.join(timeout)
    return bool(result and result[0])


def _selftests_passed(app: Appliance, db: Any) -> bool | None:
    run = db.execute(select(SelfTestRun.passed).where(SelfTestRun.node_id == app.node_id)
                     .order_by(SelfTestRun.ran_at.desc(), SelfTestRun.id.desc())
                     .limit(1)).scalar_one_or_none()
    return None if run is None else bool(run)


def _values(app: Appliance, started_at: datetime, token_ok: bool, revision: str,
            only: str | None) -> dict[str, Any]:
    svc = app.settings.config.service
    return {"node_id": app.node_id, "version": __version__, "schema_revision": revision,
            "role": app.settings.config.role, "hostname": socket.gethostname()[:255],
            "pid": os.getpid(),
            "api_listen": svc.api_listen if only != "public" else None,
            "http_listen": svc.http_listen if only != "api" else None,
            "started_at": started_at, "last_heartbeat": datetime.now(UTC),
            "token_ok": token_ok}


def beat(app: Appliance, started_at: datetime, *, only: str | None = None) -> None:
    """Write this node's row now (insert or update, one transaction). ``only``: the
    listener this serve runs when it runs one only (``serve --only``)."""
    token_ok = token_reachable(app)
    revision = migrate.current(app.db) or ""
    values = _values(app, started_at, token_ok, revision, only)
    stale_after = app.settings.config.cluster.stale_after_seconds
    details: dict[str, Any] = {"state": "running"}
    with app.db.transaction() as db:
        values["selftests_passed"] = _selftests_passed(app, db)
        old = db.get(ClusterNode, app.node_id)
        created = old is None
        if old is not None and old.hostname != values["hostname"]:
            before = nodes.view(old, stale_after)
            if before.state == "live":
                details["took_over_from"] = {"hostname": old.hostname, "pid": old.pid,
                                             "last_heartbeat": before.last_heartbeat.isoformat()}
                log.warning("node id taken over from another host whose heartbeat is fresh: "
                            "two hosts may be configured with one node_id",
                            extra={"node_id": app.node_id, "previous_host": old.hostname,
                                   "previous_pid": old.pid, "host": values["hostname"]})
        values["details"] = json.dumps(details, sort_keys=True)
        db.execute(_upsert(app.db.dialect, values))
    if created:
        log.info("node joined the cluster (first heartbeat)",
                 extra={"node_id": app.node_id, "version": __version__,
                        "host": values["hostname"]})


def _upsert(dialect: str, values: dict[str, Any]) -> Any:
    """INSERT ... ON CONFLICT (node_id) DO UPDATE, on SQLite and PostgreSQL alike (two
    processes beating for one new node id at once: one inserts, the other updates)."""
    from sqlalchemy.dialects import postgresql, sqlite

    ins: Any = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(ClusterNode)
    ins = ins.values(**values)
    return ins.on_conflict_do_update(
        index_elements=[ClusterNode.node_id],
        set_={k: getattr(ins.excluded, k) for k in values if k != "node_id"})


def mark_stopped(app: Appliance) -> bool:
    """A clean stop: this process's row says ``stopped`` (not if another process has beaten
    for this node id since: its row is not ours to end). Whether a row was marked."""
    stopped = json.dumps({"state": "stopped", "stopped_at": datetime.now(UTC).isoformat()},
                         sort_keys=True)
    with app.db.transaction() as db:
        done = db.execute(update(ClusterNode)
                          .where(ClusterNode.node_id == app.node_id,
                                 ClusterNode.hostname == socket.gethostname()[:255],
                                 ClusterNode.pid == os.getpid())
                          .values(details=stopped))
    return bool(getattr(done, "rowcount", 0))


class Heartbeat(ParentThread):
    """The thread in ``serve``'s parent: an appliance of its own (the parent closes the
    one it started with), a beat every ``cluster.heartbeat_seconds``, the row marked
    stopped at :meth:`stop`. A failing beat is logged once per outage and tried again at
    the next period; nothing here can stop the service."""

    name = "heartbeat"

    def __init__(self, config_path: Path, *, only: str | None = None) -> None:
        super().__init__()
        self.config_path = config_path
        self.only = only
        self.started_at = datetime.now(UTC)
        self._failing = False

    def _run(self) -> None:
        app: Appliance | None = None
        try:
            while not self._stop.is_set():
                try:
                    if app is None:
                        settings = config.load(self.config_path)
                        app = Appliance(settings, wait_seconds=TOKEN_CHECK_SECONDS)
                    interval = app.settings.config.cluster.heartbeat_seconds
                    beat(app, self.started_at, only=self.only)
                except Exception as exc:
                    if not self._failing:
                        log.warning("heartbeat failed; retrying", extra={"error": repr(exc)[:300]})
                    self._failing = True
                    self._stop.wait(5.0 if app is None else interval)
                    continue
                if self._failing:
                    log.info("heartbeat works again")
                self._failing = False
                self._stop.wait(interval)
            if app is not None:
                try:
                    mark_stopped(app)
                except Exception as exc:
                    log.warning("could not mark this node stopped",
                                extra={"error": repr(exc)[:300]})
        finally:
            if app is not None:
                app.close()
