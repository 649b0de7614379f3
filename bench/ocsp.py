#!/usr/bin/env python3
"""OCSP: pre-signing rate, the responder's hot-path costs, and requests/s over HTTP.

On a fresh ``appliance quickstart`` data directory with ``--certs`` synthetic
certificate rows (random serials, issued by ``issuing``):

* ``presign``   ``ocsp.presign.presign(--all)`` in 1 process, then in 2 spawned
  processes (two responses per certificate: SHA-1 and SHA-256 CertIDs);
* ``micro``     per-operation cost in this process: the revocation-epoch read (file
  mmap), the alternative per-request status read (SQLite row; Redis GET), a
  memory-hit ``ResponseStore.lookup`` and a whole in-process WSGI request;
* ``http``      ``appliance serve`` with the public listener under gunicorn's gthread
  worker (WSGI), its uvicorn worker (ASGI) and the appliance's own prefork server
  (``httptools``, the default), 1 and 2 workers each;
  ``--clients`` client processes, each one keep-alive connection POSTing requests
  for random known serials (every answer must be "good").

Prints numbers, asserts none. The clients share the machine's cores with the
server, so the HTTP numbers are a floor.

    .venv/bin/python bench/ocsp.py [--certs 20000] [--seconds 8] [--clients 1 2 4]
"""

from __future__ import annotations

import argparse
import io
import multiprocessing as mp
import os
import random
import secrets
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _cli(*args: str) -> None:
    import subprocess

    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    subprocess.run([sys.executable, "-m", "appliance", *args], check=True, env=env,
                   capture_output=True, timeout=300)


def _setup(d: Path, n: int) -> tuple[Any, list[int]]:
    from sqlalchemy import insert

    from appliance import config
    from appliance.runtime import Appliance
    from appliance.store.models import Authority, Certificate

    _cli("quickstart", "--dir", str(d))
    app = Appliance(config.load(d / "appliance.yaml"))
    now = datetime.now(UTC)
    with app.db.sessions() as db:
        issuing = db.query(Authority).filter(Authority.name == "issuing").one()
    serials = [int.from_bytes(secrets.token_bytes(16), "big") >> 1 for _ in range(n)]
    rows = [{"serial_hex": f"{s:x}", "authority_id": issuing.id, "provisioner_name": "bench",
             "requester": "bench", "template": "tls-server", "status": "issued",
             "not_before": now, "not_after": now + timedelta(days=30), "reserved_at": now,
             "issued_at": now} for s in serials]
    with app.db.transaction() as db:
        db.execute(insert(Certificate), rows)
    return app, serials


def _timeit(fn: Any, n: int) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


def _requests(app: Any, serials: list[int], k: int) -> list[bytes]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    from appliance.ca import authorities as authz
    from appliance.ocsp.certid import cert_id_hashes
    from appliance.store.models import Authority

    with app.db.sessions() as db:
        ca = authz.certificate(db.query(Authority).filter(Authority.name == "issuing").one())
    name_hash, key_hash = cert_id_hashes(ca)["sha1"]
    return [ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash, key_hash, s, hashes.SHA1()).build().public_bytes(serialization.Encoding.DER)
        for s in random.sample(serials, k)]


def _client(port: int, ders: list[bytes], seconds: float, out: Any) -> None:
    """One keep-alive connection; raw socket and pre-encoded requests, so the client costs
    far less CPU than the server (http.client would cost about as much as gunicorn)."""
    import socket

    reqs = [(b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: application/ocsp-request\r\nContent-Length: "
             + str(len(d)).encode() + b"\r\n\r\n" + d) for d in ders]
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    n = bad = 0
    buf = b""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        s.sendall(reqs[n % len(reqs)])
        while True:
            head_end = buf.find(b"\r\n\r\n")
            if head_end >= 0:
                head = buf[:head_end].lower()
                i = head.find(b"content-length:")
                length = int(head[i + 15:head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0
                                  else len(head)])
                if len(buf) >= head_end + 4 + length:
                    if not head.startswith(b"http/1.1 200") or length < 100:
                        bad += 1
                    buf = buf[head_end + 4 + length:]
                    break
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
        n += 1
    s.close()
    out.put((n, bad))


def _run_clients(port: int, ders: list[bytes], clients: int, seconds: float) -> tuple[int, int]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(port, ders, seconds, q)) for _ in range(clients)]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(n for n, _ in results), sum(b for _, b in results)


def _http(d: Path, ders: list[bytes], server: str, workers: int, clients: list[int],
          seconds: float) -> None:
    from tests.service_helpers import serving

    with serving(d, http_server=server, http_workers=workers) as srv:
        _run_clients(srv.http_port, ders, max(clients), 2.0)  # warm every worker's memory
        for n in clients:
            total, bad = _run_clients(srv.http_port, ders, n, seconds)
            print(f"http   {server:<7} {workers} worker(s), {n} keep-alive client(s): "
                  f"{total / seconds:8.0f} req/s  ({bad} not good)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--certs", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--no-presign", action="store_true", help="skip the pre-signing rates")
    ap.add_argument("--servers", nargs="+", default=["gthread", "uvicorn", "httptools"],
                    choices=["gthread", "uvicorn", "httptools"])
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-ocsp-"))
    d = base / "data"
    try:
        app, serials = _setup(d, args.certs)
        from appliance.ocsp import cache, presign
        from appliance.ocsp.responder import Responder

        print(f"cpus={os.cpu_count()}  certificates={args.certs}")
        for procs in (1,) if args.no_presign else (1, 2):
            r = presign.presign(app, stale_only=False, processes=procs)
            print(f"presign {r.processes} process(es): {r.signed} certificates "
                  f"({2 * r.signed} responses) in {r.seconds:.1f}s = {r.rate:.0f} certs/s "
                  f"= {2 * r.rate:.0f} responses/s, failed {r.failed}")

        store = cache.ResponseStore(app)
        epoch = cache.file_epoch(app)
        assert epoch is not None
        reader = cache.Reader(app)
        serial = f"{serials[0]:x}"
        with app.db.sessions() as db:
            from appliance.store.models import Certificate

            aid = db.query(Certificate).filter(Certificate.serial_hex == serial).one()\
                .authority_id
        def line(label: str, us: float | str) -> None:
            print(f"micro  {label:<34} {us:>8.2f} µs" if isinstance(us, float)
                  else f"micro  {label:<34} {us}")

        line("epoch read (mmap)", _timeit(lambda: epoch.current(3), 200_000))
        line("status+row read (SQLite)", _timeit(lambda: reader.row(serial), 20_000))
        try:
            import redis

            client = redis.Redis.from_url("redis://127.0.0.1:6379/15", socket_timeout=1)
            client.ping()
            line("Redis GET", _timeit(lambda: client.get("x"), 20_000))
        except Exception as exc:
            line("Redis GET", f"n/a ({type(exc).__name__})")
        line("store.lookup, memory hit", _timeit(lambda: store.lookup(serial, {aid}), 200_000))
        responder = Responder(app, store)
        der = _requests(app, [serials[0]], 1)[0]

        def call() -> None:
            env = {"REQUEST_METHOD": "POST", "PATH_INFO": "/ocsp", "RAW_URI": "/ocsp",
                   "CONTENT_LENGTH": str(len(der)), "wsgi.input": io.BytesIO(der)}
            body = responder(env, lambda *a: None)
            assert len(next(iter(body))) > 100

        line("WSGI request (in-process)", _timeit(call, 50_000))
        ders = _requests(app, serials, min(2000, len(serials)))
        app.close()
        for server in args.servers:
            for workers in (1, 2):
                _http(d, ders, server, workers, args.clients, args.seconds)
    finally:
        if args.keep:
            shutil.move(str(base), str(args.keep))
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
