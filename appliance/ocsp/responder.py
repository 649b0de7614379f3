"""The OCSP responder: looks pre-signed responses up (RFC 6960, RFC 5019); no Flask.

It holds no key and signs nothing. :meth:`Responder.handle` knows nothing of the
HTTP server; ``Responder`` itself is the WSGI app, and
:mod:`appliance.web.public_asgi` calls ``handle`` from ASGI. Per request:
decode (GET base64 path or POST body), read the first CertID, find the issuing
CA by (hash algorithm, issuer name hash, issuer key hash) in a per-process
table of every authority, then ask the
:class:`~appliance.ocsp.cache.ResponseStore` for the serial.

* malformed → HTTP 400, ``malformedRequest``; a POST body over 10,000 bytes → 400;
* unknown issuer, unknown serial (or one the CA never issued, or long expired)
  → HTTP 200 ``unauthorized``, ``Cache-Control: max-age=0, no-cache``;
* ours but nothing servable (not signed yet, status changed and not re-signed,
  past nextUpdate) → HTTP 200 ``tryLater``, no-cache, logged;
* success: the pre-signed DER with ``Last-Modified`` = thisUpdate,
  ``Expires`` = nextUpdate, ``Cache-Control: max-age=<to nextUpdate>, public,
  no-transform, must-revalidate`` and a strong ``ETag``; ``If-None-Match`` → 304.
* Nonces are ignored: every client gets the same cacheable bytes.

``/metrics`` (Prometheus text) counts answers by status and cache layer, has a
histogram of the age of served responses, and (read from the database, at most
every 15 s) the pre-signer's state: responses by status, the oldest one, the
earliest nextUpdate and certificates still without a response. Counters are
per process (label ``worker``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import threading
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from cryptography import x509
from sqlalchemy import select

from appliance import logs
from appliance.fips.selftest import NodeWatch
from appliance.ocsp import cache
from appliance.ocsp.certid import cert_id_hashes
from appliance.ocsp.request import MAX_REQUEST_BYTES, CertId, MalformedRequest, first_cert_id
from appliance.runtime import Appliance
from appliance.store.models import Authority

log = logs.get("ocsp.responder")

StartResponse = Callable[..., Any]

# OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED } for the unsuccessful statuses.
MALFORMED: Final = bytes.fromhex("30030a0101")
INTERNAL_ERROR: Final = bytes.fromhex("30030a0102")
TRY_LATER: Final = bytes.fromhex("30030a0103")
UNAUTHORIZED: Final = bytes.fromhex("30030a0106")
CONTENT_TYPE: Final = "application/ocsp-response"
NO_CACHE: Final = "max-age=0, no-cache"
ISSUER_RELOAD_SECONDS: Final = 30.0
DB_METRICS_SECONDS: Final = 15.0
PARSED_ENTRIES: Final = 16_384
PARSED_KEY_MAX: Final = 512  # longer requests are parsed every time (memo <= ~10 MB)
AGE_BUCKETS: Final = (3600, 6 * 3600, 12 * 3600, 86400, 2 * 86400, 3 * 86400, 4 * 86400,
                      7 * 86400, 10 * 86400)
PREFIX: Final = "/ocsp"
_MAX_B64: Final = (MAX_REQUEST_BYTES * 4) // 3 + 4
_PLAIN: Final = re.compile(r"[A-Za-z0-9+_-][A-Za-z0-9+/_-]*={0,2}")  # no leading "/"


@dataclass(frozen=True, slots=True)
class Reply:
    status: str  # "200 OK"
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def code(self) -> int:
        return int(self.status[:3])

    @property
    def head(self) -> bytes:
        """The headers as HTTP/1.1 lines."""
        return "".join(f"{k}: {v}\r\n" for k, v in self.headers).encode("latin-1")


@dataclass(frozen=True, slots=True)
class _Parsed:
    """What a request asks, as the lookup needs it (memoised per request bytes)."""

    hash_name: str | None
    issuer: tuple[str, bytes, bytes]  # the key of the issuer table
    serial: int
    serial_hex: str


def read_wsgi_body(environ: dict[str, Any]) -> bytes | None:
    """A POST body of at most MAX_REQUEST_BYTES; None if larger (nothing more is read)."""
    length_text = environ.get("CONTENT_LENGTH") or ""
    stream = environ["wsgi.input"]
    if length_text:
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length <= 0 or length > MAX_REQUEST_BYTES:
            return None
        body: bytes = stream.read(length)
        return body if len(body) == length else None
    body = stream.read(MAX_REQUEST_BYTES + 1)  # chunked: read no more than allowed
    return body if 0 < len(body) <= MAX_REQUEST_BYTES else None


class Metrics:
    """Counters of one process; a lock per update costs ~0.1 µs."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[tuple[str, str], int] = {}  # (method, status) -> answers
        self.age_counts = [0] * (len(AGE_BUCKETS) + 1)
        self.age_sum = 0.0

    def count(self, method: str, status: str, age: float | None = None) -> None:
        key = (method, status)
        with self.lock:
            self.counts[key] = self.counts.get(key, 0) + 1
            if age is not None:
                self.age_counts[bisect_left(AGE_BUCKETS, age)] += 1
                self.age_sum += age

    def totals(self) -> tuple[dict[str, int], dict[str, int]]:
        """(answers by status, requests by method)."""
        with self.lock:
            counts = dict(self.counts)
        by_status: dict[str, int] = {}
        by_method: dict[str, int] = {}
        for (method, status), n in counts.items():
            by_status[status] = by_status.get(status, 0) + n
            by_method[method] = by_method.get(method, 0) + n
        return by_status, by_method


class Responder:
    def __init__(self, app: Appliance, store: cache.ResponseStore | None = None) -> None:
        self.app = app
        self.store = store or cache.ResponseStore(app)
        self.metrics = Metrics()
        self._issuers: dict[tuple[str, bytes, bytes], frozenset[int]] = {}
        self._issuers_at = 0.0
        self._issuers_lock = threading.Lock()
        self._db_metrics: tuple[float, str] = (0.0, "")
        # GET path / POST body -> its CertID: a memo of a pure function of the request
        # bytes (decoding and DER-reading are most of a request's cost, and clients repeat
        # the same request: RFC 5019 makes them identical). It holds no status and no
        # answer, so it can never make a revoked certificate look good. Bounded: only
        # requests up to PARSED_KEY_MAX octets, cleared when full (a flood of distinct
        # requests only makes it useless, never large).
        self._parsed: dict[str | bytes, _Parsed] = {}
        # FIPS mode: the node's error state (a failed self-test): 503, tryLater, until restart
        self.fips_watch = (NodeWatch(app, app.fips_state)
                           if app.settings.config.fips.enabled else None)
        self.load_issuers()

    # -- issuers --------------------------------------------------------------------------

    def load_issuers(self) -> None:
        """(hash name, issuer name hash, issuer key hash) → the authorities with that name
        and key (an intermediate and its cross-certificate share them)."""
        table: dict[tuple[str, bytes, bytes], set[int]] = {}
        with self.app.db.sessions() as db:
            rows = db.execute(select(Authority.id, Authority.certificate_der)).all()
        for authority_id, der in rows:
            try:
                hashes = cert_id_hashes(x509.load_der_x509_certificate(der))
            except Exception:
                log.warning("authority certificate unreadable", extra={"id": authority_id})
                continue
            for name, (name_hash, key_hash) in hashes.items():
                table.setdefault((name, name_hash, key_hash), set()).add(authority_id)
        with self._issuers_lock:
            self._issuers = {k: frozenset(v) for k, v in table.items()}
            self._issuers_at = time.monotonic()

    def issuer_ids(self, cid: CertId) -> frozenset[int] | None:
        return self._issuer_ids((cid.hash_name or "", cid.issuer_name_hash,
                                 cid.issuer_key_hash))

    def _issuer_ids(self, key: tuple[str, bytes, bytes]) -> frozenset[int] | None:
        found = self._issuers.get(key)
        if found is None and time.monotonic() - self._issuers_at > ISSUER_RELOAD_SECONDS:
            self.load_issuers()  # a CA added since: seen within ISSUER_RELOAD_SECONDS
            found = self._issuers.get(key)
        return found

    # -- requests (any server) --------------------------------------------------------------

    def handle(self, method: str, raw_path: str, body: bytes | None,
               if_none_match: str | None = None) -> Reply:
        """The reply to one request. ``raw_path`` is the path as sent (not percent-decoded);
        ``body`` is the POST body, or None when it was over the limit or unreadable."""
        out = self.decide(method, raw_path, body, if_none_match)
        if isinstance(out, Reply):
            return out
        entry, sha256, max_age, not_modified = out
        headers = [
            ("Last-Modified", entry.last_modified),
            ("Expires", entry.expires),
            ("Cache-Control", f"max-age={max_age}, public, no-transform, must-revalidate"),
            ("ETag", entry.etag_sha256 if sha256 else entry.etag),
        ]
        if not_modified:
            return Reply("304 Not Modified", headers, b"")
        der = entry.der_sha256 if sha256 else entry.der
        assert der is not None
        return Reply("200 OK", [("Content-Type", CONTENT_TYPE),
                                ("Content-Length", str(len(der))), *headers],
                     b"" if method == "HEAD" else der)

    def wire(self, method: str, raw_path: str, body: bytes | None,
             if_none_match: str | None = None) -> tuple[int, bytes, bytes]:
        """:meth:`handle` for an HTTP/1.1 server that writes bytes: (status, the header
        lines, CRLF-terminated, body). The same decision; only the successful answer's
        headers come pre-encoded from the cache entry (:attr:`cache.Entry.head`)."""
        out = self.decide(method, raw_path, body, if_none_match)
        if isinstance(out, Reply):
            return out.code, out.head, out.body
        entry, sha256, max_age, not_modified = out
        cc = b"Cache-Control: max-age=%d, public, no-transform, must-revalidate\r\n" % max_age
        if not_modified:
            return 304, entry.head_304_sha256 + cc if sha256 else entry.head_304 + cc, b""
        if sha256:
            der = entry.der_sha256
            assert der is not None
            return 200, entry.head_sha256 + cc, b"" if method == "HEAD" else der
        return 200, entry.head + cc, b"" if method == "HEAD" else entry.der

    def decide(self, method: str, raw_path: str, body: bytes | None,
               if_none_match: str | None) -> Reply | tuple[cache.Entry, bool, int, bool]:
        """A failure :class:`Reply`, or what to serve: (entry, SHA-256 CertID?, max-age,
        304?). Every rule lives here, whichever server asked."""
        if self.fips_watch is not None and self.fips_watch.failed():
            return self._fail(method, "503 Service Unavailable", TRY_LATER, "fips_error")
        if method == "POST":
            if raw_path.rstrip("/") != PREFIX or not body:
                return self._fail(method, "400 Bad Request", MALFORMED, "malformed")
            key: str | bytes = body
        elif method in ("GET", "HEAD"):
            key = raw_path
        else:
            self.metrics.count(method, "method_not_allowed")
            return Reply("405 Method Not Allowed", [
                ("Allow", "GET, HEAD, POST"), ("Content-Type", "text/plain"),
                ("Content-Length", "0")], b"")
        parsed = self._parsed.get(key)
        if parsed is None:
            data = body if isinstance(key, bytes) else decode_get(raw_path)
            if data is None:
                return self._fail(method, "400 Bad Request", MALFORMED, "malformed")
            try:
                cid = first_cert_id(data)
            except MalformedRequest:
                return self._fail(method, "400 Bad Request", MALFORMED, "malformed")
            parsed = _Parsed(cid.hash_name, (cid.hash_name or "", cid.issuer_name_hash,
                                             cid.issuer_key_hash), cid.serial,
                             f"{cid.serial:x}" if cid.serial > 0 else "")
            if len(key) <= PARSED_KEY_MAX:
                if len(self._parsed) >= PARSED_ENTRIES:
                    self._parsed.clear()
                self._parsed[key] = parsed
        try:
            return self._answer(method, parsed, if_none_match)
        except Exception:
            log.exception("OCSP lookup failed")
            return self._fail(method, "500 Internal Server Error", INTERNAL_ERROR,
                              "internalError")

    def _answer(self, method: str, req: _Parsed, if_none_match: str | None
                ) -> Reply | tuple[cache.Entry, bool, int, bool]:
        ids = self._issuer_ids(req.issuer) if req.hash_name else None
        if ids is None or req.serial <= 0:
            return self._fail(method, "200 OK", UNAUTHORIZED, "unauthorized")
        found = self.store.lookup(req.serial_hex, ids)
        if isinstance(found, str):
            if found == cache.UNKNOWN:
                return self._fail(method, "200 OK", UNAUTHORIZED, "unauthorized")
            return self._fail(method, "200 OK", TRY_LATER, "tryLater")
        sha256 = req.hash_name == "sha256"
        now = time.time()
        max_age = int(found.next_update - now)
        if (found.der_sha256 is None and sha256) or max_age <= 0:
            log.warning("no servable response", extra={"serial": found.serial_hex})
            return self._fail(method, "200 OK", TRY_LATER, "tryLater")
        if if_none_match:
            etag = found.etag_sha256 if sha256 else found.etag
            if if_none_match.strip() == "*" or etag in (t.strip() for t in
                                                         if_none_match.split(",")):
                self.metrics.count(method, "not_modified")
                return found, sha256, max_age, True
        self.metrics.count(method, found.status, now - found.this_update)
        return found, sha256, max_age, False

    def _fail(self, method: str, status: str, body: bytes, what: str) -> Reply:
        self.metrics.count(method, what)
        return Reply(status, [("Content-Type", CONTENT_TYPE), ("Content-Length", str(len(body))),
                              ("Cache-Control", NO_CACHE)], b"" if method == "HEAD" else body)

    # -- WSGI -----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse
                 ) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        body = read_wsgi_body(environ) if method == "POST" else None
        reply = self.handle(method, _raw_path(environ), body,
                            environ.get("HTTP_IF_NONE_MATCH"))
        start_response(reply.status, reply.headers)
        return [reply.body]

    # -- /metrics and /health ---------------------------------------------------------------

    def health(self) -> bool:
        try:
            self.store.reader.row("0")
            return True
        except Exception:
            log.exception("OCSP health check: database unreadable")
            return False

    def metrics_text(self) -> str:
        worker = str(os.getpid())
        m = self.metrics
        out = ["# HELP ocsp_responses_total OCSP answers by status (per worker process).",
               "# TYPE ocsp_responses_total counter"]
        responses, methods = m.totals()
        with m.lock:
            ages = list(m.age_counts)
            age_sum = m.age_sum
        for status, n in sorted(responses.items()):
            out.append(f'ocsp_responses_total{{worker="{worker}",status="{status}"}} {n}')
        out += ["# HELP ocsp_requests_total OCSP requests by HTTP method.",
                "# TYPE ocsp_requests_total counter"]
        for meth, n in sorted(methods.items()):
            out.append(f'ocsp_requests_total{{worker="{worker}",method="{meth}"}} {n}')
        out += ["# HELP ocsp_cache_hits_total Served answers by the layer they came from.",
                "# TYPE ocsp_cache_hits_total counter"]
        for layer, n in sorted(self.store.hits.items()):
            out.append(f'ocsp_cache_hits_total{{worker="{worker}",layer="{layer}"}} {n}')
        out += ["# HELP ocsp_memory_entries Responses held in this process's memory.",
                "# TYPE ocsp_memory_entries gauge",
                f'ocsp_memory_entries{{worker="{worker}"}} {len(self.store.memory)}']
        if self.store.redis is not None:
            out += ["# HELP ocsp_redis_errors_total Redis operations that failed.",
                    "# TYPE ocsp_redis_errors_total counter",
                    f'ocsp_redis_errors_total{{worker="{worker}"}} {self.store.redis.errors}']
        out += ["# HELP ocsp_response_age_seconds Age (now - thisUpdate) of served responses.",
                "# TYPE ocsp_response_age_seconds histogram"]
        running = 0
        for bound, n in zip((*AGE_BUCKETS, "+Inf"), ages, strict=True):
            running += n
            out.append(f'ocsp_response_age_seconds_bucket{{worker="{worker}",le="{bound}"}} '
                       f"{running}")
        out.append(f'ocsp_response_age_seconds_sum{{worker="{worker}"}} {age_sum:.0f}')
        out.append(f'ocsp_response_age_seconds_count{{worker="{worker}"}} {running}')
        out.append(self._database_metrics())
        return "\n".join(out) + "\n"

    def _database_metrics(self) -> str:
        at, text = self._db_metrics
        if text and time.monotonic() - at < DB_METRICS_SECONDS:
            return text
        try:
            text = presigned_state(self.store.reader)
        except Exception:
            log.exception("OCSP metrics: database unreadable")
            text = "# pre-signer state unavailable"
        self._db_metrics = (time.monotonic(), text)
        return text


def presigned_state(reader: cache.Reader) -> str:
    """Gauges of the pre-signed responses, read from the database (no lock taken)."""
    now = time.time()
    by_status = reader.query("SELECT status, count(*) FROM ocsp_responses GROUP BY status")
    ((oldest, earliest),) = reader.query(
        "SELECT min(this_update), min(next_update) FROM ocsp_responses")
    ((missing,),) = reader.query(
        "SELECT count(*) FROM certificates c LEFT JOIN ocsp_responses r "
        "ON r.certificate_id = c.id WHERE c.status IN ('issued', 'revoked') "
        "AND c.not_after > {p} AND r.certificate_id IS NULL", (reader.timestamp(now),))
    out = ["# HELP ocsp_presigned_responses Pre-signed responses in the database by status.",
           "# TYPE ocsp_presigned_responses gauge"]
    for status, n in sorted(by_status):
        out.append(f'ocsp_presigned_responses{{status="{status}"}} {n}')
    out += ["# HELP ocsp_presigned_missing Valid certificates without a pre-signed response.",
            "# TYPE ocsp_presigned_missing gauge", f"ocsp_presigned_missing {missing or 0}"]
    if oldest is not None:
        age = now - cache.timestamp(oldest)
        left = cache.timestamp(earliest) - now
        out += ["# HELP ocsp_presigned_oldest_age_seconds Age of the oldest pre-signed "
                "response (now - thisUpdate).",
                "# TYPE ocsp_presigned_oldest_age_seconds gauge",
                f"ocsp_presigned_oldest_age_seconds {age:.0f}",
                "# HELP ocsp_presigned_earliest_next_update_seconds Seconds to the earliest "
                "nextUpdate (negative: expired responses are waiting).",
                "# TYPE ocsp_presigned_earliest_next_update_seconds gauge",
                f"ocsp_presigned_earliest_next_update_seconds {left:.0f}"]
    return "\n".join(out)


def _raw_path(environ: dict[str, Any]) -> str:
    """The path as sent (gunicorn's RAW_URI: no percent-decoding has happened yet)."""
    raw = environ.get("RAW_URI")
    if raw:
        path = urlsplit(raw).path if "://" in raw[:10] else raw.split("?", 1)[0]
        return str(path)
    return str(environ.get("PATH_INFO", ""))


def decode_get(path: str, *, fast: bool = True) -> bytes | None:
    """The DER request in a GET path ``/ocsp/<base64>``; None if it is not one.

    Tolerated: percent-encoding (also twice), ``+`` turned into a space, URL-safe
    alphabet, missing padding, extra slashes before the request (``/ocsp//MEIw``).
    """
    if not path.startswith(PREFIX):
        return None
    if fast and path.startswith("/ocsp/") and len(path) <= _MAX_B64 and path.isascii() \
            and _PLAIN.fullmatch(path, 6):
        # The common case (RFC 5019 clients, CDNs): nothing to unescape; any other shape
        # takes the general path below, which accepts a superset of this.
        text = path[6:].replace("-", "+").replace("_", "/")
        try:
            return binascii.a2b_base64(text + "=" * (-len(text) % 4), strict_mode=True)
        except (binascii.Error, ValueError):
            return None
    text = path[len(PREFIX):]
    for _ in range(2):
        if "%" not in text:
            break
        text = unquote(text)
    text = text.replace(" ", "+").lstrip("/").replace("-", "+").replace("_", "/")
    text = "".join(text.split())
    if not text or len(text) > (MAX_REQUEST_BYTES * 4) // 3 + 4:
        return None
    text += "=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def make_responder(app: Appliance) -> Responder:
    return Responder(app)
