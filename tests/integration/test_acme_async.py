"""ACME validation in the background (RFC 8555 §7.5.1), against ``appliance serve``.

A challenge POST claims the challenge and hands the attempt to a bounded pool of threads;
it waits ``acme.validation_wait_seconds`` for the outcome and otherwise answers
"processing". The http-01 target here is a real HTTP server that answers only when the
test releases it, so the test decides when an attempt can end. The API runs one worker
with a pool of one slot, so "the pool is full" is a state the test can reach; the worker
that holds an attempt is really killed (SIGKILL) to leave a challenge "processing".
Debian's certbot and lego get certificates through validations slower than the wait, so
they see "processing" and poll, as against any RFC 8555 server.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy

from tests.acme_client import Client
from tests.acme_dns import DnsServer
from tests.conftest import (
    create_pg_database,
    drop_pg_database,
    require_pg,
    run_cli,
)
from tests.service_helpers import Server, configure, free_port, serving

TIMEOUT = 4  # acme.validation_timeout_seconds here
STALE_AFTER = TIMEOUT + 10  # service.STALE_MARGIN_SECONDS


@dataclass
class Target:
    """An http-01 responder held closed until ``gate`` is set."""

    port: int
    answers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event = field(default_factory=threading.Event)
    peers: list[int] = field(default_factory=list)  # the validating side's source ports
    hits: int = 0
    # Unknown tokens go to a real client's own http-01 server on this port, answered
    # after ``delay`` seconds (longer than the request waits: the client must poll).
    upstream: int | None = None
    delay: float = 0.0

    def serve(self) -> http.server.ThreadingHTTPServer:
        target = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                target.hits += 1
                target.peers.append(self.client_address[1])
                target.gate.wait(30)
                body = target.answers.get(self.path.rsplit("/", 1)[-1], "").encode()
                if not body and target.upstream:
                    time.sleep(target.delay)
                    forward = urllib.request.Request(  # lego checks the Host it was sent
                        f"http://127.0.0.1:{target.upstream}{self.path}",
                        headers={"Host": self.headers.get("Host", "")})
                    with contextlib.suppress(OSError), urllib.request.urlopen(
                            forward, timeout=10) as r:
                        body = r.read()
                try:
                    self.send_response(200 if body else 404)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the validating process was killed meanwhile
                    pass

            def log_message(self, *a: Any) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv


@dataclass
class Env:
    server: Server
    target: Target
    dns: DnsServer
    pg_url: str | None  # the database is on PostgreSQL

    def client(self) -> Client:
        c = Client(f"{self.server.api}/acme/acme/directory", self.server.roots)
        assert c.register().status_code == 201
        return c

    def challenge(self, c: Client) -> tuple[dict[str, Any], str, str]:
        """A new order for 127.0.0.1: (its http-01 challenge, the authz URL, the order URL)."""
        r = c.order(("ip", "127.0.0.1"))
        assert r.status_code == 201, r.text
        authz_url = r.json()["authorizations"][0]
        authz = c.post(authz_url, None).json()
        ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
        self.target.answers[ch["token"]] = c.key_authorization(ch["token"])
        return ch, authz_url, r.headers["Location"]

    def all_events(self, kind: str) -> list[dict[str, Any]]:
        if self.pg_url is None:
            return self.server.events(kind)
        engine = sqlalchemy.create_engine(self.pg_url)
        try:
            with engine.connect() as conn:
                rows = conn.execute(sqlalchemy.text(
                    "SELECT outcome, object_ids, details FROM audit_events "
                    "WHERE event_type = :k ORDER BY id"), {"k": kind}).all()
        finally:
            engine.dispose()
        return [{"outcome": r[0], "object_ids": json.loads(r[1]), "details": json.loads(r[2])}
                for r in rows]

    def events(self, kind: str, chall_url: str) -> list[dict[str, Any]]:
        cid = chall_url.rsplit("/", 1)[-1]
        return [e for e in self.all_events(kind) if e["object_ids"].get("challenge") == cid]


@pytest.fixture(scope="module", params=["sqlite", pytest.param(
    "postgresql", marks=pytest.mark.postgres)])
def env(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
        pg_available: bool) -> Iterator[Env]:
    pg_url = None
    if request.param == "postgresql":
        require_pg(pg_available)
        pg_url = create_pg_database()
        os.environ["APPLIANCE_DATABASE_URL"] = pg_url  # quickstart and serve read it
    try:
        yield from _env(tmp_path_factory, pg_url)
    finally:
        if pg_url is not None:
            os.environ.pop("APPLIANCE_DATABASE_URL", None)
            drop_pg_database(pg_url)


def _env(tmp_path_factory: pytest.TempPathFactory, pg_url: str | None) -> Iterator[Env]:
    d = tmp_path_factory.mktemp("acme-async") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    target = Target(free_port())
    dns = DnsServer().start()  # every name is 127.0.0.1
    configure(d, "acme", http01_port=target.port, resolvers=[f"127.0.0.1:{dns.port}"],
              validation_timeout_seconds=TIMEOUT, validation_wait_seconds=0.3,
              max_concurrent_validations=1, retry_after_seconds=1)
    srv = target.serve()
    try:
        with serving(d, rate_limit_per_minute=0, workers=1) as server:
            yield Env(server, target, dns, pg_url)
    finally:
        target.gate.set()
        srv.shutdown()
        srv.server_close()
        dns.stop()


def _poll(c: Client, url: str, want: str, seconds: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while True:
        body: dict[str, Any] = c.post(url, None).json()
        if body["status"] == want or time.monotonic() > deadline:
            return body
        time.sleep(0.1)


def test_slow_target_answers_processing_pool_is_bounded_then_valid(env: Env) -> None:
    env.target.gate.clear()
    c = env.client()
    ch_a, authz_a, order_a = env.challenge(c)
    ch_b, _, _ = env.challenge(c)
    r = c.post(ch_a["url"], {})
    # the answer came while the target still holds the attempt open
    assert r.status_code == 200 and r.json()["status"] == "processing", r.text
    assert r.headers["Retry-After"] == "1" and 'rel="up"' in r.headers["Link"]
    assert not env.target.gate.is_set() and env.target.hits >= 1
    # the one slot is taken: another challenge is refused, and nothing about it changed
    r = c.post(ch_b["url"], {})
    assert r.status_code == 429 and r.json()["type"].endswith(":rateLimited"), r.text
    assert r.headers["Retry-After"] == "1"
    assert c.post(ch_b["url"], None).json()["status"] == "pending"
    # the held attempt is visible as such, and the server still answers other work
    r = c.post(authz_a, None)
    authz = r.json()
    assert authz["status"] == "pending" and r.headers["Retry-After"] == "1"
    assert {x["status"] for x in authz["challenges"] if x["url"] == ch_a["url"]} == {
        "processing"}
    assert c.post(order_a, None).json()["status"] == "pending"
    assert env.server.get("/1.0/health").status_code == 200
    env.target.gate.set()
    assert _poll(c, authz_a, "valid")["status"] == "valid"
    assert "Retry-After" not in c.post(authz_a, None).headers
    assert c.post(order_a, None).json()["status"] == "ready"
    # a quick attempt answers its outcome within the wait
    r = c.post(ch_b["url"], {})
    assert r.status_code == 200 and r.json()["status"] == "valid", r.text
    assert "Retry-After" not in r.headers
    (done,) = env.events("acme.challenge.validated", ch_a["url"])
    assert done["details"]["recorded"] is True and done["details"]["started"]


def test_racing_posts_make_one_attempt(env: Env) -> None:
    env.target.gate.clear()
    c = env.client()
    ch, authz_url, _ = env.challenge(c)
    others = [Client(c.directory_url, c.ca_file, key=c.key, kid=c.kid) for _ in range(4)]
    results: list[tuple[int, str]] = []

    def post(client: Client) -> None:
        r = client.post(ch["url"], {})
        results.append((r.status_code, r.json().get("status", r.json().get("type"))))

    threads = [threading.Thread(target=post, args=(o,)) for o in others]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # all saw the one attempt (none was refused for a full pool: it was theirs)
    assert results == [(200, "processing")] * 4, results
    env.target.gate.set()
    assert _poll(c, authz_url, "valid")["status"] == "valid"
    assert len(env.events("acme.challenge.validated", ch["url"])) == 1
    assert env.events("acme.challenge.failed", ch["url"]) == []


def test_failed_attempt_is_recorded_from_the_background(env: Env) -> None:
    env.target.gate.set()
    c = env.client()
    ch, authz_url, order_url = env.challenge(c)
    env.target.answers[ch["token"]] = "wrong"
    r = c.post(ch["url"], {})
    assert r.status_code == 200 and r.json()["status"] == "invalid", r.text
    assert r.json()["error"]["type"].endswith(":incorrectResponse")
    assert c.post(authz_url, None).json()["status"] == "invalid"
    assert c.post(order_url, None).json()["status"] == "invalid"
    (failed,) = env.events("acme.challenge.failed", ch["url"])
    assert failed["outcome"] == "failure" and failed["details"]["recorded"] is True


def _healthy(server: Server) -> bool:
    try:
        return server.get("/1.0/health").status_code == 200
    except requests.RequestException:
        return False


def _pid_with_local_port(port: int) -> int:
    """The process holding the TCP socket whose local port is ``port`` (from /proc)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in inodes:
                return int(pid)
    raise AssertionError(f"no process holds local port {port}")


def test_attempt_of_a_killed_worker_is_started_again_once_stale(env: Env) -> None:
    if env.pg_url is not None:
        pytest.skip("the claim and restart statements are the same on PostgreSQL; the "
                    "racing-claims test covers that dialect")
    env.target.gate.clear()
    c = env.client()
    ch, authz_url, _ = env.challenge(c)
    assert c.post(ch["url"], {}).json()["status"] == "processing"
    worker = _pid_with_local_port(env.target.peers[-1])
    assert worker != env.server.proc.pid
    os.kill(worker, signal.SIGKILL)  # the attempt dies with its process
    deadline = time.monotonic() + 30
    while not _healthy(env.server):  # gunicorn starts a new worker
        assert time.monotonic() < deadline
        time.sleep(0.2)
    with env.server.db() as conn:
        (since,) = conn.execute("SELECT processing_since FROM acme_challenges WHERE id = ?",
                                (ch["url"].rsplit("/", 1)[-1],)).fetchone()
    started = datetime.fromisoformat(since).replace(tzinfo=UTC)
    # not stale yet: a POST shows the attempt and starts nothing
    r = c.post(ch["url"], {})
    assert r.json()["status"] == "processing" and env.events("acme.challenge.restarted",
                                                             ch["url"]) == []
    env.target.gate.set()
    wait = STALE_AFTER + 1 - (datetime.now(UTC) - started).total_seconds()
    time.sleep(max(0.0, wait))
    r = c.post(ch["url"], {})
    assert r.status_code == 200 and r.json()["status"] == "valid", r.text
    (restarted,) = env.events("acme.challenge.restarted", ch["url"])
    assert restarted["details"]["interrupted_attempt_started"].startswith(
        started.strftime("%Y-%m-%dT%H:%M:%S"))
    assert c.post(authz_url, None).json()["status"] == "valid"
    (done,) = env.events("acme.challenge.validated", ch["url"])
    assert done["details"]["recorded"] is True


@pytest.mark.skipif(not shutil.which("certbot") or not shutil.which("lego"),
                    reason="Debian's certbot and lego are installed by install.sh")
def test_certbot_and_lego_poll_a_processing_challenge(env: Env, tmp_path: Path) -> None:
    """Each validation takes longer than the request waits, so the clients get "processing"
    and must poll (certbot: the authorization every second; lego: the challenge, as its
    Retry-After says) before they can finalize."""
    if env.pg_url is not None:
        pytest.skip("the clients see the same HTTP whichever the database")
    env.target.gate.set()
    client_env = dict(os.environ, REQUESTS_CA_BUNDLE=str(env.server.roots),
                      LEGO_CA_CERTIFICATES=str(env.server.roots))
    directory = f"{env.server.api}/acme/acme/directory"
    for name, cmd in (
        ("certbot.async.test", lambda port, home: [
            "certbot", "certonly", "--standalone", "--http-01-port", str(port),
            "--http-01-address", "127.0.0.1", "--agree-tos", "--non-interactive",
            "--register-unsafely-without-email", "--server", directory, "--cert-name", "main",
            "-d", "certbot.async.test", "--config-dir", str(home / "conf"),
            "--work-dir", str(home / "work"), "--logs-dir", str(home / "logs")]),
        ("lego.async.test", lambda port, home: [
            "lego", "--path", str(home), "--accept-tos", "--email", "ops@example.com",
            "--server", directory, "--domains", "lego.async.test", "--http",
            "--http.port", f"127.0.0.1:{port}", "run"]),
    ):
        home = tmp_path / name
        env.target.upstream, env.target.delay = free_port(), 1.5
        try:
            proc = subprocess.run(cmd(env.target.upstream, home), capture_output=True,
                                  text=True, timeout=180, env=client_env, check=False)
        finally:
            env.target.upstream = None
        logs = proc.stdout + proc.stderr
        if (home / "logs" / "letsencrypt.log").exists():
            logs += (home / "logs" / "letsencrypt.log").read_text()
        assert proc.returncode == 0, logs[-6000:]
        (done,) = [e for e in env.all_events("acme.challenge.validated")
                   if e["details"]["identifier"]["value"] == name]
        assert done["details"]["recorded"] is True
        if name.startswith("certbot"):  # certbot logs the bodies it received
            assert re.search(r'"status": "processing"', logs), logs[-4000:]
