"""An RA node's relying-party listener: OCSP and CRLs are the CA's, fetched from it.

An RA signs nothing, so it has no OCSP response or CRL of its own to give: ``/ocsp`` (GET
and POST) and ``/crl/...`` on its public listener are passed to the upstream CA's public
base URL and the CA's bytes are answered unchanged (never re-signed; a relying party
verifies them with the CA's keys as always). A small cache (per process, a minute at
most, bounded in entries and bytes) keeps a burst of identical queries off the upstream.

The CA's public base URL is read from what the CA wrote from its own ``public_base_url``:
the OCSP URL of the newest certificate issued through this node, else the CRL
distribution point or caIssuers URL of the CA certificates this node imported.
The upstream away is a 503 with Retry-After, never a made-up answer.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID
from sqlalchemy import select

from appliance import logs
from appliance.ca import authorities as authz
from appliance.runtime import Appliance
from appliance.store.models import Authority, Certificate

log = logs.get("ra.proxy")
TTL_SECONDS = 60.0
BASE_TTL_SECONDS = 300.0
MAX_ENTRIES = 2048
MAX_BODY_BYTES = 1 << 20  # a CRL larger than this is not passed on by an RA
MAX_REQUEST_BYTES = 8192
TIMEOUT_SECONDS = 5.0
# .../crl/<ca>.crl, .../crl/<ca>/<shard>.crl (sharded CRLs) or .../ca/<ca>.crt
_BASE = re.compile(r"^(https?://[^/?#\s]+(?:/[^?#\s]*?)?)/(?:crl|ca)/[^/]+(?:/\d{1,4}\.crl)?$")
_PASSED_HEADERS = ("Content-Type", "Cache-Control", "Expires", "Last-Modified", "ETag")


@dataclass(frozen=True)
class Answer:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


def upstream_public_base(app: Appliance) -> str | None:
    """The CA's public base URL: from the OCSP URL of the newest certificate it issued
    through this node (its current ``public_base_url``), else from the CA certificates
    this node imported (where it was when they were made)."""
    with app.db.sessions() as db:
        newest = db.scalars(select(Certificate.der).where(Certificate.der.is_not(None))
                            .order_by(Certificate.id.desc()).limit(1)).first()
        rows = db.scalars(select(Authority).where(Authority.key_id.is_(None))
                          .order_by(Authority.id.desc())).all()
        cas = [authz.certificate(r) for r in rows]
    if newest is not None:
        with contextlib.suppress(ValueError):
            leaf = x509.load_der_x509_certificate(bytes(newest))
            for url in _urls(leaf, ocsp=True):
                if url.endswith("/ocsp") and _BASE.match(url[:-5] + "/ca/x"):
                    return url[:-5]
    for cert in cas:
        for url in _urls(cert, ocsp=False):
            m = _BASE.match(url)
            if m:
                return m.group(1)
    return None


def _urls(cert: x509.Certificate, *, ocsp: bool) -> list[str]:
    """OCSP URLs (``ocsp``) or CRL distribution points and caIssuers URLs of ``cert``."""
    urls: list[str] = []
    if not ocsp:
        with contextlib.suppress(x509.ExtensionNotFound, ValueError):
            for dp in cert.extensions.get_extension_for_class(
                    x509.CRLDistributionPoints).value:
                urls += [n.value for n in dp.full_name or []
                         if isinstance(n, x509.UniformResourceIdentifier)]
    with contextlib.suppress(x509.ExtensionNotFound, ValueError):
        wanted = AuthorityInformationAccessOID.OCSP if ocsp else \
            AuthorityInformationAccessOID.CA_ISSUERS
        urls += [a.access_location.value for a in cert.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess).value
            if a.access_method == wanted
            and isinstance(a.access_location, x509.UniformResourceIdentifier)]
    return urls


class PublicProxy:
    """``/ocsp`` and ``/crl/...`` answered with the upstream CA's bytes (see the module)."""

    def __init__(self, app: Appliance) -> None:
        self.app = app
        self._base: str | None = None
        self._base_until = 0.0
        self._cache: OrderedDict[str, tuple[float, Answer]] = OrderedDict()
        self._lock = threading.Lock()

    def base(self) -> str | None:
        """Read again every few minutes: the CA's base URL may move."""
        now = time.monotonic()
        if self._base is None or now > self._base_until:
            self._base = upstream_public_base(self.app)
            self._base_until = now + BASE_TTL_SECONDS
        return self._base

    def handle(self, method: str, path: str, body: bytes, content_type: str | None) -> Answer:
        if method not in ("GET", "HEAD", "POST") or (method == "POST" and path != "/ocsp"):
            return Answer(405, [("Allow", "GET, POST" if path == "/ocsp" else "GET")], b"")
        if len(body) > MAX_REQUEST_BYTES or len(path) > 4096:
            return Answer(413, [("Content-Type", "text/plain")], b"request too large\n")
        base = self.base()
        if base is None:
            return Answer(404, [("Content-Type", "text/plain")],
                          b"no upstream public URL is known\n")
        key = hashlib.sha256(f"{method} {path}\n".encode() + body).hexdigest()
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
        answer = self._fetch(base + path, "GET" if method == "HEAD" else method, body,
                             content_type)
        if answer.status == 200:
            with self._lock:
                self._cache[key] = (now + TTL_SECONDS, answer)
                while len(self._cache) > MAX_ENTRIES:
                    self._cache.popitem(last=False)
        return answer

    def _fetch(self, url: str, method: str, body: bytes, content_type: str | None) -> Answer:
        headers = {"Content-Type": content_type or "application/ocsp-request"} \
            if method == "POST" else {}
        req = urllib.request.Request(url, data=body if method == "POST" else None,  # noqa: S310 (https?:// only, checked)
                                     headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_SECONDS) as resp:  # noqa: S310
                data = resp.read(MAX_BODY_BYTES + 1)
                status, got = resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            data = exc.read(MAX_BODY_BYTES + 1)
            status, got = exc.code, exc.headers
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            log.warning("the upstream's public listener is unavailable",
                        extra={"error": repr(exc)[:200]})
            return Answer(503, [("Content-Type", "text/plain"), ("Retry-After", "5")],
                          b"upstream unavailable\n")
        if len(data) > MAX_BODY_BYTES:
            return Answer(502, [("Content-Type", "text/plain")], b"upstream answer too large\n")
        if status >= 500:
            return Answer(503, [("Content-Type", "text/plain"), ("Retry-After", "5")],
                          b"upstream unavailable\n")
        passed = [(h, got[h]) for h in _PASSED_HEADERS if got.get(h)]
        return Answer(status, passed, data)
