"""The plain-HTTP listener as an ASGI app, for gunicorn's uvicorn worker
(``service.http_server: uvicorn``; the default is :mod:`appliance.web.prefork`).

Why: the OCSP lookup itself costs ~10 µs, so the HTTP server is the hot path. One
gunicorn gthread worker answers ~3,000 OCSP requests/s on the development machine;
one uvicorn worker (httptools parser, uvloop) ~7,500 with one keep-alive client
and ~18,000 with four (``bench/ocsp.py``).

* ``/ocsp``, ``/ocsp/<base64>``: :meth:`Responder.handle`, on the event loop. A
  memory hit never leaves the process; a miss reads SQLite (~10 µs) or Redis. With
  another database every OCSP request runs in a thread instead, so a network
  round trip never stalls the loop.
* everything else (``/ca``, ``/crl``, ``/metrics``, ``/health``): the WSGI app of
  :mod:`appliance.web.public`, run in a thread through a small bridge.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Awaitable, Callable
from typing import Any

from appliance.ocsp.request import MAX_REQUEST_BYTES
from appliance.ocsp.responder import Reply, Responder
from appliance.runtime import Appliance
from appliance.web import public

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
MAX_OTHER_BODY = 65_536  # the other routes take no body; read (and drop) at most this


async def read_body(receive: Receive, declared: int | None, limit: int) -> bytes | None:
    """The request body, or None when it is (declared or found) larger than ``limit``."""
    if declared is not None and declared > limit:
        return None
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None  # the client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
        if not message.get("more_body", False):
            return b"".join(parts)


async def send_reply(send: Send, status: int, headers: list[tuple[str, str]],
                     body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(k.lower().encode("latin-1"), v.encode("latin-1"))
                            for k, v in headers]})
    await send({"type": "http.response.body", "body": body})


class PublicAsgi:
    def __init__(self, appliance: Appliance) -> None:
        self.responder = Responder(appliance)
        self.wsgi = public.make_app(appliance, self.responder)
        self.appliance_role = appliance.settings.config.role
        self.offload = appliance.db.dialect != "sqlite"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if kind != "http":
            return
        path: str = scope["path"]
        if path.startswith("/ocsp") and (len(path) == 5 or path[5] == "/") \
                and self.appliance_role != "ra":  # an RA's OCSP: proxied by the WSGI app
            await self._ocsp(scope, receive, send)
        else:
            await self._bridge(scope, receive, send)

    async def _ocsp(self, scope: Scope, receive: Receive, send: Send) -> None:
        method: str = scope["method"]
        inm: str | None = None
        declared: int | None = None
        for name, value in scope["headers"]:
            if name == b"if-none-match":
                inm = value.decode("latin-1")
            elif name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = MAX_REQUEST_BYTES + 1
        body = await read_body(receive, declared, MAX_REQUEST_BYTES) if method == "POST" \
            else None
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        raw_path = raw.decode("latin-1").split("?", 1)[0]
        if self.offload:
            reply: Reply = await asyncio.to_thread(self.responder.handle, method, raw_path,
                                                   body, inm)
        else:
            reply = self.responder.handle(method, raw_path, body, inm)
        await send_reply(send, int(reply.status[:3]), reply.headers, reply.body)

    async def _bridge(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Run the WSGI app in a thread for one request (its routes take no body)."""
        body = await read_body(receive, None, MAX_OTHER_BODY) or b""
        raw: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": scope["method"], "PATH_INFO": scope["path"],
            "RAW_URI": raw.decode("latin-1"),
            "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
            "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.input": io.BytesIO(body),
            "CONTENT_LENGTH": str(len(body)), "wsgi.url_scheme": scope.get("scheme", "http"),
        }
        for name, value in scope["headers"]:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
            if key not in ("HTTP_CONTENT_LENGTH", "HTTP_CONTENT_TYPE"):
                environ[key] = value.decode("latin-1")
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           _exc_info: Any = None) -> None:
            started[:] = [status, headers]

        def run() -> bytes:
            return b"".join(self.wsgi(environ, start_response))

        data = await asyncio.to_thread(run)
        status, headers = started
        await send_reply(send, int(status[:3]), headers,
                         b"" if scope["method"] == "HEAD" else data)
