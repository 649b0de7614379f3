"""The reservation sweeper on a real server: abandoned reservations end ``failed`` by
themselves, each audited exactly once however many sweepers and operators race for it,
and a request too slow for its reservation fails closed instead of issuing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import yaml

from tests.ceremony_helpers import clone_data_dir
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, serving_two_workers

RESERVATION_TIMEOUT = 5
SWEEP_PERIOD = RESERVATION_TIMEOUT / 2


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("sweeper") / "base"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


@pytest.fixture
def server(base: Path, tmp_path: Path) -> Iterator[Server]:
    data = clone_data_dir(base, tmp_path / "data")
    with serving_two_workers(data, rate_limit_per_minute=0,
                 reservation_timeout_seconds=RESERVATION_TIMEOUT) as s:
        yield s


def _issue_one(server: Server, tmp_path: Path, name: str) -> str:
    r = server.sign(make_csr(tmp_path, f"DNS:{name}", cn=name), server.token(name))
    assert r.status_code == 201, r.text
    return str(r.json()["serial"])


def _abandoned(server: Server) -> list[str]:
    return [str(e["object_ids"]["serial"])
            for e in server.events("certificate.reservation.abandoned")]


def _wait_no_reserved(server: Server, bound: float) -> None:
    end = time.monotonic() + bound
    while time.monotonic() < end:
        with server.db() as db:
            if not db.execute("SELECT 1 FROM certificates WHERE status = 'reserved'"
                              ).fetchone():
                return
        time.sleep(0.2)
    raise AssertionError("reservations left open")


def test_racing_sweepers_and_operators_end_each_reservation_once(server: Server,
                                                                 tmp_path: Path) -> None:
    model = _issue_one(server, tmp_path, "model.example.com")
    # Reservations an hour old, as killed requests would have left them, written beside
    # the real one (same authority and provisioner).
    serials = [f"7e57{i:036x}" for i in range(60)]
    with server.db(readonly=False) as db:
        row = db.execute("SELECT * FROM certificates WHERE serial_hex = ?", (model,)
                         ).fetchone()
        old = (datetime.fromisoformat(row["reserved_at"]) - timedelta(hours=1)
               ).isoformat(sep=" ", timespec="microseconds")
        db.executemany(
            "INSERT INTO certificates (serial_hex, authority_id, provisioner_id, "
            "provisioner_name, requester, template, status, subject, sans, "
            "request_context, reserved_at) VALUES (?, ?, ?, ?, 'test:killed', ?, "
            "'reserved', '', '[]', '{}', ?)",
            [(s, row["authority_id"], row["provisioner_id"], row["provisioner_name"],
              row["template"], old) for s in serials])
    # Three operators at once, while both API workers' sweepers look too.
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda _: server.cli("cert", "reconcile", "--json"), range(3)))
    by_cli = sum(json.loads(r.stdout)["ended"] for r in runs)
    _wait_no_reserved(server, SWEEP_PERIOD + 5)
    ended = _abandoned(server)
    assert sorted(ended) == sorted(serials)  # every one, each exactly once
    assert by_cli <= len(serials)
    rows = server.certificate_rows()
    assert all(rows[s]["status"] == "failed" for s in serials)
    assert rows[model]["status"] == "issued"
    listed = server.cli("cert", "list", "--status", "reserved", "--json")
    assert json.loads(listed.stdout) == []
    assert server.cli("audit", "verify").returncode == 0
    # A serial once reserved is never reserved again (the row keeps it; it is unique).
    with server.db(readonly=False) as db, pytest.raises(sqlite3.IntegrityError):
        db.execute("INSERT INTO certificates (serial_hex, authority_id, provisioner_name, "
                   "requester, template, status, reserved_at) "
                   "VALUES (?, ?, 'x', 'x', 'x', 'reserved', ?)",
                   (serials[0], row["authority_id"], old))
    print(f"operators ended {by_cli}, sweepers {len(serials) - by_cli}")


def test_a_request_slower_than_its_reservation_fails_closed(server: Server,
                                                            tmp_path: Path) -> None:
    """The real pipeline in a process that stops right after its reservation committed,
    until the server's sweeper has ended it; then it carries on, signs, and must not
    store (nor hand out) a certificate."""
    name = "slow.example.com"
    (tmp_path / "req.csr").write_text(make_csr(tmp_path, f"DNS:{name}", cn=name))
    db_file = server.data_dir / "appliance.db"
    script = textwrap.dedent(f"""
        import sqlite3, sys, time
        from appliance import config
        from appliance.runtime import Appliance
        from appliance.issuance import pipeline
        from appliance.issuance.csr import load_csr
        from appliance.issuance.request import SignRequest
        from appliance.provisioners import authorize
        from pathlib import Path
        app = Appliance(config.load(Path({str(server.data_dir / "appliance.yaml")!r})))
        issuer = pipeline.Issuer(app)
        original = issuer._reserve
        def reserve_then_stall(*a, **kw):
            row_id = original(*a, **kw)
            print("reserved", flush=True)
            db = sqlite3.connect("file:{db_file}?mode=ro", uri=True)
            end = time.monotonic() + 60
            while time.monotonic() < end:
                st = db.execute("SELECT status FROM certificates WHERE id = ?",
                                (row_id,)).fetchone()[0]
                if st != "reserved":
                    break
                time.sleep(0.2)
            print("swept:", st, flush=True)
            return row_id
        issuer._reserve = reserve_then_stall
        ctx, claims = authorize.one_time_token(app, {server.token(name)!r})
        csr = load_csr(open({str(tmp_path / "req.csr")!r}).read())
        try:
            issuer.issue(SignRequest(csr=csr, provisioner=ctx,
                                              requester="test:slow",
                                              credential_names=list(claims.sans)))
        except Exception as exc:
            print("refused:", type(exc).__name__, exc, flush=True)
            sys.exit(3)
        print("ISSUED", flush=True)
    """)
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=180, check=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "swept: failed" in proc.stdout and "reservation is gone" in proc.stdout, proc.stdout
    (serial,) = [s for s, r in server.certificate_rows().items()
                 if r["requester"] == "test:slow"]
    row = server.certificate_rows()[serial]
    assert row["status"] == "failed" and row["der"] is None
    assert _abandoned(server) == [serial]
    assert serial not in {e["object_ids"]["serial"] for e in server.events("certificate.issued")}
    assert server.cli("audit", "verify").returncode == 0


@pytest.mark.postgres
def test_two_nodes_on_postgresql_end_each_reservation_once(
        tmp_path: Path, pg_available: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two nodes (two API workers each, so four sweepers) share one PostgreSQL database
    and race for the same abandoned reservations."""
    from sqlalchemy import create_engine, text

    from tests.conftest import create_pg_database, drop_pg_database, require_pg

    require_pg(pg_available)
    url = create_pg_database()
    engine = create_engine(url)
    try:
        monkeypatch.setenv("APPLIANCE_DATABASE_URL", url)  # quickstart, serve and the CLI
        one = tmp_path / "node1"
        run_cli("quickstart", "--dir", str(one), check=True)
        two = clone_data_dir(one, tmp_path / "node2")
        cfg = two / "appliance.yaml"
        doc = yaml.safe_load(cfg.read_text())
        doc["node_id"] = "node-2"
        cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
        with serving_two_workers(one, reservation_timeout_seconds=RESERVATION_TIMEOUT) as first, \
                serving_two_workers(two, reservation_timeout_seconds=RESERVATION_TIMEOUT):
            model = _issue_one(first, tmp_path, "model.example.com")
            # Enough for several batches (RECONCILE_BATCH) that take a while each: the
            # sweepers that wake meanwhile read rows another one is ending.
            serials = [f"7e57{i:036x}" for i in range(600)]
            with engine.begin() as db:
                row = db.execute(text("SELECT * FROM certificates WHERE serial_hex = :s"),
                                 {"s": model}).mappings().one()
                db.execute(text(
                    "INSERT INTO certificates (serial_hex, authority_id, provisioner_id, "
                    "provisioner_name, requester, template, status, subject, sans, "
                    "request_context, reserved_at) VALUES (:s, :a, :p, :pn, 'test:killed', "
                    ":t, 'reserved', '', '[]', '{}', now() - interval '1 hour')"),
                    [{"s": s, "a": row["authority_id"], "p": row["provisioner_id"],
                      "pn": row["provisioner_name"], "t": row["template"]} for s in serials])
            # Nothing sent to either node: their sweepers race on their own clocks.
            end = time.monotonic() + 120
            while time.monotonic() < end:
                with engine.connect() as db:
                    left = db.execute(text("SELECT COUNT(*) FROM certificates "
                                           "WHERE status = 'reserved'")).scalar()
                if not left:
                    break
                time.sleep(0.2)
            assert left == 0
            with engine.connect() as db:
                events = db.execute(text(
                    "SELECT node_id, object_ids FROM audit_events "
                    "WHERE event_type = 'certificate.reservation.abandoned'")).all()
                failed = db.execute(text("SELECT COUNT(*) FROM certificates "
                                         "WHERE status = 'failed'")).scalar()
            ended = [json.loads(o)["serial"] if isinstance(o, str) else o["serial"]
                     for _, o in events]
            assert sorted(ended) == sorted(serials)
            assert failed == len(serials)
            listed = first.cli("cert", "list", "--status", "reserved", "--json")
            assert json.loads(listed.stdout) == []
            assert "intact" in first.cli("audit", "verify").stdout
            nodes = [e[0] for e in events]
            print(f"ended by node: { {n: nodes.count(n) for n in set(nodes)} }")
    finally:
        engine.dispose()
        drop_pg_database(url)
