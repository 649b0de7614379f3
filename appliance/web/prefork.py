"""``python -m appliance.web.prefork``: the relying-party listener's processes (``httptools``).

One supervisor and ``--workers`` worker processes, each a uvloop event loop running
:class:`~appliance.web.http11.HttpProtocol` with the routes of
:mod:`appliance.web.public_listener`. Why this shape:

* One process per core: the GIL allows one core per process, and an OCSP answer
  needs no shared state beyond the database and the revocation-epoch file (every
  cache rule of :mod:`appliance.ocsp.cache` holds across processes).
* One ``SO_REUSEPORT`` socket per worker, all bound here before any worker starts (a
  busy port fails at once, in the supervisor): the kernel spreads new connections
  evenly over the workers, where one shared socket lets whichever process wakes
  first take a burst of connections. A replaced worker inherits the same socket, so
  connections queued on it are not lost.
* Workers are forked before any database connection or token session exists and
  build their :class:`~appliance.runtime.Appliance` themselves; this listener holds
  no key and never opens the token.
* A worker that dies is replaced; one that dies before it serves (bad configuration,
  unreadable database: it tells the supervisor through a pipe once it listens) stops
  the whole group with exit status 3, so ``appliance serve`` (and systemd) see the
  failure instead of a restart loop. A worker whose supervisor is gone stops by itself.
* SIGTERM / SIGINT: stop accepting, answer what is in flight, close idle keep-alive
  connections, exit within ``--graceful-timeout``. SIGHUP: start a new set of workers
  (they read the configuration and the files anew); the old ones are asked to stop
  gracefully only once every new one serves. A new worker that fails to boot ends the
  reload, not the service: the old workers keep serving and the failure is logged (a
  reload never leaves the listener with fewer workers, nor with none).

The API listener (:mod:`appliance.web.api_server`) runs under the same supervisor with
its own worker function.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from appliance.web.http11 import ServerState

from appliance import logs
from appliance.ocsp.request import MAX_REQUEST_BYTES

log = logs.get("web.prefork")

BACKLOG = 2048
_ready_fd: int | None = None  # in a worker: the pipe that tells the supervisor it serves


def notify_ready() -> None:
    """Tell the supervisor this worker serves (its death is no boot failure after this)."""
    global _ready_fd
    if _ready_fd is not None:
        with contextlib.suppress(OSError):
            os.write(_ready_fd, b"1")
            os.close(_ready_fd)
        _ready_fd = None


@dataclass(frozen=True)
class Options:
    bind: str
    workers: int
    threads: int
    timeout: float
    keepalive: float
    graceful_timeout: float
    max_connections: int
    log_level: str


def parse_args(argv: list[str] | None) -> Options:
    ap = argparse.ArgumentParser(prog="python -m appliance.web.prefork",
                                 description="The relying-party HTTP listener (OCSP, CRLs, CA "
                                             "certificates). Configuration: $APPLIANCE_CONFIG.")
    ap.add_argument("--bind", required=True, help="HOST:PORT ([v6addr]:PORT)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8, help="per worker, for non-OCSP routes")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to receive a request")
    ap.add_argument("--keep-alive", type=float, default=5.0, dest="keepalive")
    ap.add_argument("--graceful-timeout", type=float, default=10.0)
    ap.add_argument("--max-connections", type=int, default=4096, help="per worker")
    ap.add_argument("--log-level", default="WARNING")
    a = ap.parse_args(argv)
    if not 1 <= a.workers <= 64 or not 1 <= a.threads <= 64:
        ap.error("--workers and --threads must be 1..64")
    return Options(a.bind, a.workers, a.threads, a.timeout, a.keepalive, a.graceful_timeout,
                   a.max_connections, a.log_level)


def _address(bind: str) -> tuple[int, int, int, Any]:
    host, _, port = bind.rpartition(":")
    family, kind, proto, _, addr = socket.getaddrinfo(
        host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, kind, proto, addr


def listen_sockets(bind: str, count: int) -> tuple[list[socket.socket], socket.socket]:
    """``count`` listening sockets on ``bind`` with SO_REUSEPORT, and the lock that keeps
    the address ours (close it last).

    SO_REUSEPORT lets any process of the same user bind the same address too, and the
    kernel would then silently split connections with it (a second appliance started by
    mistake, an old one still running). So: an abstract Unix socket named after the
    address is the lock between appliance listeners, API or HTTP (exclusive, gone with
    the process),
    and a plain bind first proves that nobody else listens there (it fails with
    EADDRINUSE against any listener, SO_REUSEPORT or not)."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0appliance-listener:{bind}")
    except OSError:
        lock.close()
        raise OSError(f"another appliance listener already serves {bind}") from None
    family, kind, proto, addr = _address(bind)
    sockets: list[socket.socket] = []
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(addr)  # EADDRINUSE if anything listens there
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(addr)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        lock.close()
        raise
    return sockets, lock


# -- a worker --------------------------------------------------------------------------------


def worker(sock: socket.socket, opts: Options, supervisor: int) -> int:
    """Serve on ``sock`` until SIGTERM/SIGINT or the supervisor is gone."""
    import uvloop

    from appliance import config
    from appliance.runtime import Appliance
    from appliance.web.http11 import ServerState
    from appliance.web.public_listener import PublicListener

    settings = config.load(config.locate(None, None))
    logs.configure(settings.config.logging.level)
    app = Appliance(settings)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    executor = ThreadPoolExecutor(opts.threads, thread_name_prefix="public")
    listener = PublicListener(app, loop, executor)
    state = ServerState(listener, MAX_REQUEST_BYTES, bad_request=listener.bad_request,
                        keepalive=opts.keepalive, request_timeout=opts.timeout,
                        max_connections=opts.max_connections)
    try:
        serve_loop(loop, state, state.protocol, sock, opts.graceful_timeout, supervisor)
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        app.close()
    return 0


def serve_loop(loop: asyncio.AbstractEventLoop, state: ServerState,
               protocol: Callable[[], asyncio.BaseProtocol], sock: socket.socket,
               graceful_timeout: float, supervisor: int) -> None:
    """Serve ``sock`` on ``loop`` until SIGTERM/SIGINT or the supervisor is gone; then stop
    accepting, let answers in flight go out, and return within ``graceful_timeout``."""
    stop: asyncio.Future[None] = loop.create_future()

    def request_stop() -> None:
        if not stop.done():
            stop.set_result(None)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, request_stop)

    def tick() -> None:
        state.tick()
        if os.getppid() != supervisor:
            request_stop()
        loop.call_later(1.0, tick)

    loop.call_later(1.0, tick)
    server = loop.run_until_complete(loop.create_server(protocol, sock=sock, backlog=BACKLOG))
    notify_ready()
    loop.run_until_complete(stop)
    server.close()
    for conn in list(state.connections):
        conn.shutdown()
    deadline = time.monotonic() + graceful_timeout
    while state.connections and time.monotonic() < deadline:
        loop.run_until_complete(asyncio.sleep(0.05))


# -- the supervisor --------------------------------------------------------------------------


# A worker: (its socket, the options, the supervisor's pid) -> exit status.
WorkerFn = Callable[[socket.socket, Any, int], int]


class Supervisor:
    def __init__(self, opts: Any, sockets: list[socket.socket],
                 lock: socket.socket, target: WorkerFn = worker) -> None:
        self.opts = opts
        self.sockets = sockets
        self.lock = lock
        self.target = target
        self.children: dict[int, tuple[int, float]] = {}  # pid -> (worker index, started)
        self.booting: dict[int, int] = {}  # pid -> read end of its ready pipe, until it serves
        self.retiring: set[int] = set()  # old workers stopping after a SIGHUP
        # A reload in progress: the new workers still booting, and the old ones that
        # serve until every new one does.
        self.incoming: set[int] = set()
        self.outgoing: set[int] = set()
        self.stopping = False
        self.reload = False

    def spawn(self, index: int) -> None:
        global _ready_fd
        me = os.getpid()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                os.close(ready_r)
                for fd in self.booting.values():
                    os.close(fd)
                _ready_fd = ready_w
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)  # the supervisor reloads
                # The workers keep the lock's descriptor open: the address stays locked
                # until the last process of the group is gone.
                for i, s in enumerate(self.sockets):
                    if i != index:
                        s.close()
                code = self.target(self.sockets[index], self.opts, me)
            except BaseException:
                log.exception("listener worker failed")
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        os.close(ready_w)
        os.set_blocking(ready_r, False)
        self.booting[pid] = ready_r
        self.children[pid] = (index, time.monotonic())

    def _check_booted(self) -> None:
        for pid, fd in list(self.booting.items()):
            try:
                got = os.read(fd, 1)
            except BlockingIOError:
                continue
            except OSError:
                got = b""
            if got == b"1":
                os.close(fd)
                del self.booting[pid]
        if (self.incoming or self.outgoing) and not self.incoming & self.booting.keys():
            for pid in self.outgoing:
                self.retiring.add(pid)
                _signal(pid, signal.SIGTERM)
            log.warning("reloaded: the new workers serve, the old ones are stopping",
                        extra={"new": len(self.incoming), "old": len(self.outgoing)})
            self.incoming, self.outgoing = set(), set()

    def _booted(self, pid: int) -> bool:
        """Whether ``pid`` (just reaped) had told us it serves; forgets its pipe."""
        fd = self.booting.pop(pid, None)
        if fd is None:
            return True
        try:
            got = os.read(fd, 1)
        except OSError:
            got = b""
        os.close(fd)
        return got == b"1"

    def _stop(self, _sig: int, _frame: Any) -> None:
        self.stopping = True

    def _hup(self, _sig: int, _frame: Any) -> None:
        self.reload = True

    def _replace_all(self) -> None:
        """New workers first, on the same sockets (nothing queued is lost); the old ones
        go when all the new ones serve (:meth:`_check_booted`)."""
        if self.incoming or self.outgoing:
            return  # one reload at a time; this one starts when the current one ends
        self.reload = False
        old = {pid for pid in self.children if pid not in self.retiring}
        self.outgoing = old
        for pid in sorted(old):
            before = set(self.children)
            self.spawn(self.children[pid][0])
            self.incoming |= set(self.children) - before
        log.warning("reloading: new workers starting", extra={"old": len(old)})

    def _reload_failed(self, pid: int, status: int) -> None:
        """A new worker died before it served: the reload ends, the old workers stay."""
        log.error("reload failed: a new worker did not boot; the running workers go on "
                  "serving with the configuration they have", extra={"pid": pid, "status": status})
        for other in self.incoming - {pid}:
            self.retiring.add(other)
            _signal(other, signal.SIGTERM)
        serving = {self.children[p][0] for p in self.children if p not in self.retiring}
        self.incoming, self.outgoing = set(), set()
        for index in range(len(self.sockets)):
            if index not in serving:  # an old worker of that socket died meanwhile
                self.spawn(index)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hup)
        for i in range(len(self.sockets)):
            self.spawn(i)
        code = 0
        while not self.stopping:
            time.sleep(0.2)
            if self.reload:
                self._replace_all()
            self._check_booted()
            for pid, index, _started, status in self._reap():
                booted = self._booted(pid)
                if self.stopping:
                    break
                if pid in self.retiring:
                    self.retiring.discard(pid)
                    continue
                if pid in self.incoming and not booted:
                    self._reload_failed(pid, status)
                    continue
                self.incoming.discard(pid)
                if pid in self.outgoing:
                    # An old worker died during a reload: its new one is on its way.
                    self.outgoing.discard(pid)
                    continue
                if not booted:
                    log.error("listener worker failed to boot; stopping",
                              extra={"pid": pid, "status": status})
                    self.stopping, code = True, 3
                    break
                log.warning("listener worker exited; starting another",
                            extra={"pid": pid, "status": status})
                self.spawn(index)
        self._terminate()
        return code

    def _reap(self) -> list[tuple[int, int, float, int]]:
        out = []
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            index, started = self.children.pop(pid, (-1, 0.0))
            if index >= 0:
                out.append((pid, index, started, status))
        return out

    def _terminate(self) -> None:
        for pid in self.children:
            _signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.opts.graceful_timeout + 2
        while self.children and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        for pid in self.children:
            _signal(pid, signal.SIGKILL)
        while self.children:
            try:
                pid, _ = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.pop(pid, None)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logs.configure(opts.log_level)
    try:
        sockets, lock = listen_sockets(opts.bind, opts.workers)
    except OSError as exc:
        log.error("cannot listen", extra={"bind": opts.bind, "fault": str(exc)})
        return 2
    try:
        return Supervisor(opts, sockets, lock).run()
    finally:
        lock.close()


if __name__ == "__main__":
    raise SystemExit(main())
