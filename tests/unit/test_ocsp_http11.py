"""The OCSP listener's HTTP/1.1 framing (appliance.web.http11) over a real socket, with a
stand-in handler: keep-alive, pipelining order, body limits, timeouts, upgrades."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import uvloop

from appliance.web import http11
from appliance.web.http11 import Request, Response, ServerState, encode_headers

LIMIT = 100


def _text(status: int, body: bytes) -> Response:
    return Response(status, encode_headers([("Content-Length", str(len(body)))]), body)


class Server:
    def __init__(self) -> None:
        self.loop = uvloop.new_event_loop()
        self.pool = ThreadPoolExecutor(2)
        self.seen: list[Request] = []
        self.state = ServerState(self.handle, LIMIT, keepalive=0.6, request_timeout=0.6)
        self.port = 0
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        assert ready.wait(10)

    def handle(self, req: Request) -> Response | asyncio.Future[Response]:
        self.seen.append(req)
        if req.path == "/slow":  # answered from a thread, later than what follows it
            def slow() -> Response:
                time.sleep(0.2)
                return _text(200, b"slow")
            return self.loop.run_in_executor(self.pool, slow)
        body = b"none" if req.body is None else b"%d" % len(req.body)
        return _text(200, req.path.encode() + b" " + body)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        def tick() -> None:
            self.state.tick()
            self.loop.call_later(0.1, tick)

        server = self.loop.run_until_complete(self.loop.create_server(
            self.state.protocol, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        tick()
        ready.set()
        self.loop.run_forever()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.pool.shutdown()


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    s = Server()
    yield s
    s.stop()


def _connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=5)


def _read_all(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _bodies(out: bytes) -> list[bytes]:
    return [m.group(2) for m in re.finditer(rb"HTTP/1\.1 (\d+) [^\r]*\r\n.*?\r\n\r\n([^H]*)",
                                            out, re.S)]


def test_keep_alive_and_pipelining_in_order(server: Server) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                  b"GET /c?q=1 HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"e\"\r\n"
                  b"Connection: close\r\n\r\n")
        out = _read_all(s)
    assert _bodies(out) == [b"/a 0", b"slow", b"/b 3", b"/c 0"], out
    assert out.count(b"Date: ") == 4 and out.count(b"Connection: close") == 1
    last = server.seen[-1]
    assert (last.path, last.query, last.if_none_match) == ("/c", "q=1", '"e"')


def test_an_oversized_body_is_drained_and_reported_as_none(server: Server) -> None:
    with _connect(server) as s:
        s.sendall(b"POST /big HTTP/1.1\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
                  + b"POST /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                  + b"3e8\r\n" + b"y" * 1000 + b"\r\n0\r\n\r\n"
                  + b"GET /after HTTP/1.1\r\nConnection: close\r\n\r\n")
        out = _read_all(s)
    assert _bodies(out) == [b"/big none", b"/chunked none", b"/after 0"], out


def test_a_body_past_the_drain_limit_gets_400_and_the_connection_closes(
        server: Server) -> None:
    size = LIMIT + http11.MAX_DRAIN + 10
    with _connect(server) as s:
        s.sendall(b"POST /huge HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % size)
        with contextlib.suppress(OSError):  # the server may stop reading while we send
            s.sendall(b"z" * size)
        out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 400 ") and b"request body too large" in out


@pytest.mark.parametrize("data, reason", [
    (b"BLAH\x00 / HTTP/1.1\r\n\r\n", b"malformed HTTP request"),
    (b"GET /" + b"a" * (http11.MAX_URL + 1) + b" HTTP/1.1\r\n\r\n", b"request URL too long"),
    (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (http11.MAX_HEADERS + 1) + b"\r\n",
     b"too many header fields"),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * http11.MAX_HEADER_BYTES + b"\r\n\r\n",
     b"header field too large"),
    (b"GET / HTTP/1.1\r\nX: " + b"y" * (http11.MAX_HEAD + 300_000), b"request head too large"),
])
def test_broken_framing_gets_a_clear_400_and_close(server: Server, data: bytes,
                                                   reason: bytes) -> None:
    with _connect(server) as s:
        s.sendall(data)
        out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 400 Bad Request\r\n") and reason in out, out[:200]


def test_idle_and_slow_connections_time_out(server: Server) -> None:
    with _connect(server) as s:
        t0 = time.monotonic()
        assert _read_all(s) == b""  # idle: closed after keepalive (0.6 s)
        assert 0.4 < time.monotonic() - t0 < 3
    with _connect(server) as s:
        s.sendall(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")  # never finished
        out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 408 ") and b"request timeout" in out


def test_http10_and_upgrade(server: Server) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /old HTTP/1.0\r\n\r\n")
        out = _read_all(s)  # closed after the answer
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"Connection: close" in out
    with _connect(server) as s:
        s.sendall(b"GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        first = s.recv(65536)
        assert b"Connection: keep-alive" in first
    with _connect(server) as s:
        s.sendall(b"GET /up HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                  b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
        out = _read_all(s)  # the request is answered, then the connection ends
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"/up 0")


def test_a_half_closed_client_still_gets_a_late_answer(server: Server) -> None:
    with _connect(server) as s:
        s.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        out = _read_all(s)
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"slow")
