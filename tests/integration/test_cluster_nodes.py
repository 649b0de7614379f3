"""Two nodes as two real processes on one PostgreSQL database (issue 17): node-1 made by
quickstart, node-2 by ``appliance cluster add-node``, both serving at once. Concurrent
issuance, one-time tokens and ACME nonces across nodes, a revocation on one answered by
the other's OCSP responder, a node SIGKILLed under load, and Redis stopped."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
import redis
import requests
import yaml
from sqlalchemy import Engine, create_engine, text

from appliance.provisioners import tokens
from tests.acme_client import Client
from tests.conftest import create_pg_database, drop_pg_database, require_pg, run_cli
from tests.service_helpers import Server, configure, free_port, load_pem, make_csr, serving

pytestmark = pytest.mark.postgres

RESERVATION_TIMEOUT = 6
REVALIDATE = 2
REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass
class Cluster:
    url: str
    engine: Engine
    dirs: dict[str, Path]
    work: Path
    prefix: str
    servers: dict[str, Server] = field(default_factory=dict)
    _running: dict[str, Any] = field(default_factory=dict)

    def start(self, *names: str) -> None:
        """Start the named nodes at once (in threads: each start waits for its health)."""
        cms = {n: serving(self.dirs[n], rate_limit_per_minute=0,
                          reservation_timeout_seconds=RESERVATION_TIMEOUT) for n in names}
        with ThreadPoolExecutor(len(cms)) as pool:
            futures = {n: pool.submit(cm.__enter__) for n, cm in cms.items()}
        failed = None
        for n, f in futures.items():
            try:
                self.servers[n] = f.result()
                self._running[n] = cms[n]
            except Exception as exc:
                failed = exc
        if failed is not None:
            raise failed

    def stop(self, *names: str) -> None:
        for n in names:
            cm = self._running.pop(n, None)
            if cm is not None:
                cm.__exit__(None, None, None)
            self.servers.pop(n, None)

    @property
    def one(self) -> Server:
        return self.servers["node-1"]

    @property
    def two(self) -> Server:
        return self.servers["node-2"]

    def rows(self, serials: list[str]) -> dict[str, tuple[str, bool]]:
        with self.engine.connect() as db:
            found = db.execute(text("SELECT serial_hex, status, der IS NOT NULL FROM "
                                    "certificates WHERE serial_hex = ANY(:s)"),
                               {"s": serials}).all()
        return {r[0]: (r[1], bool(r[2])) for r in found}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, pg_available: bool) -> Iterator[Cluster]:
    require_pg(pg_available)
    if os.environ.get("APPLIANCE_DATABASE_URL"):
        pytest.skip("APPLIANCE_DATABASE_URL is set: the nodes' files name their database")
    url = create_pg_database()
    engine = create_engine(url)
    work = tmp_path_factory.mktemp("cluster")
    one, two = work / "node1", work / "node2"
    prefix = f"test-cluster-{secrets.token_hex(6)}:"
    c = Cluster(url, engine, {"node-1": one, "node-2": two}, work, prefix)
    try:
        run_cli("quickstart", "--dir", str(one), "--database-url", url, check=True)
        configure(one, "ocsp", redis_url=REDIS_URL, redis_prefix=prefix,
                  revalidate_seconds=REVALIDATE)
        made = run_cli("cluster", "add-node", "--from", str(one), "--dir", str(two),
                       "--node-id", "node-2", "--api-listen", f"127.0.0.1:{free_port()}",
                       "--http-listen", f"127.0.0.1:{free_port()}", check=True)
        pin = (one / "secrets" / "user.pin").read_text().strip()
        assert pin not in made.stdout + made.stderr
        c.start("node-1", "node-2")
        for name in ("root", "issuing"):
            pem = requests.get(f"{c.one.http}/ca/{name}.pem", timeout=10).text
            (work / f"{name}.pem").write_text(pem)
        (work / "cafile.pem").write_text((work / "root.pem").read_text()
                                         + (work / "issuing.pem").read_text())
        yield c
    finally:
        c.stop(*list(c._running))
        with contextlib.suppress(Exception):
            client = redis.Redis.from_url(REDIS_URL)
            keys = list(client.scan_iter(match=prefix + "*"))
            if keys:
                client.delete(*keys)
        engine.dispose()
        drop_pg_database(url)


def _csrs(work: Path, n: int, tag: str) -> list[tuple[str, str]]:
    names = [f"{tag}-{i}-{secrets.token_hex(3)}.example.com" for i in range(n)]
    with ThreadPoolExecutor(4) as pool:
        csrs = list(pool.map(lambda nm: make_csr(work / "csr", f"DNS:{nm}", cn=nm), names))
    return list(zip(names, csrs, strict=True))


def _sign(c: Cluster, server: Server, name: str, csr: str) -> requests.Response:
    return server.sign(csr, server.token(name, key=c.one.key()),
                       session=requests.Session())


def _serial(r: requests.Response) -> str:
    return f"{load_pem(r.json()['crt']).serial_number:x}"


def _ocsp(c: Cluster, server: Server, leaf: Path) -> str:
    proc = subprocess.run(
        ["openssl", "ocsp", "-issuer", str(c.work / "issuing.pem"), "-cert", str(leaf),
         "-url", server.http + "/ocsp", "-CAfile", str(c.work / "cafile.pem"), "-no_nonce"],
        capture_output=True, text=True, timeout=30, check=False)
    assert "Response verify OK" in proc.stderr, proc.stdout + proc.stderr
    return proc.stdout.split(f"{leaf}: ", 1)[1].split()[0]


def _issue_to_file(c: Cluster, server: Server, tag: str) -> tuple[Path, str]:
    ((name, csr),) = _csrs(c.work, 1, tag)
    r = _sign(c, server, name, csr)
    assert r.status_code == 201, r.text
    leaf = c.work / f"{name}.pem"
    leaf.write_text(r.json()["crt"])
    return leaf, _serial(r)


def _revoke(c: Cluster, server: Server, serial: str) -> None:
    token = server.token(serial, key=c.one.key(),
                         audience=server.audience.replace("/1.0/sign", "/1.0/revoke"))
    r = server.post("/1.0/revoke", json={"serial": serial, "reasonCode": 4, "ott": token})
    assert r.status_code == 200, r.text


# -- the tests, in order (the last ones stop and restart nodes) ------------------------------


def test_add_node_refuses_what_would_collide(cluster: Cluster) -> None:
    one = cluster.dirs["node-1"]

    def add(source: Path, target: Path, *extra: str) -> subprocess.CompletedProcess[str]:
        return run_cli("cluster", "add-node", "--from", str(source), "--dir", str(target),
                       *extra)

    def listeners() -> list[str]:
        return ["--api-listen", f"127.0.0.1:{free_port()}",
                "--http-listen", f"127.0.0.1:{free_port()}"]

    cases = [
        (["--node-id", "node-1", *listeners()], "node A's own"),
        (["--node-id", "node-2", *listeners()], "already"),  # added, and serving
        (["--node-id", "node-3"], "give the new node its own --api-listen"),
        (["--node-id", "node-3", "--api-listen", cluster.one.api.removeprefix("https://"),
          "--http-listen", f"127.0.0.1:{free_port()}"], "node A's listener"),
        (["--node-id", "node-3", "--api-listen", cluster.one.http.removeprefix("http://"),
          "--http-listen", f"127.0.0.1:{free_port()}"], "one of node A's listeners"),
    ]
    for extra, message in cases:
        target = cluster.work / f"refused-{secrets.token_hex(3)}"
        r = add(one, target, *extra)
        assert r.returncode != 0 and message in r.stderr, (extra, r.stdout + r.stderr)
        assert not target.exists()
    # A SQLite node cannot be joined; nor can a non-empty directory be made a node.
    lone = cluster.work / "lone"
    run_cli("init", "--dir", str(lone), check=True)
    r = add(lone, cluster.work / "x", "--node-id", "node-9", *listeners())
    assert r.returncode != 0 and "SQLite" in r.stderr and "PostgreSQL" in r.stderr, r.stderr
    assert not (cluster.work / "x").exists()
    r = add(one, lone, "--node-id", "node-9", *listeners())
    assert r.returncode != 0 and "not empty" in r.stderr, r.stderr
    with cluster.engine.connect() as db:
        added = db.execute(text("SELECT node_id, actor, object_ids, details FROM audit_events "
                                "WHERE event_type = 'cluster.node_added'")).all()
    assert [(n, json.loads(o)) for n, _, o, _ in added] == [("node-1", {"node_id": "node-2"})]
    assert added[0][1].startswith("cli:")
    assert json.loads(added[0][3])["secrets_copied"] == ["acme-eab-wrap.key", "user.pin"]


def test_the_new_node_holds_only_what_it_needs(cluster: Cluster) -> None:
    one, two = cluster.dirs["node-1"], cluster.dirs["node-2"]
    secret_files = sorted(p.name for p in (two / "secrets").iterdir())
    assert secret_files == ["acme-eab-wrap.key", "user.pin"]
    assert (two / "secrets").stat().st_mode & 0o777 == 0o700
    assert all((two / "secrets" / n).stat().st_mode & 0o777 == 0o600 for n in secret_files)
    assert (two / "secrets" / "acme-eab-wrap.key").read_bytes() == \
        (one / "secrets" / "acme-eab-wrap.key").read_bytes()
    # The same token: A's SoftHSM configuration and start-up lock, by absolute path.
    profile = yaml.safe_load((two / "hsm.yaml").read_text())
    assert profile["module_env"]["SOFTHSM2_CONF"] == str(one / "softhsm" / "softhsm2.conf")
    assert profile["startup_lock"] == str(one / "softhsm" / "startup.lock")
    assert profile["pin"] == {"file": "secrets/user.pin"}
    # Its own API TLS key and certificate, issued by its own serve (none were copied).
    mine = {p.name: p.read_bytes() for p in (two / "tls").iterdir() if p.suffix != ".pem"}
    theirs = {p.name: p.read_bytes() for p in (one / "tls").iterdir() if p.suffix != ".pem"}
    assert mine and mine.keys() == theirs.keys()
    assert all(mine[n] != theirs[n] for n in mine)


def test_concurrent_issuance_on_both_nodes(cluster: Cluster) -> None:
    jobs = [(cluster.one, *x) for x in _csrs(cluster.work, 20, "one")] + \
           [(cluster.two, *x) for x in _csrs(cluster.work, 20, "two")]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda j: _sign(cluster, *j), jobs))
    assert [r.status_code for r in results] == [201] * len(jobs), \
        [r.text for r in results if r.status_code != 201][:3]
    serials = [_serial(r) for r in results]
    assert len(set(serials)) == len(serials)
    rows = cluster.rows(serials)
    assert rows == {s: ("issued", True) for s in serials}


def test_a_token_spent_on_one_node_is_refused_on_the_other(cluster: Cluster) -> None:
    """One token whose audience names both nodes' sign URLs: good at either, once."""
    key = cluster.one.key()

    def token(name: str) -> str:
        t = int(time.time())
        payload = {"iss": "admin", "aud": [cluster.one.audience, cluster.two.audience],
                   "sub": name, "sans": [name], "iat": t, "nbf": t, "exp": t + 300,
                   "jti": secrets.token_urlsafe(24)}
        return jwt.encode(payload, key, algorithm="ES256",
                          headers={"kid": tokens.public_jwk(key.public_key())["kid"],
                                   "typ": "JWT"})

    (name, csr), (other, csr2) = _csrs(cluster.work, 2, "ott")
    ott = token(name)
    assert cluster.one.sign(csr, ott).status_code == 201
    replay = cluster.two.sign(csr, ott)
    assert replay.status_code == 401 and "already used" in replay.text, replay.text
    # the same kind of token, unspent, is good on node 2: the refusal was the replay
    assert cluster.two.sign(csr2, token(other)).status_code == 201


def test_an_acme_nonce_is_good_once_on_any_node(cluster: Cluster) -> None:
    c1 = Client(f"{cluster.one.api}/acme/acme/directory", cluster.one.roots)
    c2 = Client(f"{cluster.two.api}/acme/acme/directory", cluster.two.roots)
    nonce = c1.new_nonce()
    first = c2.post(c2.dir["newAccount"], {"termsOfServiceAgreed": True}, nonce=nonce,
                    use_jwk=True)
    assert first.status_code == 201, first.text
    c3 = Client(f"{cluster.one.api}/acme/acme/directory", cluster.one.roots)
    again = c3.post(c3.dir["newAccount"], {"termsOfServiceAgreed": True}, nonce=nonce,
                    use_jwk=True)
    assert again.status_code == 400 and "badNonce" in again.text, again.text


def test_a_revocation_on_node_1_is_revoked_at_node_2_within_a_second(cluster: Cluster) -> None:
    leaf, serial = _issue_to_file(cluster, cluster.one, "revoke")
    assert _ocsp(cluster, cluster.two, leaf) == "good"  # cached at node 2 now
    assert _ocsp(cluster, cluster.two, leaf) == "good"
    _revoke(cluster, cluster.one, serial)
    done = time.monotonic()
    answers = []
    while time.monotonic() - done < 1.0:
        answers.append(_ocsp(cluster, cluster.two, leaf))
        if answers[-1] == "revoked":
            break
    took = time.monotonic() - done
    assert answers[-1] == "revoked" and took < 1.0, (answers, took)
    print(f"node 2 answered revoked {took * 1000:.0f} ms after node 1's revoke returned")


def test_node_1_killed_under_load(cluster: Cluster) -> None:
    one, two = cluster.one, cluster.two
    pending = {"node-1": _csrs(cluster.work, 60, "k1"), "node-2": _csrs(cluster.work, 60, "k2")}
    got: dict[str, list[str]] = {"node-1": [], "node-2": []}
    refused: dict[str, list[str]] = {"node-1": [], "node-2": []}
    lock = threading.Lock()

    def worker(node: str, server: Server) -> None:
        while True:
            with lock:
                if not pending[node]:
                    return
                name, csr = pending[node].pop()
            try:
                r = _sign(cluster, server, name, csr)
            except requests.RequestException as exc:
                with lock:
                    refused[node].append(type(exc).__name__)
                continue
            with lock:
                if r.status_code == 201:
                    got[node].append(_serial(r))
                else:
                    refused[node].append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=worker, args=(n, s)) for n, s in
               (("node-1", one), ("node-2", two)) for _ in range(5)]
    for t in threads:
        t.start()
    end = time.monotonic() + 30
    while len(got["node-1"]) < 10 and time.monotonic() < end:
        time.sleep(0.01)
    # Hold node 1's audit head: its requests then stop between their committed reservation
    # and the store that audits them (as a kill at that instant would find them), while
    # node 2's own chain is free. Then the kill, with requests of node 1 in flight.
    holder = cluster.engine.connect()
    hold = holder.begin()
    holder.execute(text("SELECT * FROM audit_heads WHERE node_id = 'node-1' FOR UPDATE"))
    stuck = 'status = \'reserved\' AND request_context LIKE \'%"k1-%\''
    end = time.monotonic() + 10
    while time.monotonic() < end:
        with cluster.engine.connect() as db:
            if db.execute(text(f"SELECT COUNT(*) FROM certificates WHERE {stuck}")).scalar():
                break
        time.sleep(0.05)
    time.sleep(0.3)
    os.killpg(one.proc.pid, signal.SIGKILL)  # serve and every worker of node 1
    kill_time = time.monotonic()
    hold.rollback()
    holder.close()
    for t in threads:
        t.join(timeout=120)
    assert len(got["node-1"]) >= 10
    assert refused["node-2"] == [] and len(got["node-2"]) == 60, refused["node-2"]
    handed_out = got["node-1"] + got["node-2"]
    assert cluster.rows(handed_out) == {s: ("issued", True) for s in handed_out}
    # What node 1 left reserved, node 2's sweeper ends as failed after the timeout.
    with cluster.engine.connect() as db:
        left = [r[0] for r in db.execute(text(
            f"SELECT serial_hex FROM certificates WHERE {stuck}")).all()]
    assert left, "node 1 left no reservation behind"
    deadline = kill_time + RESERVATION_TIMEOUT + RESERVATION_TIMEOUT / 2 + 15
    while time.monotonic() < deadline:
        with cluster.engine.connect() as db:
            still = db.execute(text("SELECT COUNT(*) FROM certificates "
                                    "WHERE status = 'reserved'")).scalar()
        if not still:
            break
        time.sleep(0.25)
    assert still == 0
    assert cluster.rows(left) == {s: ("failed", False) for s in left}
    with cluster.engine.connect() as db:
        ended = db.execute(text(
            "SELECT node_id, object_ids FROM audit_events "
            "WHERE event_type = 'certificate.reservation.abandoned'")).all()
    assert sorted(json.loads(o)["serial"] for _, o in ended) == sorted(left)
    assert {n for n, _ in ended} == {"node-2"}
    print(f"node 1 issued {len(got['node-1'])} before the kill, node 2 {len(got['node-2'])}; "
          f"{len(left)} reservation(s) of node 1 swept by node 2; node 1's clients saw "
          f"{len(refused['node-1'])} failures")
    verify = run_cli("--dir", str(cluster.dirs["node-2"]), "audit", "verify")
    assert verify.returncode == 0 and "intact" in verify.stdout, verify.stdout + verify.stderr
    assert "2 node(s)" in verify.stdout
    cluster.stop("node-1")


def _free_redis_port() -> int:
    port = free_port()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
    return port


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server not installed")
def test_ocsp_stays_correct_when_redis_stops(cluster: Cluster) -> None:
    port = _free_redis_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        own = f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(own)
        end = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                if time.monotonic() > end:
                    raise
                time.sleep(0.05)
        cluster.stop("node-1", "node-2")
        for d in cluster.dirs.values():
            configure(d, "ocsp", redis_url=own, redis_prefix=cluster.prefix,
                      revalidate_seconds=REVALIDATE)
        cluster.start("node-1", "node-2")
        good, _ = _issue_to_file(cluster, cluster.one, "redis-good")
        doomed, doomed_serial = _issue_to_file(cluster, cluster.two, "redis-doomed")
        for server in (cluster.one, cluster.two):
            assert _ocsp(cluster, server, good) == "good"
            assert _ocsp(cluster, server, doomed) == "good"
        assert list(client.scan_iter(match=cluster.prefix + "*"))  # Redis was in use
        proc.terminate()
        proc.wait(timeout=10)
        _revoke(cluster, cluster.one, doomed_serial)
        done = time.monotonic()
        for server in (cluster.one, cluster.two):
            assert _ocsp(cluster, server, good) == "good"
            while (answer := _ocsp(cluster, server, doomed)) != "revoked":
                assert time.monotonic() - done < REVALIDATE + 1, answer
                time.sleep(0.1)
        print(f"both nodes answered revoked {time.monotonic() - done:.2f} s after the revoke, "
              "Redis stopped")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
