"""``python -m appliance.web.api_server``: the HTTPS API's processes (REST and ACME).

Why not gunicorn's threaded worker, which served the API before: there a connection holds
a thread from its first byte, so eight clients that send half a header (or announce a
body and send one byte) stop the API, TLS handshakes included. Here every connection
belongs to an event loop until its request has fully arrived:

* The TLS handshake (bounded by ``handshake_timeout_seconds``), reading the head (within
  ``header_timeout_seconds``) and the body (within ``timeout_seconds``, and no slower than
  ``body_min_bytes_per_second`` after a few seconds) all happen on the loop
  (:mod:`appliance.web.http11` with ``start_tls``); an idle or slow connection costs a few
  kilobytes, never a thread.
* Connections are counted before their handshake: at most ``max_connections`` per worker
  and ``max_connections_per_address`` per client address (each worker enforces its share;
  ``SO_REUSEPORT`` spreads one address's connections evenly over the workers).
* A complete request goes to the Flask app in one of ``threads`` threads. At most
  ``queue_limit`` requests wait for one; beyond that the loop answers 503 with
  Retry-After at once, and a request that waited ``deadline_seconds`` for a thread is
  answered 503 without running. The database and the token are waited on for at most
  ``deadline_seconds`` too (:class:`~appliance.runtime.Appliance` ``wait_seconds``).
* Liveness, readiness and metrics run on threads of their own, so they answer while every
  request thread waits on a locked database.

Processes: the supervisor of :mod:`appliance.web.prefork` (one ``SO_REUSEPORT`` socket
per worker, replacement of dead workers, SIGHUP reload, graceful stop).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote

from appliance import config, lint, logs
from appliance import deadline as request_deadline
from appliance.errors import ConfigError
from appliance.hsm.profile import load_profile
from appliance.runtime import Appliance, fips_table_of
from appliance.web import errors, tls_policy
from appliance.web.app import SECURITY_HEADERS, create_app
from appliance.web.hostcheck import PROBES
from appliance.web.http11 import HttpProtocol, Request, Response, ServerState, encode_headers
from appliance.web.prefork import Supervisor, listen_sockets, serve_loop
from appliance.x509 import algorithms

log = logs.get("web.api_server")

FAST_THREADS = 2  # for the probes (hostcheck.PROBES): they must not wait behind signing
SSL_SHUTDOWN_SECONDS = 2.0
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade",
                         "proxy-connection", "te", "trailer"})


@dataclass(frozen=True)
class ApiOptions:
    bind: str
    workers: int
    threads: int
    certfile: str
    keyfile: str
    cafile: str | None
    graceful_timeout: float


def parse_args(argv: list[str] | None) -> ApiOptions:
    ap = argparse.ArgumentParser(prog="python -m appliance.web.api_server",
                                 description="The HTTPS API (REST and ACME). Limits and "
                                             "deadlines: $APPLIANCE_CONFIG's service section.")
    ap.add_argument("--bind", required=True, help="HOST:PORT ([v6addr]:PORT)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--certfile", required=True)
    ap.add_argument("--keyfile", required=True)
    ap.add_argument("--ca-certs", dest="cafile", default=None,
                    help="roots a client certificate may chain to (mTLS renew/revoke)")
    ap.add_argument("--graceful-timeout", type=float, default=10.0)
    a = ap.parse_args(argv)
    if not 1 <= a.workers <= 64 or not 1 <= a.threads <= 64:
        ap.error("--workers and --threads must be 1..64")
    return ApiOptions(a.bind, a.workers, a.threads, a.certfile, a.keyfile, a.cafile,
                      a.graceful_timeout)


def tls_context(opts: ApiOptions) -> ssl.SSLContext:
    """TLS 1.2+ (versions, suites, groups: the algorithm table's, see
    :mod:`appliance.web.tls_policy`), the API's certificate; a client certificate is asked
    for but optional (it is one way to authenticate renew and revoke; the app decides what
    it proves)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_policy.apply(ctx, algorithms.current().tls)
    tls_policy.cleanup()
    ctx.load_cert_chain(opts.certfile, opts.keyfile)
    if opts.cafile:
        ctx.load_verify_locations(opts.cafile)
        ctx.verify_mode = ssl.CERT_OPTIONAL
    ctx.set_alpn_protocols(["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def json_response(status: int, code: str, message: str,
                  extra: list[tuple[str, str]] | None = None) -> Response:
    """An answer the loop gives itself (no thread): the API's JSON error shape."""
    body = json.dumps(errors.body(status, code, message)).encode()
    return Response(status, encode_headers([
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        *SECURITY_HEADERS.items(), *(extra or [])]), body)


class Counters:
    """What this worker's front did, for ``/metrics``: kept in memory (the loop must not
    write a file per refused request under a flood) and published once a second."""

    def __init__(self) -> None:
        self.refused_connections = 0  # over a connection limit
        self.busy = 0  # 503 at once: the wait queue was full
        self.expired = 0  # 503: waited for a thread past the deadline
        self.handshake_failures = 0
        self._published: tuple[int, ...] = (0, 0, 0, 0)

    def publish(self, metrics: Any) -> None:
        now = (self.busy, self.expired, self.refused_connections, self.handshake_failures)
        if now == self._published or metrics is None:
            return
        self._published = now
        for name, value in zip(("appliance_api_busy_total", "appliance_api_deadline_expired_total",
                                "appliance_api_connections_refused_total",
                                "appliance_api_handshake_failures_total"), now, strict=True):
            metrics.set(name, float(value))


class TlsConnection(HttpProtocol):
    """One API connection: counted (per address) before its TLS handshake, the handshake
    on the loop, then :class:`HttpProtocol`'s framing, limits and timeouts."""

    def __init__(self, state: ApiState) -> None:
        super().__init__(state)
        self.api = state
        self.address = "?"
        self.port = 0
        self.peer_der: bytes | None = None
        self._counted = False
        # Application data can arrive before ``start_tls`` returns to us (the handshake is
        # done, our coroutine not yet resumed): it waits here, so that nothing is parsed,
        # and no answer written, before ``transport`` is the TLS one.
        self._tls_ready = False
        self._requests = 0
        self._early: list[bytes] = []
        self._early_bytes = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        api = self.api
        peer = transport.get_extra_info("peername")
        self.address = str(peer[0]) if peer else "?"
        self.port = int(peer[1]) if peer and len(peer) > 1 else 0
        if len(api.connections) >= api.max_connections or \
                api.per_address.get(self.address, 0) >= api.address_limit:
            api.counters.refused_connections += 1
            if api.counters.refused_connections % 1000 == 1:
                log.warning("connection limit reached; refusing connections",
                            extra={"address": self.address,
                                   "per_address": api.address_limit,
                                   "per_worker": api.max_connections})
            cast(asyncio.Transport, transport).abort()
            return
        self._counted = True
        api.per_address[self.address] = api.per_address.get(self.address, 0) + 1
        api.connections.add(self)
        self.transport = transport  # type: ignore[assignment]  # raw until the handshake
        self.deadline = api.now + api.handshake_timeout + 1  # start_tls enforces it
        cast(asyncio.Transport, transport).pause_reading()
        asyncio.get_running_loop().create_task(self._handshake(transport))

    async def _handshake(self, raw: asyncio.BaseTransport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(raw, self, self.api.tls,  # type: ignore[arg-type]
                                       server_side=True,
                                       ssl_handshake_timeout=self.api.handshake_timeout,
                                       # a closed connection waits this long at most for
                                       # the client's close_notify (uncounted meanwhile)
                                       ssl_shutdown_timeout=SSL_SHUTDOWN_SECONDS)
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError):
            self.api.counters.handshake_failures += 1
            raw.close()
            self._release()
            return
        if tls is None:  # the connection ended during the handshake
            self._release()
            return
        self.transport = tls
        obj = tls.get_extra_info("ssl_object")
        if obj is not None:
            self.peer_der = obj.getpeercert(binary_form=True)
        self.deadline = time.monotonic() + self.state.keepalive
        self._tls_ready = True
        early, self._early = self._early, []
        for data in early:
            super().data_received(data)

    def data_received(self, data: bytes) -> None:
        if self._tls_ready:
            super().data_received(data)
            return
        self._early.append(data)
        self._early_bytes += len(data)
        # More than a request's worth: not a client we want.
        if self._early_bytes > self.state.body_limit + 2 * 65_536 and self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._release()

    def on_message_begin(self) -> None:
        self._requests += 1
        super().on_message_begin()

    def shutdown(self) -> None:
        """Graceful stop (SIGTERM, a SIGHUP reload): a connection that has not sent its
        first request yet (it may be in its handshake) is still answered once, then
        closed; any other is closed as :class:`HttpProtocol` does."""
        if self._requests == 0 and not self.closing:
            self.last_request = True  # answered with Connection: close
            return
        super().shutdown()

    def _release(self) -> None:
        if self._counted:
            self._counted = False
            api = self.api
            api.connections.discard(self)
            left = api.per_address.get(self.address, 1) - 1
            if left > 0:
                api.per_address[self.address] = left
            else:
                api.per_address.pop(self.address, None)


class ApiState(ServerState):
    def __init__(self, front: ApiFront, tls: ssl.SSLContext, svc: Any, workers: int) -> None:
        super().__init__(front, svc.max_request_bytes, bad_request=front.bad_request,
                         keepalive=svc.keepalive_seconds,
                         request_timeout=float(svc.timeout_seconds),
                         head_timeout=svc.header_timeout_seconds,
                         min_body_rate=float(svc.body_min_bytes_per_second),
                         keep_headers=True, max_connections=svc.max_connections)
        self.tls = tls
        self.handshake_timeout = svc.handshake_timeout_seconds
        self.address_limit = max(1, math.ceil(svc.max_connections_per_address / workers))
        self.per_address: dict[str, int] = {}
        self.counters = front.counters

    def protocol(self) -> HttpProtocol:
        return TlsConnection(self)


class ApiFront:
    """The handler: admission (queue bound, deadline), then the WSGI app on a thread."""

    def __init__(self, wsgi: Any, loop: asyncio.AbstractEventLoop, svc: Any, threads: int,
                 server: tuple[str, int]) -> None:
        self.wsgi = wsgi
        self.loop = loop
        self.work = ThreadPoolExecutor(threads, thread_name_prefix="api")
        self.fast = ThreadPoolExecutor(FAST_THREADS, thread_name_prefix="api-health")
        self.capacity = threads + svc.queue_limit
        self.deadline = float(svc.deadline_seconds)
        self.retry_after = str(svc.retry_after_seconds)
        self.server = server
        self.body_limit = int(svc.max_request_bytes)
        self.inflight = 0  # admitted, not yet answered (touched on the loop only)
        self.counters = Counters()

    def __call__(self, req: Request) -> Response | asyncio.Future[Response]:
        if req.path in PROBES:
            return self.loop.run_in_executor(self.fast, self.call, req, None)
        if self.inflight >= self.capacity:
            self.counters.busy += 1
            return self.busy("every worker thread is busy and the wait queue is full")
        self.inflight += 1
        fut = self.loop.run_in_executor(self.work, self.call, req,
                                        time.monotonic() + self.deadline)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, _fut: object) -> None:
        self.inflight -= 1

    def busy(self, why: str) -> Response:
        return json_response(503, "busy", f"{why}; try again later",
                             [("Retry-After", self.retry_after)])

    def bad_request(self, _target: str, reason: str) -> Response:
        return json_response(400, "bad_request", reason)

    def shutdown(self) -> None:
        self.work.shutdown(wait=False, cancel_futures=True)
        self.fast.shutdown(wait=False, cancel_futures=True)

    def call(self, req: Request, queued_until: float | None) -> Response:
        if queued_until is not None and time.monotonic() > queued_until:
            self.counters.expired += 1  # benign race: an approximate counter
            return self.busy(f"no worker thread was free within {self.deadline:g}s")
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           _exc_info: Any = None) -> Any:
            started[:] = [status, headers]
            return lambda _data: None

        # Every wait below (database lock, token session) ends by the request's deadline.
        with request_deadline.until(queued_until):
            result = self.wsgi(self.environ(req), start_response)
            try:
                body = b"".join(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
        status, headers = started
        out = [(k, v) for k, v in headers
               if k.lower() not in _HOP_BY_HOP and k.lower() != "content-length"]
        out.append(("Content-Length", str(len(body))))
        return Response(int(status[:3]), encode_headers(out),
                        b"" if req.method == "HEAD" else body)

    def environ(self, req: Request) -> dict[str, Any]:
        """PEP 3333's environ for a request that has fully arrived. Header names with an
        underscore are dropped (they would alias a dashed one: header smuggling)."""
        body = req.body or b""
        # Over the limit (drained, not kept): the app answers 413 in its own dialect (JSON,
        # or an ACME problem document) from the length alone.
        length = len(body) if req.body is not None else self.body_limit + 1
        conn = req.connection
        env: dict[str, Any] = {
            "REQUEST_METHOD": req.method, "SCRIPT_NAME": "",
            "PATH_INFO": unquote(req.path, "latin-1"),
            # As sent: the host check reads an absolute-form target's authority here.
            "RAW_URI": req.absolute or req.path + ("?" + req.query if req.query else ""),
            "QUERY_STRING": req.query, "SERVER_PROTOCOL": f"HTTP/{req.version}",
            "SERVER_NAME": self.server[0], "SERVER_PORT": str(self.server[1]),
            "REMOTE_ADDR": conn.address if isinstance(conn, TlsConnection) else "",
            "REMOTE_PORT": str(conn.port) if isinstance(conn, TlsConnection) else "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "https",
            "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": True, "wsgi.run_once": False,
            "wsgi.input_terminated": True, "CONTENT_LENGTH": str(length),
            "appliance.peer_certificate": conn.peer_der
            if isinstance(conn, TlsConnection) else None,
        }
        for raw_name, raw_value in req.headers or ():
            name = raw_name.decode("latin-1")
            if "_" in name:
                continue
            value = raw_value.decode("latin-1")
            key = name.upper().replace("-", "_")
            if key == "CONTENT_TYPE":
                env["CONTENT_TYPE"] = value
                continue
            if key == "CONTENT_LENGTH":
                continue  # the body as received is what counts
            key = "HTTP_" + key
            env[key] = f"{env[key]},{value}" if key in env else value
        return env


def _split_bind(bind: str) -> tuple[str, int]:
    host, _, port = bind.rpartition(":")
    return host.strip("[]"), int(port)


def worker(sock: Any, opts: ApiOptions, supervisor: int) -> int:
    """One API worker: its own Appliance (token sessions, database) after the fork.

    The standard library's event loop, not uvloop: a connection's TLS starts with
    ``start_tls`` from ``connection_made``, which must keep the raw bytes (the ClientHello)
    unread until TLS owns the transport. uvloop starts reading after ``connection_made``
    even when the protocol paused it there, so under load the ClientHello reached the
    HTTP parser (seen here: clients got a plaintext 400, "wrong version number"); the
    standard loop honours the pause."""
    settings = config.load(config.locate(None, None))
    logs.configure(settings.config.logging.level)
    svc = settings.config.service
    app = Appliance(settings, wait_seconds=svc.deadline_seconds)
    flask_app = create_app(app)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    front = ApiFront(flask_app, loop, svc, opts.threads, _split_bind(opts.bind))
    state = ApiState(front, tls_context(opts), svc, opts.workers)

    def publish() -> None:
        health = flask_app.extensions.get("health")
        front.counters.publish(health.metrics if health is not None else None)
        loop.call_later(1.0, publish)

    loop.call_later(1.0, publish)
    try:
        serve_loop(loop, state, state.protocol, sock, opts.graceful_timeout, supervisor)
    finally:
        front.shutdown()
        app.close()
    return 0


def _install_table() -> None:
    """The algorithm table of the configured mode, before the first TLS context (and so
    before the fork): in FIPS mode the process re-executes itself once under an OpenSSL
    configuration written from the table (its TLS 1.3 suites and groups)."""
    try:
        settings = config.load(config.locate(None, None))
    except Exception:
        return
    if settings.config.fips.enabled:
        algorithms.install(fips_table_of(load_profile(settings.hsm_profile_path)))


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    logs.configure("WARNING")
    _install_table()
    tls_policy.reexec_with_openssl_conf(algorithms.current().tls,
                                        sys.argv[1:] if argv is None else argv)
    # Code only, before the fork (no token session, no database connection: those are each
    # worker's own): every worker starts with the application imported (this module
    # imports it) and pkilint's validator built, instead of building it on its first request.
    lint.warm()
    try:
        tls_context(opts)  # unreadable certificate or key: fail here, not in every worker
        sockets, lock = listen_sockets(opts.bind, opts.workers)
    except (OSError, ssl.SSLError, ConfigError) as exc:
        log.error("cannot serve the API", extra={"bind": opts.bind, "fault": str(exc)})
        return 2
    try:
        return Supervisor(opts, sockets, lock, worker).run()
    finally:
        lock.close()


if __name__ == "__main__":
    raise SystemExit(main())
