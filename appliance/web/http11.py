"""A minimal HTTP/1.1 server: an asyncio ``Protocol`` around the httptools parser.

Why not uvicorn/ASGI for the relying-party listener: an OCSP answer is a dictionary
lookup (~2 µs), so the HTTP layer is nearly all of the cost. Measured on the 2-core
development machine (``bench/ocsp_load.sh``), uvicorn's ASGI layer (scope dicts,
receive/send coroutines, a task per request) capped the responder at ~16-25k req/s
while nginx served the same bytes at ~84k. This module keeps only what the listener
needs: httptools parses (llhttp, the parser Node.js uses; it also validates framing,
chunked bodies and Content-Length), the handler answers synchronously on the event
loop or returns a future (work that must not block the loop), and replies are written
as one ``bytes`` per response.

What it enforces (each with a clear 400 and the connection closed):

* request line (URL) at most :data:`MAX_URL` octets, at most :data:`MAX_HEADERS` header
  fields of at most :data:`MAX_HEADER_BYTES` octets each, the head at most
  :data:`MAX_HEAD` octets (give or take one read);
* bodies: a handler-chosen limit; a larger body is drained (not stored) and answered
  by the handler as oversized, and beyond :data:`MAX_DRAIN` the connection is dropped;
* a request must arrive within ``request_timeout`` seconds of its first byte, its head
  within ``head_timeout``, and its body no slower than ``min_body_rate`` octets a second
  (after a grace of :data:`BODY_GRACE` seconds); an idle keep-alive connection is closed
  after ``keepalive`` seconds (one sweep per second, no timer per request);
* ``Expect: 100-continue`` is answered ``100 Continue`` (curl waits a second without it);
* pipelined requests are answered in order; reading pauses while an answer is
  outstanding or the client does not read what it is sent (no unbounded buffers);
* at most ``max_connections`` connections per process.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Final, cast

import httptools

from appliance import logs

log = logs.get("web.http11")

MAX_URL: Final = 8190
MAX_HEADERS: Final = 100
MAX_HEADER_BYTES: Final = 8190
MAX_HEAD: Final = 65_536  # request line and header fields together
MAX_DRAIN: Final = 1 << 20  # body octets read and dropped after the limit, then close
LINGER: Final = 2.0  # seconds a rejected connection drains before it is closed
BODY_GRACE: Final = 5.0  # seconds of a body before the minimum rate applies

_STATUS_LINES: Final = {code: b"HTTP/1.1 %d %s\r\n" % (code, reason) for code, reason in (
    (200, b"OK"), (201, b"Created"), (204, b"No Content"), (304, b"Not Modified"),
    (400, b"Bad Request"), (404, b"Not Found"),
    (401, b"Unauthorized"), (403, b"Forbidden"), (405, b"Method Not Allowed"),
    (408, b"Request Timeout"), (413, b"Content Too Large"), (429, b"Too Many Requests"),
    (500, b"Internal Server Error"),
    (503, b"Service Unavailable"))}


@dataclass(slots=True)
class Request:
    """One parsed request. ``path`` is the request target as sent (not percent-decoded),
    without the query; ``body`` is None when it was larger than the handler's limit;
    ``headers`` (as sent, in order) only when the server keeps them (``keep_headers``)."""

    method: str
    path: str
    query: str
    if_none_match: str | None
    body: bytes | None
    headers: list[tuple[bytes, bytes]] | None = None
    version: str = "1.1"
    connection: HttpProtocol | None = None
    absolute: str | None = None  # the whole target when it came in absolute-form


@dataclass(slots=True)
class Response:
    status: int
    head: bytes  # the header lines, each CRLF-terminated; Content-Length included
    body: bytes


def encode_headers(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{k}: {v}\r\n" for k, v in headers).encode("latin-1")


# The handler: a Response now, or a future of one (run elsewhere; answered in order).
Handler = Callable[[Request], "Response | asyncio.Future[Response]"]
# The answer to a request that broke the framing or a limit: (target so far, reason).
BadRequest = Callable[[str, str], Response]


class ServerState:
    """What every connection of one process shares: the handler, limits, the Date header,
    the open connections (for the timeout sweep and a graceful stop)."""

    def __init__(self, handler: Handler, body_limit: int, *, bad_request: BadRequest | None = None,
                 keepalive: float = 5.0, request_timeout: float = 30.0,
                 head_timeout: float | None = None, min_body_rate: float = 0.0,
                 keep_headers: bool = False, max_connections: int = 4096) -> None:
        self.handler = handler
        self.bad_request: BadRequest = bad_request or (lambda _target, why: plain(400, why + "\n"))
        self.body_limit = body_limit
        self.keepalive = keepalive
        self.request_timeout = request_timeout
        self.head_timeout = min(head_timeout or request_timeout, request_timeout)
        self.min_body_rate = min_body_rate
        self.keep_headers = keep_headers
        self.max_connections = max_connections
        self.connections: set[HttpProtocol] = set()
        self.date = b""
        self.now = 0.0
        self.tick()

    def tick(self) -> None:
        """Refresh the clock and the Date header (once a second), and close connections
        that passed their deadline (idle keep-alive, or a request that never finished)."""
        self.now = time.monotonic()
        self.date = b"Date: " + formatdate(usegmt=True).encode() + b"\r\n"
        now = self.now
        for conn in [c for c in self.connections if c.deadline < now or c.too_slow(now)]:
            conn.timed_out()

    def protocol(self) -> HttpProtocol:
        return HttpProtocol(self)


class _Reject(Exception):
    """A request broke a limit; raised inside a parser callback, answered with 400."""


def status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    return line if line is not None else b"HTTP/1.1 %d \r\n" % status


def render(resp: Response, date: bytes, keep_alive: bool, http10: bool) -> bytes:
    """The response as bytes: status line, the handler's headers, Date, Connection."""
    if keep_alive and not http10:
        return b"".join((status_line(resp.status), resp.head, date, b"\r\n", resp.body))
    conn = b"Connection: keep-alive\r\n" if keep_alive else b"Connection: close\r\n"
    return b"".join((status_line(resp.status), resp.head, date, conn, b"\r\n", resp.body))


def plain(status: int, text: str) -> Response:
    body = text.encode()
    return Response(status, encode_headers([
        ("Content-Type", "text/plain"), ("Content-Length", str(len(body))),
        ("X-Content-Type-Options", "nosniff")]), body)


class HttpProtocol(asyncio.Protocol):
    """One client connection (see the module docstring for the rules)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.deadline = state.now + state.keepalive
        self.closing = False  # close once everything queued is written
        self.done = False  # a final answer (Connection: close) went out: ignore the rest
        self.linger = False  # close gently after a rejection (see _after_answer)
        self.paused_reading = False
        self.paused_writing = False
        self.last_request = False  # the next request is answered with Connection: close
        self.pending: deque[tuple[asyncio.Future[Response], bool, bool]] = deque()
        self._url: list[bytes] = []
        self._url_len = 0
        self._headers = 0
        self._inm: str | None = None
        self._body: list[bytes] = []
        self._body_len = 0
        self._in_head = False  # between the first octet of a request and its blank line
        self._in_body = False
        self._head_bytes = 0  # octets received while in (or waiting for) a request head
        self._started = 0.0  # when the current request's first octet came
        self._body_started = 0.0
        self._fields: list[tuple[bytes, bytes]] | None = None
        self._expect_continue = False

    # -- connection --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        if len(self.state.connections) >= self.state.max_connections:
            log.warning("connection limit reached; refusing a connection",
                        extra={"limit": self.state.max_connections})
            self.transport.abort()
            return
        self.state.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        self.closing = True
        for fut, _, _ in self.pending:
            fut.remove_done_callback(self._flush)
        self.pending.clear()

    def pause_writing(self) -> None:
        self.paused_writing = True
        self._pause()

    def resume_writing(self) -> None:
        self.paused_writing = False
        self._maybe_resume()

    def _pause(self) -> None:
        if not self.paused_reading and self.transport is not None:
            self.paused_reading = True
            self.transport.pause_reading()

    def _maybe_resume(self) -> None:
        if self.paused_reading and not self.paused_writing and not self.pending \
                and not self.closing and self.transport is not None:
            self.paused_reading = False
            self.transport.resume_reading()

    def too_slow(self, now: float) -> bool:
        """A body arriving slower than the minimum rate (slowloris with a large
        Content-Length): judged once the grace period of the body has passed."""
        rate = self.state.min_body_rate
        if not self._in_body or rate <= 0 or self.pending:
            return False
        elapsed = now - self._body_started
        return elapsed > BODY_GRACE and self._body_len < rate * (elapsed - BODY_GRACE)

    def timed_out(self) -> None:
        if self.transport is None or self.transport.is_closing():
            self.state.connections.discard(self)
            return
        if not self.done and (self._url_len or self._headers or self._in_body) \
                and not self.transport.get_write_buffer_size():
            # In the middle of a request: say so (408), unless the client is not even
            # reading what it is sent.
            self._write(render(plain(408, "request timeout\n"), self.state.date, False, False))
        if self.transport.get_write_buffer_size() > 65_536:
            self.transport.abort()  # it does not read: close() would wait on it forever
        else:
            self.transport.close()
        self.state.connections.discard(self)

    def shutdown(self) -> None:
        """Graceful stop: close now if idle, else after the answers being written."""
        self.closing = True
        if not self.pending and not self._url_len and self.transport is not None:
            self.transport.close()
            # Gone as far as the stop is concerned: a TLS close waits for the client's
            # close_notify, which an idle client does not send until it reads.
            self.state.connections.discard(self)

    # -- parsing -----------------------------------------------------------------------------

    def eof_received(self) -> bool | None:
        """The client is done sending (half-close): answer what is outstanding, then
        close; with nothing outstanding, close now."""
        if self.pending:
            self.closing = True
            self.pending[-1] = (self.pending[-1][0], False, self.pending[-1][2])
            return True
        return None

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
            if self._in_head and self._head_bytes > MAX_HEAD:
                # httptools buffers a header line until it is complete, so the per-field
                # checks alone would let one endless header grow without bound.
                raise _Reject("request head too large")
        except _Reject as exc:
            self._reject(str(exc))
        except httptools.HttpParserUpgrade:
            # An Upgrade (h2c, websocket) we do not do: the request itself was answered;
            # the rest of the stream is another protocol, so end the connection.
            self._close_after_pending()
        except httptools.HttpParserError as exc:
            reason = str(exc.__context__) if isinstance(exc.__context__, _Reject) else \
                "malformed HTTP request"
            self._reject(reason)

    def _reject(self, reason: str) -> None:
        """Answer 400 (after what is queued) and close: the stream can't be trusted now."""
        try:
            resp = self.state.bad_request(b"".join(self._url).decode("latin-1"), reason)
        except Exception:
            log.exception("bad-request handler failed")
            resp = plain(400, reason + "\n")
        fut: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        fut.set_result(resp)
        self.linger = True
        self._queue(fut, False, False)
        self._close_after_pending()

    def _close_after_pending(self) -> None:
        self.closing = True
        self._pause()
        if not self.pending and self.transport is not None:
            self.transport.close()

    def on_message_begin(self) -> None:
        self._started = self.state.now
        self.deadline = self._started + self.state.head_timeout
        self._in_head = True
        self._fields = [] if self.state.keep_headers else None
        self._expect_continue = False
        self._url.clear()
        self._url_len = 0
        self._headers = 0
        self._inm = None
        self._body.clear()
        self._body_len = 0

    def on_url(self, url: bytes) -> None:
        self._url_len += len(url)
        self._url.append(url)
        if self._url_len > MAX_URL:
            raise _Reject("request URL too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        if self._headers > MAX_HEADERS:
            raise _Reject("too many header fields")
        if len(name) + len(value) > MAX_HEADER_BYTES:
            raise _Reject("header field too large")
        if len(name) == 13 and name.lower() == b"if-none-match":
            v = value.decode("latin-1")
            self._inm = v if self._inm is None else f"{self._inm}, {v}"
        elif len(name) == 6 and name.lower() == b"expect":
            self._expect_continue = value.strip().lower() == b"100-continue"
        if self._fields is not None:
            self._fields.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._in_body = True
        self._head_bytes = 0
        self._body_started = self.state.now
        self.deadline = self._started + self.state.request_timeout
        if self._expect_continue and self.transport is not None and not self.pending \
                and self.parser.get_http_version() == "1.1":
            self._write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self._body_len += len(body)
        if self._body_len <= self.state.body_limit:
            self._body.append(body)
        elif self._body_len > self.state.body_limit + MAX_DRAIN:
            raise _Reject("request body too large")
        else:
            self._body.clear()

    def on_message_complete(self) -> None:
        self._in_body = False
        if self.done:
            return
        parser = self.parser
        target = self._url[0] if len(self._url) == 1 else b"".join(self._url)
        path, _, query = target.partition(b"?")
        absolute = None
        if not path.startswith(b"/"):  # absolute-form (via a proxy) or "*"
            path, query = _origin_form(target)
            absolute = target.decode("latin-1")
        if self._body_len > self.state.body_limit:
            body: bytes | None = None
        else:
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        keep = parser.should_keep_alive() and not self.closing and not self.last_request
        http10 = parser.get_http_version() == "1.0"
        request = Request(parser.get_method().decode("latin-1"), path.decode("latin-1"),
                          query.decode("latin-1"), self._inm, body, self._fields,
                          parser.get_http_version(), self, absolute)
        self._fields = None
        self._url.clear()
        self._url_len = 0
        self._headers = 0
        try:
            result = self.state.handler(request)
        except Exception:
            log.exception("request handler failed")
            result = plain(500, "internal error\n")
        if isinstance(result, Response) and not self.pending:
            if self.transport is not None:
                self._write(render(result, self.state.date, keep, http10))
            self._after_answer(keep)
            return
        fut: asyncio.Future[Response]
        if isinstance(result, Response):
            fut = asyncio.get_running_loop().create_future()
            fut.set_result(result)
        else:
            fut = result
        # The handler's own deadlines bound it from here; the next one starts at the answer.
        self.deadline = float("inf")
        self._queue(fut, keep, http10)
        if not keep:
            self.closing = True

    # -- answering ---------------------------------------------------------------------------

    def _queue(self, fut: asyncio.Future[Response], keep: bool, http10: bool) -> None:
        self.pending.append((fut, keep, http10))
        self._pause()  # no more requests parsed while an answer is outstanding
        fut.add_done_callback(self._flush)

    def _flush(self, _fut: object = None) -> None:
        while self.pending and self.pending[0][0].done():
            fut, keep, http10 = self.pending.popleft()
            try:
                resp = fut.result()
            except Exception:
                log.exception("request handler failed")
                resp = plain(500, "internal error\n")
            if self.transport is not None and not self.transport.is_closing():
                self._write(render(resp, self.state.date, keep, http10))
            if not keep:
                self._after_answer(False)
                return
        if not self.pending:
            self._after_answer(not self.closing)
            self._maybe_resume()

    def _after_answer(self, keep: bool) -> None:
        if not keep:
            self.closing = self.done = True
            for fut, _, _ in self.pending:
                fut.remove_done_callback(self._flush)
            self.pending.clear()
            if self.transport is None:
                return
            if self.linger and self.transport.can_write_eof():
                # Rejected mid-stream: the client may still be sending. Closing now with
                # unread data would send a RST that can destroy the 400 before it is read;
                # so send FIN, drop what still comes, and close on EOF or after LINGER.
                self.transport.write_eof()
                self.deadline = self.state.now + LINGER
                if self.paused_reading:
                    self.paused_reading = False
                    self.transport.resume_reading()
                return
            self.transport.close()
        else:
            # The clock itself, not the sweep's (up to a second old): a keep-alive
            # connection closed early races the client's next request on it.
            self.deadline = time.monotonic() + self.state.keepalive

    def _write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


def _origin_form(target: bytes) -> tuple[bytes, bytes]:
    """Path and query of an absolute-form target (``http://host/p?q``); "*" stays "*"."""
    if b"://" in target[:10]:
        try:
            url = httptools.parse_url(target)
        except httptools.HttpParserInvalidURLError:
            return target, b""
        return url.path or b"/", url.query or b""
    return target, b""
