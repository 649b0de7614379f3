"""The relying-party listener's routes on :mod:`appliance.web.http11` (``http_server: httptools``).

* ``/ocsp``, ``/ocsp/<base64>``: :meth:`Responder.handle`, synchronously on the event
  loop: a memory hit never leaves the process, a miss is one SQLite read (~10 µs,
  WAL: it takes no lock). With another database (a network round trip) every OCSP
  request runs in the thread pool instead, so the loop never waits on the network.
* everything else (``/ca``, ``/crl``, ``/metrics``, ``/health``): the WSGI app of
  :mod:`appliance.web.public` in the thread pool (rare, and they use the ORM).

The responder, the cache and every revocation rule are the same objects the WSGI and
ASGI listeners use; only the HTTP framing differs.
"""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import Executor
from typing import Any
from urllib.parse import unquote

from appliance.ocsp.responder import MALFORMED, NO_CACHE, Responder
from appliance.runtime import Appliance
from appliance.web import public
from appliance.web.http11 import Request, Response, encode_headers, plain


class PublicListener:
    def __init__(self, appliance: Appliance, loop: asyncio.AbstractEventLoop,
                 executor: Executor) -> None:
        self.responder = Responder(appliance)
        self.wsgi = public.make_app(appliance, self.responder)
        self.offload = appliance.db.dialect != "sqlite"
        # An RA node answers OCSP with its upstream CA's responses (the WSGI app proxies).
        self.proxied = appliance.settings.config.role == "ra"
        self.loop = loop
        self.executor = executor

    def __call__(self, req: Request) -> Response | asyncio.Future[Response]:
        path = req.path
        if path.startswith("/ocsp") and (len(path) == 5 or path[5] == "/") and not self.proxied:
            if self.offload:
                return self.loop.run_in_executor(self.executor, self.ocsp, req)
            return self.ocsp(req)
        return self.loop.run_in_executor(self.executor, self.other, req)

    def ocsp(self, req: Request) -> Response:
        return Response(*self.responder.wire(req.method, req.path, req.body, req.if_none_match))

    def bad_request(self, target: str, reason: str) -> Response:
        """A request that broke the HTTP framing or a limit: an OCSP ``malformedRequest``
        on the OCSP paths (what an OCSP client understands), plain text elsewhere."""
        if target.startswith("/ocsp"):
            self.responder.metrics.count("BAD", "malformed")
            return Response(400, encode_headers([
                ("Content-Type", "application/ocsp-response"),
                ("Content-Length", str(len(MALFORMED))), ("Cache-Control", NO_CACHE)]),
                MALFORMED)
        return plain(400, reason + "\n")

    def other(self, req: Request) -> Response:
        """The WSGI app for one request (its routes take no body)."""
        environ: dict[str, Any] = {
            "REQUEST_METHOD": req.method, "PATH_INFO": unquote(req.path, "latin-1"),
            "RAW_URI": req.path + ("?" + req.query if req.query else ""),
            "QUERY_STRING": req.query, "SERVER_PROTOCOL": "HTTP/1.1",
            "wsgi.input": io.BytesIO(req.body or b""), "CONTENT_LENGTH": str(len(req.body or b"")),
            "wsgi.url_scheme": "http",
        }
        if req.if_none_match is not None:
            environ["HTTP_IF_NONE_MATCH"] = req.if_none_match
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]],
                           _exc_info: Any = None) -> None:
            started[:] = [status, headers]

        data = b"".join(self.wsgi(environ, start_response))
        status, headers = started
        return Response(int(status[:3]), encode_headers(headers),
                        b"" if req.method == "HEAD" else data)
