"""PostgreSQL down under a running node, as a real fault: the node reaches its database
through a TCP forwarder the test owns, and the forwarder is cut (listener closed, every
open connection reset). Issuance fails closed (503, nothing issued); OCSP keeps answering
"good" from its cache (Redis and memory) for a certificate whose slot saw no revocation,
past the revalidation interval; once the database is back, issuance works again."""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.conftest import run_cli
from tests.service_helpers import configure, free_port, load_pem, make_csr, serving

pytestmark = pytest.mark.postgres


class Forwarder:
    """127.0.0.1:port -> PostgreSQL, until cut."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port, self.target = port, target
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(64)
        self.listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self.listener is not None
        self.listener.close()
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # RST: what a crashed or unreachable server looks like


@pytest.fixture
def pg_behind_forwarder(pg_available: bool, monkeypatch: pytest.MonkeyPatch
                        ) -> Iterator[tuple[str, Forwarder]]:
    from tests.conftest import create_pg_database, drop_pg_database, require_pg

    require_pg(pg_available)
    url = create_pg_database()
    fwd = Forwarder(free_port(), ("127.0.0.1", 5432))
    fwd.start()
    try:
        via = url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{fwd.port}/")
        assert via != url
        monkeypatch.setenv("APPLIANCE_DATABASE_URL", via)  # quickstart, the CLI, the workers
        yield via, fwd
    finally:
        with contextlib.suppress(Exception):
            fwd.cut()
        drop_pg_database(url)


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


def _status(http: str, leaf: x509.Certificate, issuer: x509.Certificate) -> str:
    der = (ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
           .public_bytes(serialization.Encoding.DER))
    r = requests.post(http + "/ocsp", data=der, timeout=10,
                      headers={"Content-Type": "application/ocsp-request"})
    assert r.status_code == 200, r.status_code
    resp = ocsp.load_der_ocsp_response(r.content)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return resp.response_status.name
    return resp.certificate_status.name


def test_postgresql_down_fails_issuance_closed_and_ocsp_answers_from_cache(
        tmp_path: Path, pg_behind_forwarder: tuple[str, Forwarder]) -> None:
    if not _redis_up():
        pytest.skip("Redis is not running on 127.0.0.1:6379")
    _url, fwd = pg_behind_forwarder
    data = tmp_path / "node"
    run_cli("quickstart", "--dir", str(data), check=True)
    configure(data, "ocsp", redis_url="redis://127.0.0.1:6379/0",
              redis_prefix=f"test-dbdown-{secrets.token_hex(4)}:", revalidate_seconds=1)
    with serving(data) as server:
        name = "cached.example.com"
        r = server.sign(make_csr(tmp_path, f"DNS:{name}", cn=name), server.token(name))
        assert r.status_code == 201, r.text
        leaf = load_pem(r.json()["crt"])
        issuer = load_pem(r.json()["ca"])
        assert _status(server.http, leaf, issuer) == "GOOD"  # memory and Redis filled
        before = server.cli("cert", "list", "--json").stdout

        fwd.cut()
        time.sleep(1.5)  # past ocsp.revalidate_seconds: a cached "good" would be re-read
        assert _status(server.http, leaf, issuer) == "GOOD"
        metrics = requests.get(server.http + "/metrics", timeout=10).text
        assert any(line.startswith("ocsp_cache_hits_total") and 'layer="database_down"' in line
                   and not line.endswith(" 0") for line in metrics.splitlines()), metrics

        name2 = "while-down.example.com"
        r = server.sign(make_csr(tmp_path, f"DNS:{name2}", cn=name2), server.token(name2))
        assert r.status_code == 503, r.text
        assert r.json()["error"] in ("database_error", "store_unavailable"), r.json()

        fwd.start()  # the database is back
        deadline = time.monotonic() + 20
        while True:
            r = server.sign(make_csr(tmp_path, f"DNS:{name2}", cn=name2), server.token(name2))
            if r.status_code == 201 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert r.status_code == 201, r.text
        after = server.cli("cert", "list", "--json").stdout
        assert name2 not in before and name2 in after
        assert after.count(name2) >= 1
