"""Node heartbeats, ``appliance cluster status`` and the schema-upgrade guard.

Real ``appliance serve`` processes write their heartbeat and ``cluster status`` (a real
CLI process) reads it: live with its listeners and token, stopped after a clean stop,
stale after a SIGKILL. In-process, on SQLite and PostgreSQL: the upsert, the token check
against a real SoftHSM token, a node id taken over by another host, and the upgrade
guard.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from appliance import __version__
from appliance.audit.log import Actor
from appliance.cluster import heartbeat, nodes
from appliance.config import ApplianceConfig, Settings
from appliance.ops import schema
from appliance.runtime import Appliance
from appliance.store import migrate
from appliance.store.models import AuditEvent, ClusterNode
from tests.conftest import TestToken, run_cli
from tests.service_helpers import Server, configure, serving

HEARTBEAT, STALE = 1, 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cluster") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    configure(d, "cluster", heartbeat_seconds=HEARTBEAT, stale_after_seconds=STALE)
    run_cli("--dir", str(d), "crl", "publish", check=True)
    return d


def _status(data_dir: Path) -> dict[str, Any]:
    out = run_cli("--dir", str(data_dir), "cluster", "status", "--json", check=True)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _node(doc: dict[str, Any], node_id: str = "node-1") -> dict[str, Any]:
    found = [n for n in doc["nodes"] if n["node_id"] == node_id]
    assert len(found) == 1, doc["nodes"]
    return found[0]


def _wait_state(data_dir: Path, state: str, bound: float) -> dict[str, Any]:
    end = time.monotonic() + bound
    while True:
        doc = _status(data_dir)
        node = [n for n in doc["nodes"] if n["node_id"] == "node-1"]
        if node and node[0]["state"] == state:
            return node[0]
        if time.monotonic() > end:
            raise AssertionError(f"node-1 not {state} within {bound}s: {doc['nodes']}")
        time.sleep(0.3)


def _heartbeat_of(server: Server) -> str:
    with server.db() as db:
        row = db.execute("SELECT last_heartbeat FROM cluster_nodes WHERE node_id = 'node-1'"
                         ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_serving_node_is_live_then_stopped_and_old_rows_are_stale(data_dir: Path) -> None:
    old = datetime.now(UTC) - timedelta(hours=2)
    with serving(data_dir) as server:
        with server.db(readonly=False) as db:  # a node that went silent two hours ago
            db.execute("INSERT INTO cluster_nodes (node_id, version, schema_revision, role, "
                       "hostname, pid, started_at, last_heartbeat, details) VALUES "
                       "('node-old', '0.0.9', '0011', 'online', 'elsewhere', 7, ?, ?, "
                       "'{\"state\": \"running\"}')", (old.isoformat(), old.isoformat()))
        node = _wait_state(data_dir, "live", 10)
        first = _heartbeat_of(server)
        doc = _status(data_dir)
        assert node["api_listen"] == f"127.0.0.1:{server.api_port}"
        assert node["http_listen"] == f"127.0.0.1:{server.http_port}"
        assert node["pid"] == server.proc.pid and node["hostname"] == socket.gethostname()
        assert node["token_reachable"] is True
        assert (node["version"], node["role"]) == (__version__, "online")
        assert node["schema_revision"] == doc["schema"]["newest"] == doc["schema"]["database"]
        assert node["age_seconds"] < STALE
        stale = _node(doc, "node-old")
        assert stale["state"] == "stale" and stale["age_seconds"] > 7000
        # the CRLs published above, per authority, fresh; OCSP responses counted
        crls = {c["authority"]: c for c in doc["crls"]}
        assert set(crls) == {"root", "issuing"}
        assert all(c["number"] >= 1 and not c["overdue"] and c["shard"] is None
                   for c in crls.values())
        assert doc["ocsp"]["responses"] >= 1 and doc["ocsp"]["overdue"] is False
        assert doc["ocsp"]["redis"] == {"configured": False, "error": None,
                                        "reachable": None, "url": None}
        human = run_cli("--dir", str(data_dir), "cluster", "status", check=True).stdout
        assert "node-1 (this)  live" in human and "node-old" in human and "STALE" in human
        assert f"api 127.0.0.1:{server.api_port}" in human
        time.sleep(HEARTBEAT + 0.5)
        assert _heartbeat_of(server) > first  # it keeps beating
    assert not server.stragglers
    stopped = _node(_status(data_dir))
    assert stopped["state"] == "stopped" and stopped["details"]["state"] == "stopped"
    with server.db() as db:  # beats are not audited
        assert not db.execute("SELECT 1 FROM audit_events WHERE event_type LIKE 'cluster%'"
                              ).fetchall()


def test_a_killed_node_turns_stale(data_dir: Path) -> None:
    with serving(data_dir) as server:
        live = _wait_state(data_dir, "live", 10)
        assert live["pid"] == server.proc.pid
        os.killpg(server.proc.pid, signal.SIGKILL)  # no clean stop: nothing marks it
        server.proc.wait(10)
        killed_at = time.monotonic()
        stale = _wait_state(data_dir, "stale", STALE + 10)
        assert time.monotonic() - killed_at > STALE - HEARTBEAT - 0.5
        assert stale["details"]["state"] == "running" and stale["age_seconds"] > STALE


def test_redis_state_is_reported(data_dir: Path) -> None:
    from appliance.cluster.status import redis_state

    up = redis_state("redis://127.0.0.1:6379/0")
    assert up == {"configured": True, "url": "redis://127.0.0.1:6379/0", "reachable": True,
                  "error": None}
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    down = redis_state(f"redis://:pw@127.0.0.1:{port}/0", timeout=0.5)
    assert down["reachable"] is False and down["error"] and "pw" not in json.dumps(down)


# -- in process, on both databases --------------------------------------------------------


@pytest.fixture
def app(db_url: str, tmp_path: Path, token: TestToken) -> Iterator[Appliance]:
    profile = tmp_path / "hsm.yaml"
    profile.write_text(yaml.safe_dump(token.profile().model_dump(mode="json")))
    cfg = ApplianceConfig.model_validate({
        "node_id": "node-a", "database": {"url": db_url}, "hsm": {"profile": str(profile)},
        "cluster": {"heartbeat_seconds": HEARTBEAT, "stale_after_seconds": STALE}})
    a = Appliance(Settings(cfg, tmp_path))
    migrate.upgrade(a.db)
    yield a
    a.close()


def _row(app: Appliance, node_id: str) -> ClusterNode:
    with app.db.sessions() as s:
        row = s.get(ClusterNode, node_id)
    assert row is not None
    return row


def _other(app: Appliance, node_id: str, version: str, age: float, *,
           state: str = "running", host: str = "other-host") -> None:
    at = datetime.now(UTC) - timedelta(seconds=age)
    with app.db.transaction() as s:
        s.merge(ClusterNode(node_id=node_id, version=version, schema_revision="0012",
                            role="online", hostname=host, pid=4242, started_at=at,
                            last_heartbeat=at, details=json.dumps({"state": state})))


def test_beat_inserts_then_updates_and_stop_marks_the_row(app: Appliance) -> None:
    started = datetime.now(UTC)
    heartbeat.beat(app, started)
    first = _row(app, "node-a")
    assert (first.version, first.pid, first.token_ok) == (__version__, os.getpid(), True)
    assert first.schema_revision == migrate.head() and first.api_listen == "127.0.0.1:8443"
    heartbeat.beat(app, started, only="public")
    second = _row(app, "node-a")
    assert second.last_heartbeat > first.last_heartbeat
    assert (second.api_listen, second.http_listen) == (None, "127.0.0.1:8080")
    with app.db.sessions() as s:
        assert s.execute(select(func.count()).select_from(ClusterNode)).scalar_one() == 1
    assert heartbeat.mark_stopped(app)
    assert nodes.read_all(app.db, STALE)[0].state == "stopped"


def test_an_unreachable_token_is_reported_not_raised(app: Appliance, tmp_path: Path,
                                                      token: TestToken) -> None:
    profile = tmp_path / "missing.yaml"
    profile.write_text(yaml.safe_dump(
        token.profile(token={"label": "no-such-token"}).model_dump(mode="json")))
    cfg = app.settings.config.model_copy(
        update={"hsm": app.settings.config.hsm.model_copy(update={"profile": profile})})
    away = Appliance(Settings(cfg, tmp_path))
    try:
        heartbeat.beat(away, datetime.now(UTC))
    finally:
        away.close()
    assert _row(app, "node-a").token_ok is False


def test_a_node_id_taken_over_from_a_fresh_host_is_recorded(app: Appliance) -> None:
    _other(app, "node-a", __version__, 0.5)
    heartbeat.beat(app, datetime.now(UTC))
    row = _row(app, "node-a")
    assert row.hostname == socket.gethostname()
    assert json.loads(row.details)["took_over_from"]["hostname"] == "other-host"
    _other(app, "node-a", __version__, STALE + 5)  # a stale holder: an ordinary restart
    heartbeat.beat(app, datetime.now(UTC))
    assert "took_over_from" not in json.loads(_row(app, "node-a").details)
    _other(app, "node-a", __version__, 0.5)  # taken back by the other host: not ours to end
    assert not heartbeat.mark_stopped(app)
    assert nodes.read_all(app.db, STALE)[0].state == "live"


def test_status_of_an_empty_database(db_url: str, tmp_path: Path) -> None:
    from appliance.cluster.status import gather

    empty = Appliance(Settings(ApplianceConfig.model_validate(
        {"database": {"url": db_url}}), tmp_path))
    try:
        doc = gather(empty)
    finally:
        empty.close()
    assert doc["schema"]["database"] is None and doc["nodes"] == doc["crls"] == []
    assert doc["ocsp"]["responses"] == 0


def _audit_count(app: Appliance) -> int:
    with app.db.sessions() as s:
        return int(s.execute(select(func.count()).select_from(AuditEvent)).scalar_one())


def test_the_upgrade_guard(app: Appliance, monkeypatch: pytest.MonkeyPatch) -> None:
    actor = Actor("test", "operator")
    # A release with a migration this database lacks: no such migration exists yet, so
    # the newest revision is what this code is told it is (the rest is real).
    monkeypatch.setattr(migrate, "head", lambda: "0099")
    _other(app, "node-b", "0.0.9", 0.5)
    before = (_audit_count(app), migrate.current(app.db))
    with pytest.raises(schema.SchemaUpgradeRefused,
                       match=r"node-b \(version 0\.0\.9 on other-host.*stop them or upgrade"):
        schema.upgrade(app, actor)
    assert (_audit_count(app), migrate.current(app.db)) == before
    _other(app, "node-b", __version__, 0.5)  # same version: fine
    schema.upgrade(app, actor)
    _other(app, "node-b", "0.0.9", 0.5, state="stopped")  # stopped cleanly: fine
    schema.upgrade(app, actor)
    _other(app, "node-b", "0.0.9", STALE + 1)  # stale: fine
    schema.upgrade(app, actor)
    _other(app, "node-a", "0.0.9", 0.5)  # this node's own id (an earlier run of it): fine
    schema.upgrade(app, actor)


def test_the_guard_lets_a_database_without_heartbeats_upgrade(app: Appliance) -> None:
    migrate.downgrade(app.db, "0011")  # before cluster_nodes existed: no node is known
    assert schema.upgrade(app, Actor("test", "operator")) == migrate.head()
    with app.db.sessions() as s:
        events = s.execute(select(AuditEvent.event_type)).scalars().all()
    assert "schema.upgraded" in events
