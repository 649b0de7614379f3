"""Slowloris clients over real TLS: connections that hold a server's attention and send
almost nothing, reopened as soon as the server cuts them (a sustained attack).

Two kinds, as issue 12 describes them: ``head`` sends part of a request head and then a
byte every ``trickle`` seconds, never finishing it; ``body`` sends a whole head announcing
``Content-Length: 5000`` and then one byte of the body now and then. Used by the
availability tests and by ``bench/api_load.py``.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HEAD = b"POST /1.0/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-Slow: "
BODY = (b"POST /1.0/sign HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 5000\r\n\r\n{")


@dataclass
class SlowClients:
    host: str
    port: int
    roots: Path
    count: int = 200
    trickle: float = 2.0
    kinds: tuple[str, ...] = ("head", "body")
    opened: int = 0  # connections whose handshake completed (reopened ones included)
    cut: int = 0  # connections the server ended
    failed: int = 0  # connects or handshakes that did not succeed
    answers: list[bytes] = field(default_factory=list)  # first bytes the server sent on a cut
    _socks: dict[int, tuple[ssl.SSLSocket, str, float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> SlowClients:
        self._ctx = ssl.create_default_context(cafile=str(self.roots))
        give_up = time.monotonic() + 20  # a server that cannot take them: stop waiting
        for i in range(self.count):
            if time.monotonic() > give_up:
                break
            self._open(self.kinds[i % len(self.kinds)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        for sock, _, _ in self._socks.values():
            with contextlib.suppress(OSError):
                sock.close()
        self._socks.clear()

    @property
    def open_now(self) -> int:
        return len(self._socks)

    def _open(self, kind: str) -> None:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=3)
            sock = self._ctx.wrap_socket(raw, server_hostname=self.host)
            sock.sendall(HEAD if kind == "head" else BODY)
        except (OSError, ssl.SSLError):
            self.failed += 1
            return
        sock.settimeout(0)
        self.opened += 1
        self._socks[sock.fileno()] = (sock, kind, time.monotonic())

    def _run(self) -> None:
        while not self._stop.is_set():
            socks = [s for s, _, _ in self._socks.values()]
            readable, _, _ = select.select(socks, [], [], 0.2) if socks else ([], [], [])
            for sock in readable:
                self._server_spoke(sock)
            now = time.monotonic()
            for fd, (sock, kind, last) in list(self._socks.items()):
                if now - last >= self.trickle:
                    try:
                        sock.send(b"a" if kind == "head" else b" ")
                        self._socks[fd] = (sock, kind, now)
                    except (OSError, ssl.SSLError):
                        self._drop(sock)
            for _ in range(min(20, self.count - len(self._socks))):  # a few per round
                if self._stop.is_set():
                    break
                self._open(self.kinds[(self.opened + self.failed) % len(self.kinds)])

    def _server_spoke(self, sock: ssl.SSLSocket) -> None:
        try:
            data = sock.recv(4096)
        except ssl.SSLWantReadError:
            return
        except (OSError, ssl.SSLError):
            data = b""
        if data and len(self.answers) < 1000:
            self.answers.append(data[:64])
        self._drop(sock)

    def _drop(self, sock: ssl.SSLSocket) -> None:
        for fd, (s, _, _) in list(self._socks.items()):
            if s is sock:
                del self._socks[fd]
        self.cut += 1
        with contextlib.suppress(OSError):
            sock.close()
