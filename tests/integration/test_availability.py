"""The API under hostile clients and a locked database (issue 12), on a real server.

Slowloris connections (TLS, real sockets, reopened as soon as the server cuts them) must
cost the API no thread: health answers within 100 ms at the 99th percentile and every
sign succeeds while 200 of them are open. Each read limit (head, body rate, handshake)
cuts its connection; a client address cannot hold more than its share of connections.
A database locked for 40 s: health stays fast, signs answer 503 with Retry-After by their
deadline, beyond the wait queue at once, and signing works again after.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import ssl
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.ceremony_helpers import clone_data_dir
from tests.conftest import run_cli
from tests.service_helpers import Server, configure, make_csr, serving_two_workers
from tests.slow_clients import SlowClients

# A health check that waited for a request thread would wait for a sign (hundreds of ms
# at least) or a lock (seconds): 500 ms at the 99th percentile tells starvation from
# scheduling noise on a shared two-core machine. The 100 ms target is measured by
# bench/api_load.py, not asserted here.
STARVED = 0.500


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("availability") / "base"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


@pytest.fixture
def data(base: Path, tmp_path: Path) -> Path:
    return clone_data_dir(base, tmp_path / "data")


class HealthPoller:
    """GET /1.0/health every ``every`` seconds on one keep-alive connection; latencies."""

    def __init__(self, server: Server, path: str = "/1.0/health", every: float = 0.05,
                 fresh: bool = False) -> None:
        self.server, self.path, self.every, self.fresh = server, path, every, fresh
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthPoller:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(30)

    def _run(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                if self.fresh:  # a new connection each time (no keep-alive close race)
                    session = requests.Session()
                r = session.get(self.server.api + self.path, verify=str(self.server.roots),
                                timeout=10)
                self.statuses.append(r.status_code)
            except requests.RequestException:
                self.statuses.append(0)
            self.latencies.append(time.monotonic() - t)
            self._stop.wait(self.every)

    def p99(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98]


def _sign(server: Server, name: str, csr: str,
          session: requests.Session | None = None) -> tuple[int, dict[str, object], float,
                                                         str | None]:
    t = time.monotonic()
    try:
        r = (session or requests).post(server.api + "/1.0/sign",
                                       json={"csr": csr, "ott": server.token(name)},
                                       verify=str(server.roots), timeout=60)
    except requests.RequestException as exc:
        return 0, {"error": type(exc).__name__}, time.monotonic() - t, None
    return r.status_code, r.json(), time.monotonic() - t, r.headers.get("Retry-After")


def _csrs(work: Path, n: int, prefix: str = "h") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}.example.com", make_csr(work, f"DNS:{prefix}{i}.example.com",
                                                   cn=f"{prefix}{i}.example.com"))
            for i in range(n)]


def test_200_slowloris_connections_cost_the_api_nothing(data: Path, tmp_path: Path) -> None:
    csrs = _csrs(tmp_path, 30)
    with serving_two_workers(data, rate_limit_per_minute=0, header_timeout_seconds=5) as server:
        assert server.get("/1.0/health").status_code == 200
        with SlowClients("127.0.0.1", server.api_port, server.roots, count=200) as slow:
            assert slow.open_now == 200 and slow.failed == 0
            session = requests.Session()
            with HealthPoller(server) as health, HealthPoller(server, "/1.0/ready") as ready:
                results = [_sign(server, n, c, session) for n, c in csrs]
                time.sleep(max(0.0, 7 - sum(r[2] for r in results)))  # past a head timeout
            still_open = slow.open_now
        print(f"slowloris: {len(health.latencies)} health polls p99 {health.p99() * 1000:.1f} ms "
              f"max {max(health.latencies) * 1000:.1f} ms; {len(results)} signs, slowest "
              f"{max(r[2] for r in results) * 1000:.0f} ms; slow connections opened "
              f"{slow.opened}, cut {slow.cut}, open at the end {still_open}")
        assert still_open >= 190, still_open  # the attack held throughout
        assert [st for st, *_ in results] == [201] * len(csrs), results
        assert len(health.latencies) > 100 and set(health.statuses) == {200}
        assert health.p99() < STARVED, (health.p99(), max(health.latencies))
        assert len(ready.latencies) > 100 and set(ready.statuses) == {200}
        assert ready.p99() < STARVED, (ready.p99(), max(ready.latencies))
        # The server did cut them: each head within its 5 s, each body for its rate.
        assert slow.cut >= 100, slow.cut
        assert any(a.startswith(b"HTTP/1.1 408 ") for a in slow.answers), slow.answers[:5]
        assert server.get("/1.0/health").status_code == 200


def _tls(server: Server) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=str(server.roots))
    raw = socket.create_connection(("127.0.0.1", server.api_port), timeout=15)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _read_until_closed(sock: socket.socket, limit: float = 15) -> tuple[bytes, float]:
    t = time.monotonic()
    out = b""
    sock.settimeout(limit)
    try:
        while chunk := sock.recv(65536):
            out += chunk
    except (OSError, ssl.SSLError):
        pass
    return out, time.monotonic() - t


def test_each_read_limit_cuts_its_connection(data: Path) -> None:
    with serving_two_workers(data, header_timeout_seconds=2, handshake_timeout_seconds=2,
                 body_min_bytes_per_second=100, keepalive_seconds=2) as server:
        host = f"127.0.0.1:{server.api_port}"

        def head() -> tuple[bytes, float]:  # a head that never ends
            with _tls(server) as s:
                s.sendall(b"GET /1.0/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
                return _read_until_closed(s)

        def body() -> tuple[bytes, float]:  # far slower than 100 octets a second
            with _tls(server) as s:
                s.sendall(b"POST /1.0/sign HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Length: 5000\r\nContent-Type: application/json\r\n\r\n{")
                return _read_until_closed(s)

        def no_hello() -> tuple[bytes, float]:  # TCP, and never a ClientHello
            with socket.create_connection(("127.0.0.1", server.api_port), timeout=15) as raw:
                return _read_until_closed(raw)

        def idle() -> tuple[bytes, float]:  # an answered request, then nothing
            with _tls(server) as s:
                s.sendall(f"GET /1.0/health HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                return _read_until_closed(s)

        with ThreadPoolExecutor(4) as pool:  # each on its own connection, at once
            cases = {f.__name__: pool.submit(f) for f in (head, body, no_hello, idle)}
            # Expect: 100-continue is answered before the body is sent (curl waits 1 s
            # without).
            with _tls(server) as s:
                s.sendall(f"POST /1.0/sign HTTP/1.1\r\nHost: {host}\r\nContent-Length: 2\r\n"
                          "Content-Type: application/json\r\nExpect: 100-continue\r\n\r\n"
                          .encode())
                s.settimeout(5)
                assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
                s.sendall(b"{}")
                assert b"HTTP/1.1 400 " in s.recv(65536)
            got = {name: f.result() for name, f in cases.items()}
        out, took = got["head"]  # 408 after the head timeout
        assert out.startswith(b"HTTP/1.1 408 ") and 1.0 < took < 5, (out[:60], took)
        out, took = got["body"]  # cut once the 5 s grace has passed
        assert out.startswith(b"HTTP/1.1 408 ") and 4 < took < 9, (out[:60], took)
        out, took = got["no_hello"]  # ended after the handshake timeout
        assert out == b"" and 1.0 < took < 5, (out, took)
        out, took = got["idle"]  # closed after keepalive_seconds
        assert out.startswith(b"HTTP/1.1 200 ") and 1.0 < took < 5, (out[:60], took)


def test_a_client_address_holds_at_most_its_connections(data: Path) -> None:
    with serving_two_workers(data, workers=1, max_connections_per_address=6) as server:
        held = [socket.create_connection(("127.0.0.1", server.api_port), timeout=5)
                for _ in range(6)]
        try:
            time.sleep(0.3)
            with pytest.raises((requests.ConnectionError, requests.exceptions.SSLError)):
                requests.get(server.api + "/1.0/health", verify=str(server.roots), timeout=5)
        finally:
            for s in held:
                s.close()
        time.sleep(0.3)
        assert server.get("/1.0/health").status_code == 200


def _lock(db_file: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(db_file, timeout=5, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("UPDATE audit_heads SET seq = seq WHERE 0")  # hold the write lock
    return conn


def test_database_locked_40s_health_fast_signs_503_by_their_deadline(data: Path,
                                                                     tmp_path: Path) -> None:
    deadline = 4.0
    csrs = _csrs(tmp_path, 40)
    with serving_two_workers(data, rate_limit_per_minute=0, workers=1, threads=2, queue_limit=2,
                 deadline_seconds=deadline, retry_after_seconds=7) as server:
        assert _sign(server, *csrs[0])[0] == 201
        lock = _lock(server.data_dir / "appliance.db")
        locked_at = time.monotonic()
        try:
            with HealthPoller(server) as health, HealthPoller(server, "/1.0/ready") as ready:
                # A burst: two run (and wait on the lock), two wait for a thread, the rest
                # are refused at once.
                with ThreadPoolExecutor(12) as pool:
                    burst = list(pool.map(lambda nc: _sign(server, *nc), csrs[1:13]))
                # Then clients one after another, for the rest of the 40 s.
                later = []
                i = 13
                while time.monotonic() - locked_at < 40:
                    later.append(_sign(server, *csrs[i]))
                    i += 1
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        for st, body, took, retry in [*burst, *later]:
            assert st == 503, (st, body)
            assert retry == "7", retry
            assert body["error"] in ("busy", "database_error"), body
            # One deadline from admission for the whole request (queue wait, each lock
            # wait), plus the short floor a late request gets to write its refusal.
            assert took < deadline + 1.5, (took, body)
        refused_at_once = [b for st, b, took, _ in burst if b["error"] == "busy" and took < 1.5]
        print(f"database locked 40 s: {len(burst)} burst ({len(refused_at_once)} refused at "
              f"once), {len(later)} later, slowest answer "
              f"{max(t for *_, t, _ in [*burst, *later]):.1f} s (deadline {deadline:g} s); "
              f"health p99 {health.p99() * 1000:.1f} ms over {len(health.latencies)} polls")
        assert len(refused_at_once) >= 6, burst
        assert any(b["error"] == "database_error" for _, b, _, _ in later)
        assert health.p99() < STARVED, (health.p99(), max(health.latencies))
        assert set(health.statuses) == {200}
        # Readiness answers as fast (it reads state its probes keep); a write lock does not
        # stop SQLite's WAL readers, so it may well say ready.
        assert ready.p99() < STARVED, (ready.p99(), max(ready.latencies))
        assert set(ready.statuses) <= {200, 503}
        # The lock is gone: signing works at once, nothing was left reserved.
        after = [_sign(server, *nc) for nc in csrs[i:i + 3]]
        assert [st for st, *_ in after] == [201] * 3, after
        with server.db() as db:
            assert db.execute("SELECT COUNT(*) FROM certificates WHERE status = 'reserved'"
                              ).fetchone()[0] == 0
        # The refusals at once are counted (published within a second).
        busy = 0.0
        end = time.monotonic() + 5
        while time.monotonic() < end and busy < len(refused_at_once):
            text = server.get("/metrics").text
            busy = sum(float(line.split()[1]) for line in text.splitlines()
                       if line.startswith("appliance_api_busy_total "))
            time.sleep(0.3)
        assert busy >= len(refused_at_once), text


def _wait_for_log(server: Server, text: str, count: int, timeout: float = 30) -> None:
    """Until ``text`` appears ``count`` times in the serve log (once per listener group)."""
    end = time.monotonic() + timeout
    while server.log.read_text(errors="replace").count(text) < count:
        assert time.monotonic() < end, f"{text!r} x{count} not logged in {timeout}s"
        assert server.proc.poll() is None, server.log.read_text(errors="replace")
        time.sleep(0.1)


RELOADED = "reloaded: the new workers serve"


def test_sighup_replaces_the_workers_without_dropping_a_request(data: Path) -> None:
    with serving_two_workers(data) as server:
        before = server.api_workers()
        assert len(before) == 2
        with HealthPoller(server, every=0.02, fresh=True) as health:
            time.sleep(1)
            server.proc.send_signal(signal.SIGHUP)
            # Both groups (API and public listener) say so once every new worker serves.
            _wait_for_log(server, RELOADED, 2)
            end = time.monotonic() + 20  # the old workers finish what they have, then go
            while set(server.api_workers()) & set(before) and time.monotonic() < end:
                time.sleep(0.1)
            time.sleep(0.5)
        after = server.api_workers()
        assert len(after) == 2 and not set(after) & set(before), (before, after)
        assert set(health.statuses) == {200}, health.statuses
        assert server.proc.poll() is None
        assert server.get("/1.0/health").status_code == 200
        # A configuration that no longer loads: the reload is refused, the workers stay.
        cfg = server.data_dir / "appliance.yaml"
        good = cfg.read_text()
        cfg.write_text(good + "service: {workers: many}\n")
        try:
            server.proc.send_signal(signal.SIGHUP)
            _wait_for_log(server, "reload refused", 1)
            time.sleep(1)
            assert server.api_workers() == after and server.proc.poll() is None
            assert server.get("/1.0/health").status_code == 200
        finally:
            cfg.write_text(good)
        # Another database: refused too (its schema is brought up to date at start only).
        other = server.data_dir / "other.db"
        configure(server.data_dir, "database", url=f"sqlite:///{other}")
        try:
            server.proc.send_signal(signal.SIGHUP)
            _wait_for_log(server, "database.url changed", 1)
            time.sleep(0.5)
            assert server.api_workers() == after and not other.exists()
        finally:
            cfg.write_text(good)


@pytest.mark.postgres
def test_postgresql_row_lock_answers_503_by_the_deadline(
        tmp_path: Path, pg_available: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: ``lock_timeout`` is the deadline for a lock another session holds (an
    operator's transaction left open); health stays fast, signing comes back after."""
    from sqlalchemy import create_engine, text

    from tests.conftest import create_pg_database, drop_pg_database, require_pg

    require_pg(pg_available)
    url = create_pg_database()
    engine = create_engine(url)
    deadline = 3.0
    try:
        monkeypatch.setenv("APPLIANCE_DATABASE_URL", url)
        node = tmp_path / "node"
        run_cli("quickstart", "--dir", str(node), check=True)
        csrs = _csrs(tmp_path, 8, "pg")
        with serving_two_workers(node, rate_limit_per_minute=0,
                                 deadline_seconds=deadline) as server:
            assert _sign(server, *csrs[0])[0] == 201
            with engine.connect() as holder, HealthPoller(server) as health:
                holder.execute(text("BEGIN"))
                holder.execute(text("LOCK TABLE audit_heads IN ACCESS EXCLUSIVE MODE"))
                during = [_sign(server, *nc) for nc in csrs[1:4]]
                holder.execute(text("ROLLBACK"))
            after = [_sign(server, *nc) for nc in csrs[4:]]
        for st, body, took, retry in during:
            assert st == 503 and body["error"] == "database_error", (st, body)
            assert retry is not None and took < deadline + 1.5, (took, body)
        assert [st for st, *_ in after] == [201] * len(after), after
        assert health.p99() < STARVED and set(health.statuses) == {200}
    finally:
        engine.dispose()
        drop_pg_database(url)
