"""Faults the service must survive without a restart and without a certificate it does not know.

Real faults on a real server: gunicorn API workers SIGKILLed while 30 threads sign, the
SQLite database locked by another process, the SoftHSM token's files moved away and back.
After each: every certificate a client received is stored and audited, no serial repeats,
no reservation stays open (a killed request's ends ``failed``, audited), refusals were
clear 503s, and signing works again by itself.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from tests.ceremony_helpers import clone_data_dir
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, serving_two_workers

RESERVATION_TIMEOUT = 5
SWEEP_PERIOD = RESERVATION_TIMEOUT / 2  # min(30 s, half the timeout)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("faults") / "base"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


@pytest.fixture
def server(base: Path, tmp_path: Path) -> Iterator[Server]:
    data = clone_data_dir(base, tmp_path / "data")
    cfg = data / "appliance.yaml"
    doc = yaml.safe_load(cfg.read_text())
    doc["database"]["busy_timeout_seconds"] = 2  # a locked database refuses within 2 s
    cfg.write_text(yaml.safe_dump(doc, sort_keys=False))
    with serving_two_workers(data, rate_limit_per_minute=0, threads=8,
                 reservation_timeout_seconds=RESERVATION_TIMEOUT) as s:
        yield s


def _csrs(work: Path, n: int) -> list[tuple[str, str]]:
    out = []
    for i in range(n):
        name = f"h{i}.example.com"
        out.append((name, make_csr(work, f"DNS:{name}", cn=name)))
    return out


def _sign(server: Server, name: str, csr: str) -> tuple[int, dict[str, object] | str]:
    try:
        r = requests.post(server.api + "/1.0/sign", json={"csr": csr, "ott": server.token(name)},
                          verify=str(server.roots), timeout=60)
    except requests.RequestException as exc:  # a killed worker drops its connections
        return 0, type(exc).__name__
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def _consistent(server: Server, answered: list[dict[str, object]]) -> dict[str, int]:
    """Every answered certificate is stored, issued and audited; serials unique; nothing
    left reserved; every failed reservation audited."""
    rows = server.certificate_rows()
    serials = [str(a["serial"]) for a in answered]
    assert len(serials) == len(set(serials))
    for serial in serials:
        assert rows[serial]["status"] == "issued"
    issued_events = {e["object_ids"]["serial"] for e in server.events("certificate.issued")}
    assert {s for s, r in rows.items() if r["status"] == "issued"} <= issued_events
    assert set(serials) <= issued_events
    failed_audited = {e["object_ids"]["serial"] for e in server.events()
                      if e["event_type"] in ("certificate.failed",
                                             "certificate.reservation.abandoned")}
    statuses = [r["status"] for r in rows.values()]
    assert "reserved" not in statuses, [s for s, r in rows.items() if r["status"] == "reserved"]
    for s, r in rows.items():
        if r["status"] == "failed":
            assert s in failed_audited
    assert server.cli("audit", "verify").returncode == 0
    return {k: statuses.count(k) for k in set(statuses)}


def _wait_reconciled(server: Server, since: float | None = None) -> None:
    """Reservations of killed requests end by the sweeper alone, with nothing sent to the
    server meanwhile: within the sweeper's period of becoming due (the newest was made
    before ``since``), plus a little for the sweep's own work and a replaced worker's start."""
    end = (since or time.monotonic()) + RESERVATION_TIMEOUT + SWEEP_PERIOD + 3
    while True:
        with server.db() as db:
            left = db.execute("SELECT serial_hex FROM certificates WHERE status = 'reserved'"
                              ).fetchall()
        if not left:
            return
        if time.monotonic() > end:
            raise AssertionError(f"reservations left open: {[r[0] for r in left]}")
        time.sleep(0.2)


def test_worker_killed_during_concurrent_signing(server: Server, tmp_path: Path) -> None:
    csrs = _csrs(tmp_path, 120)
    workers = server.api_workers()
    assert len(workers) == 2
    results: list[tuple[int, object]] = []
    with ThreadPoolExecutor(30) as pool:
        futures = [pool.submit(_sign, server, n, c) for n, c in csrs]
        while sum(f.done() for f in futures) < 30:
            time.sleep(0.05)
        os.kill(workers[0], signal.SIGKILL)
        results = [f.result() for f in futures]
    last_request = time.monotonic()
    answered = [b for st, b in results if st == 201 and isinstance(b, dict)]
    others = [(st, b) for st, b in results if st != 201]
    assert answered, "nothing was issued"
    for st, body in others:  # dropped by the kill, or a clear refusal: never a 500
        assert st in (0, 503), (st, body)
    # Nothing is sent to the server from here on: the sweeper ends them on its own clock.
    _wait_reconciled(server, since=last_request)
    listed = server.cli("cert", "list", "--status", "reserved", "--json")
    assert json.loads(listed.stdout) == []
    counts = _consistent(server, answered)
    assert counts.get("issued", 0) >= len(answered)
    # Each ended reservation is failed and audited exactly once, though both workers'
    # sweepers looked for it.
    rows = server.certificate_rows()
    abandoned = [e["object_ids"]["serial"] for e in
                 server.events("certificate.reservation.abandoned")]
    assert len(abandoned) == len(set(abandoned)), abandoned
    for serial in abandoned:
        assert rows[serial]["status"] == "failed"
    print(f"kill: {len(answered)} issued, {len(others)} dropped, "
          f"{len(abandoned)} reservation(s) swept")
    # The killed worker was replaced and signing goes on.
    assert workers[0] not in server.api_workers()
    name, csr = _csrs(tmp_path / "after", 1)[0]
    assert _sign(server, name, csr)[0] == 201


def test_a_reservation_whose_process_died_ends_failed_and_audited(server: Server,
                                                                 tmp_path: Path) -> None:
    """Deterministic: a process runs the real pipeline and is SIGKILLed right after its
    reservation committed (the one point a worker kill cannot be aimed at from outside)."""
    name = "killed.example.com"
    csr = make_csr(tmp_path, f"DNS:{name}", cn=name)
    (tmp_path / "req.csr").write_text(csr)
    script = textwrap.dedent(f"""
        import os, signal
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
        def reserve_then_die(*a, **kw):
            original(*a, **kw)
            os.kill(os.getpid(), signal.SIGKILL)
        issuer._reserve = reserve_then_die
        ctx, claims = authorize.one_time_token(app, {server.token(name)!r})
        csr = load_csr(open({str(tmp_path / "req.csr")!r}).read())
        issuer.issue(SignRequest(csr=csr, provisioner=ctx, requester="test:killed",
                                          credential_names=list(claims.sans)))
    """)
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    with server.db() as db:
        (serial,) = [r[0] for r in db.execute(
            "SELECT serial_hex FROM certificates WHERE status = 'reserved'").fetchall()]
    time.sleep(RESERVATION_TIMEOUT + 1)
    _wait_reconciled(server)
    assert server.certificate_rows()[serial]["status"] == "failed"
    (event,) = [e for e in server.events("certificate.reservation.abandoned")
                if e["object_ids"]["serial"] == serial]
    assert event["outcome"] == "failure"
    _consistent(server, [])


def test_database_locked_refuses_with_503_then_recovers(server: Server, tmp_path: Path) -> None:
    csrs = _csrs(tmp_path, 12)
    name, csr = csrs[0]
    assert _sign(server, name, csr)[0] == 201
    conn = sqlite3.connect(server.data_dir / "appliance.db", timeout=5, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE audit_heads SET seq = seq WHERE 0")  # hold the write lock
    locked_at = time.monotonic()
    try:
        with ThreadPoolExecutor(6) as pool:
            during = list(pool.map(lambda nc: _sign(server, *nc), csrs[1:7]))
        health = requests.get(server.api + "/1.0/health", verify=str(server.roots), timeout=10)
        assert health.status_code == 200
        assert time.monotonic() - locked_at < 30  # refused within the busy timeout, not hung
    finally:
        conn.execute("ROLLBACK")
        conn.close()
    for st, body in during:
        assert st == 503, (st, body)
        assert isinstance(body, dict) and body["error"] == "database_error"
        assert "nothing was issued" in str(body["message"])
    after = [_sign(server, n, c) for n, c in csrs[7:]]
    assert all(st == 201 for st, _ in after), after
    _wait_reconciled(server)
    answered = [b for st, b in after if isinstance(b, dict)]
    _consistent(server, answered)


def test_token_gone_then_back_recovers_without_restart(server: Server, tmp_path: Path) -> None:
    csrs = _csrs(tmp_path, 8)
    assert _sign(server, *csrs[0])[0] == 201
    tokens = server.data_dir / "softhsm" / "tokens"
    away = tokens.with_name("tokens.away")
    os.rename(tokens, away)
    try:
        during = [_sign(server, *nc) for nc in csrs[1:4]]
    finally:
        os.rename(away, tokens)
    for st, body in during:
        assert st == 503, (st, body)
        assert isinstance(body, dict) and body["error"] in ("hsm_unavailable", "key_not_found",
                                                            "hsm_error")
    back_at = time.monotonic()
    recovered = None
    for nc in csrs[4:]:
        st, body = _sign(server, *nc)
        if st == 201:
            recovered = time.monotonic() - back_at
            break
        time.sleep(2)
    assert recovered is not None, "signing did not come back without a restart"
    # Every worker comes back, each on its own within its reconnect interval (5 s): then
    # six signs in a row (both workers) succeed.
    streak, seen, i = 0, [], 0
    end = time.monotonic() + 30
    while streak < 6 and time.monotonic() < end:
        i += 1
        st = _sign(server, f"w{i}.example.com",
                   make_csr(tmp_path / "w", f"DNS:w{i}.example.com"))[0]
        seen.append(st)
        streak = streak + 1 if st == 201 else 0
        if st != 201:
            time.sleep(1)
    assert streak == 6, seen
    _wait_reconciled(server)
    _consistent(server, [])
