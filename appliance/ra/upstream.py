"""The RA's client to its upstream (the CA or a parent RA): JSON over mutual TLS whose client
key never leaves the token.

Why libcurl: Python's ``ssl`` can only load a client key from a file, and an RA's
credential key is made in (and stays in) its token. libcurl on OpenSSL uses the OpenSSL
``pkcs11`` engine (libp11), which signs the TLS handshake through the PKCS#11 module, so
the upstream authenticates the RA by a key nobody can copy. (pycurl must be built against
Debian's libcurl4-openssl, see scripts/install.sh; a PyPI wheel bundles a libcurl that
cannot load the engine.)

What the client guarantees:

- The upstream is verified against ``ra.upstream_root`` ONLY (libcurl's built-in CA path
  is switched off) and against the URL's host name; TLS follows the algorithm table's
  floor and, under a narrowed table (FIPS), its suites.
- The PIN comes from the HSM profile's PIN source (never argv, never a log line) and is
  handed to libcurl in memory.
- The engine gets its OWN instance of the PKCS#11 module (:func:`engine_module`: a
  verified copy of the module file in a private folder, which the dynamic loader treats
  as another library). Sharing the appliance's instance fails in two ways, both seen with
  SoftHSM: when the session pool re-initialises the module (a token that went away, or a
  forked child, ``hsm/module.py``), libp11 keeps handles of the old state and every later
  handshake fails until a restart; and libp11's own ``C_Initialize`` would otherwise run
  without the pool's OS-locking flags if it came first. Two instances share the token as
  two processes would.
- One libcurl handle per thread (connections are kept alive and reused); a handle made
  before ``os.fork`` is never used nor closed by the child (closing would end the parent's
  TLS session on the shared socket).
- Connect within 3 s, the whole exchange within ``ra.upstream_timeout_seconds`` (less
  under a request's deadline); the answer is bounded (1 MiB) and read by ``bounded_json``.
- Nothing reached, TLS refused, a timeout, a 5xx or an unreadable answer:
  :class:`UpstreamUnavailable` (503, retry later). A 4xx: :class:`UpstreamRefused`,
  carrying the upstream's status, code, message and refusing hop unchanged.
- A request is sent again (once, on a fresh connection) only when nothing of it was sent:
  a kept-alive connection the upstream had closed. A request that may have reached the
  upstream is never repeated (a sign could be issued twice).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pycurl

from appliance import bounded_json, deadline, logs
from appliance.errors import ApplianceError, ConfigError
from appliance.hsm.profile import HsmProfile, read_pin
from appliance.ra.errors import UpstreamRefused, UpstreamUnavailable
from appliance.x509 import algorithms

if TYPE_CHECKING:
    from appliance.runtime import Appliance

log = logs.get("ra")

MAX_RESPONSE_BYTES = 1_048_576
MAX_REQUEST_BYTES = 1_048_576
MAX_HEADERS = 100
MAX_HEADER_BYTES = 8192
CONNECT_TIMEOUT_SECONDS = 3.0
# A kept-alive connection idle longer than this is not reused: the upstream's API closes
# idle connections after ``service.keepalive_seconds`` (5 s by default), and a request
# written into a connection the server is closing is the one case worth a resend.
IDLE_REUSE_SECONDS = 3
DEFAULT_TIMEOUT_SECONDS = 10.0
_PATH = re.compile(r"/[A-Za-z0-9._~/-]{1,255}")
# libcurl failures where nothing was answered because the connection was gone: worth one
# more try on a fresh connection if not one byte of the request had been sent.
_CONNECTION_GONE = frozenset({pycurl.E_SEND_ERROR, pycurl.E_RECV_ERROR, pycurl.E_GOT_NOTHING,
                              pycurl.E_SSL_CONNECT_ERROR, pycurl.E_COULDNT_CONNECT})
_WHY = {
    pycurl.E_COULDNT_CONNECT: "connection refused",
    pycurl.E_COULDNT_RESOLVE_HOST: "host name not found",
    pycurl.E_OPERATION_TIMEDOUT: "timed out",
    pycurl.E_SSL_CONNECT_ERROR: "TLS handshake failed",
    pycurl.E_PEER_FAILED_VERIFICATION: "the upstream's certificate does not verify against "
                                       "ra.upstream_root",
    pycurl.E_SSL_CACERT_BADFILE: "ra.upstream_root cannot be read",
    pycurl.E_SSL_CERTPROBLEM: "the RA credential certificate cannot be used",
    pycurl.E_SSL_ENGINE_NOTFOUND: "the OpenSSL pkcs11 engine is not installed",
    pycurl.E_SSL_ENGINE_SETFAILED: "the OpenSSL pkcs11 engine cannot be used",
    pycurl.E_SSL_ENGINE_INITFAILED: "the OpenSSL pkcs11 engine cannot be initialised",
    pycurl.E_SSL_CIPHER: "no TLS cipher in common",
    pycurl.E_GOT_NOTHING: "the connection closed without an answer",
    pycurl.E_SEND_ERROR: "the connection failed while sending",
    pycurl.E_RECV_ERROR: "the connection failed while receiving",
    pycurl.E_WRITE_ERROR: f"the answer is larger than {MAX_RESPONSE_BYTES} bytes",
}
_TLS_VERSION = {"TLSv1.2": pycurl.SSLVERSION_TLSv1_2, "TLSv1.3": pycurl.SSLVERSION_TLSv1_3}


@dataclass(frozen=True)
class UpstreamReply:
    """A 2xx answer: its status, its JSON object and its headers (names lower-case)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def check_base_url(url: str) -> str:
    """``https://host[:port]`` with nothing else (no path, query, user): the upstream's API
    listener; ``ConfigError`` otherwise."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"ra.upstream_url {url!r} is not a URL: {exc}") from None
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password \
            or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"ra.upstream_url must be https://host[:port], not {url!r}")
    del port
    return f"https://{parts.netloc}"


_engine_modules: dict[str, Path] = {}
_engine_lock = threading.Lock()


def _private_folder() -> Path:
    """A folder only this user can write: ``$RUNTIME_DIRECTORY`` (systemd),
    ``$XDG_RUNTIME_DIR``, or a 0700 folder of our own in the temp dir; checked, as the
    token start-up lock's folder is (a module file others could replace would be code they
    run in the appliance)."""
    runtime = os.environ.get("RUNTIME_DIRECTORY") or os.environ.get("XDG_RUNTIME_DIR")
    folder = (Path(runtime.split(":")[0]) if runtime
              else Path(tempfile.gettempdir()) / f"appliance-{os.geteuid()}")
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = os.lstat(folder)
    except OSError as exc:
        raise ConfigError(f"cannot make the folder {folder}: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(f"{folder} must be a directory owned by this user and writable by "
                          "no one else")
    return folder


def engine_module(profile: HsmProfile) -> Path:
    """The PKCS#11 module file the OpenSSL engine loads: a copy of ``profile.module``, made
    once per content (named by its SHA-256, written atomically, read-only, checked on every
    first use in a process), so the engine runs its own instance of the module (see the
    module's docstring)."""
    source = Path(profile.module)
    with _engine_lock:
        cached = _engine_modules.get(str(source))
        if cached is not None and cached.exists():
            return cached
        try:
            data = source.read_bytes()
        except OSError as exc:
            raise ConfigError(f"PKCS#11 module {source} cannot be read: {exc.strerror}") \
                from None
        digest = hashlib.sha256(data).hexdigest()
        folder = _private_folder()
        target = folder / f"pkcs11-engine-{digest[:32]}.so"
        try:
            ok = target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == digest
            if not ok:
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=".pkcs11-engine-")
                try:
                    with os.fdopen(fd, "wb") as out:
                        out.write(data)
                    os.chmod(tmp, 0o500)
                    os.replace(tmp, target)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
        except OSError as exc:
            raise ConfigError(f"cannot place the engine's copy of the PKCS#11 module in "
                              f"{folder}: {exc.strerror}") from None
        _engine_modules[str(source)] = target
        return target


def key_uri(profile: HsmProfile, label: str) -> str:
    """The RFC 7512 URI of the credential's private key in the profile's token."""
    if profile.token.label is not None:
        token = f"token={_quote(profile.token.label)}"
    else:
        token = f"serial={_quote(str(profile.token.serial))}"
    return f"pkcs11:{token};object={_quote(label)};type=private"


def _quote(value: str) -> str:
    """RFC 7512 percent-encoding: everything but unreserved characters."""
    return urllib.parse.quote(value, safe="")


class _Bounded:
    """A write callback that keeps at most ``limit`` bytes and aborts the transfer past it."""

    def __init__(self, limit: int) -> None:
        self.buffer = io.BytesIO()
        self.limit = limit
        self.overflow = False

    def write(self, data: bytes) -> int | None:
        if self.buffer.tell() + len(data) > self.limit:
            self.overflow = True
            return 0  # libcurl: fewer bytes than given aborts with CURLE_WRITE_ERROR
        self.buffer.write(data)
        return None


class _Headers:
    """A header callback: the last response's headers, bounded in count and size."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.count = 0

    def line(self, raw: bytes) -> int | None:
        text = raw.decode("iso-8859-1").rstrip("\r\n")
        if text.startswith("HTTP/"):
            self.values, self.count = {}, 0  # a new response (after a 100 Continue, say)
            return None
        self.count += 1
        if self.count > MAX_HEADERS or len(raw) > MAX_HEADER_BYTES:
            return 0
        name, sep, value = text.partition(":")
        if sep:
            self.values[name.strip().lower()] = value.strip()
        return None


class Upstream:
    """The upstream client of one RA node (see the module's docstring)."""

    def __init__(self, base_url: str, root_file: Path, cert_file: Path, profile: HsmProfile,
                 key_label: str = "ra-credential",
                 timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self.base_url = check_base_url(base_url)
        self.root_file = Path(root_file)
        self.cert_file = Path(cert_file)
        self.profile = profile
        self.key_label = key_label
        self.timeout = float(timeout)
        if not 0 < self.timeout <= 3600:
            raise ConfigError("ra.upstream_timeout_seconds must be within (0, 3600]")
        self._local = threading.local()
        # Handles a forked child inherited: kept referenced, never used or closed here.
        self._inherited: list[Any] = []

    @classmethod
    def from_app(cls, app: Appliance) -> Upstream:
        """The client of this node's configuration (``ra:`` block) and token profile."""
        ra = getattr(app.settings.config, "ra", None)
        url = getattr(ra, "upstream_url", None)
        if not url:
            raise ConfigError("ra.upstream_url is not set: this node has no upstream")
        base = app.settings.base_dir

        def path(name: str, default: str) -> Path:
            value = Path(getattr(ra, name, None) or default)
            return value if value.is_absolute() else base / value

        return cls(str(url), path("upstream_root", "ra/upstream-root.pem"),
                   path("credential_cert", "ra/credential.pem"), app.hsm_profile,
                   getattr(ra, "credential_label", None) or "ra-credential",
                   getattr(ra, "upstream_timeout_seconds", None) or DEFAULT_TIMEOUT_SECONDS)

    # -- handles ---------------------------------------------------------------------------

    def _new_handle(self) -> Any:
        # libp11 reads the module's path (and the module its settings, SOFTHSM2_CONF say)
        # from the environment when the engine is initialised.
        # Written only when it changes: setenv beside a C thread's getenv is not safe.
        wanted = {"PKCS11_MODULE_PATH": str(engine_module(self.profile)),
                  **self.profile.module_env}
        for name, value in wanted.items():
            if os.environ.get(name) != value:
                os.environ[name] = value
        c = pycurl.Curl()
        try:
            c.setopt(pycurl.NOSIGNAL, 1)
            c.setopt(pycurl.PROTOCOLS, pycurl.PROTO_HTTPS)
            c.setopt(pycurl.REDIR_PROTOCOLS, pycurl.PROTO_HTTPS)
            c.setopt(pycurl.FOLLOWLOCATION, 0)
            c.setopt(pycurl.PROXY, "")  # never an https_proxy from the environment
            c.setopt(pycurl.NOPROXY, "*")
            c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
            c.setopt(pycurl.TCP_KEEPALIVE, 1)
            c.setopt(pycurl.MAXAGE_CONN, IDLE_REUSE_SECONDS)
            c.setopt(pycurl.SSL_VERIFYPEER, 1)
            c.setopt(pycurl.SSL_VERIFYHOST, 2)
            c.setopt(pycurl.CAINFO, str(self.root_file))
            c.unsetopt(pycurl.CAPATH)  # Debian's libcurl would also trust /etc/ssl/certs
            table = algorithms.current().tls
            c.setopt(pycurl.SSLVERSION, _TLS_VERSION[table.min_version])
            if table.ciphers12 is not None:
                c.setopt(pycurl.SSL_CIPHER_LIST, ":".join(table.ciphers12))
            if table.suites13 is not None:
                c.setopt(pycurl.TLS13_CIPHERS, ":".join(table.suites13))
            if table.groups is not None:
                c.setopt(pycurl.SSL_EC_CURVES, ":".join(table.groups))
            c.setopt(pycurl.SSLENGINE, "pkcs11")
            c.setopt(pycurl.SSLKEYTYPE, "ENG")
            c.setopt(pycurl.SSLKEY, key_uri(self.profile, self.key_label))
            c.setopt(pycurl.SSLCERTTYPE, "PEM")
            c.setopt(pycurl.SSLCERT, str(self.cert_file))
            pin = read_pin(self.profile.pin)
            try:
                c.setopt(pycurl.KEYPASSWD, pin)
            finally:
                del pin
            c.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json",
                                         "Accept: application/json", "Expect:"])
        except pycurl.error as exc:
            c.close()
            raise UpstreamUnavailable(f"the upstream client cannot be set up: "
                                      f"{_why(exc)}") from None
        except BaseException:
            c.close()
            raise
        return c

    def _handle(self) -> Any:
        handle = getattr(self._local, "handle", None)
        if handle is not None and self._local.pid != os.getpid():
            self._inherited.append(handle)  # the parent's: its socket is not ours to close
            handle = None
        if handle is None:
            handle = self._new_handle()
            self._local.handle, self._local.pid = handle, os.getpid()
        return handle

    def close(self) -> None:
        """Close this thread's handle (and its kept-alive connection)."""
        handle = getattr(self._local, "handle", None)
        self._local.handle = None
        if handle is not None and self._local.pid == os.getpid():
            handle.close()

    # -- requests --------------------------------------------------------------------------

    def post(self, path: str, body: dict[str, Any]) -> UpstreamReply:
        """``POST`` ``body`` (JSON) to ``path`` of the upstream; the 2xx answer, else
        :class:`UpstreamRefused` (4xx) or :class:`UpstreamUnavailable`."""
        data = json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        if len(data) > MAX_REQUEST_BYTES:
            raise ApplianceError(f"the request to the upstream would be {len(data)} bytes; "
                                 f"at most {MAX_REQUEST_BYTES}")
        return self._exchange("POST", path, data)

    def probe(self) -> UpstreamReply:
        """``GET /1.0/health``: whether the upstream answers this RA over mTLS (readiness,
        ``ra`` status); raises like :meth:`post`."""
        return self._exchange("GET", "/1.0/health", None)

    def _exchange(self, method: str, path: str, data: bytes | None) -> UpstreamReply:
        if not _PATH.fullmatch(path) or ".." in path:
            raise ApplianceError(f"not an upstream API path: {path!r}")
        url = self.base_url + path
        started = time.monotonic()
        status, raw, headers = self._perform(method, url, data)
        log.debug("upstream answered", extra={"url": url, "status": status,
                                              "ms": int((time.monotonic() - started) * 1000)})
        return _reply(status, raw, headers)

    def _perform(self, method: str, url: str, data: bytes | None
                 ) -> tuple[int, bytes, dict[str, str]]:
        for attempt in (1, 2):
            c = self._handle()
            sink, heads = _Bounded(MAX_RESPONSE_BYTES), _Headers()
            total = deadline.wait_seconds(self.timeout)
            c.setopt(pycurl.URL, url)
            c.setopt(pycurl.TIMEOUT_MS, max(1, int(total * 1000)))
            c.setopt(pycurl.CONNECTTIMEOUT_MS,
                     max(1, int(min(CONNECT_TIMEOUT_SECONDS, total) * 1000)))
            c.setopt(pycurl.WRITEFUNCTION, sink.write)
            c.setopt(pycurl.HEADERFUNCTION, heads.line)
            c.setopt(pycurl.FRESH_CONNECT, 1 if attempt == 2 else 0)
            if data is None:
                c.setopt(pycurl.HTTPGET, 1)
            else:
                c.setopt(pycurl.POST, 1)
                c.setopt(pycurl.POSTFIELDS, data)
            try:
                c.perform()
            except pycurl.error as exc:
                code = _code(exc)
                sent = c.getinfo(pycurl.REQUEST_SIZE)
                if attempt == 1 and code in _CONNECTION_GONE and sent == 0:
                    log.info("upstream connection gone before the request was sent; "
                             "trying a fresh connection", extra={"url": url, "curl": code})
                    continue
                if sink.overflow:
                    raise UpstreamUnavailable(_WHY[pycurl.E_WRITE_ERROR]) from None
                log.warning("upstream unavailable", extra={
                    "url": url, "curl": code, "detail": str(exc.args[1:])[:300]})
                raise UpstreamUnavailable(
                    f"the upstream {self.base_url} is unavailable: {_why(exc)}") from None
            return int(c.getinfo(pycurl.RESPONSE_CODE)), sink.buffer.getvalue(), heads.values
        raise AssertionError("unreachable")  # pragma: no cover


def _code(exc: pycurl.error) -> int:
    code = exc.args[0] if exc.args else -1
    return code if isinstance(code, int) else -1


def _why(exc: pycurl.error) -> str:
    """What failed, in words for the client: no paths, no library internals."""
    code = _code(exc)
    detail = str(exc.args[1]) if len(exc.args) > 1 else ""
    if code == pycurl.E_PEER_FAILED_VERIFICATION and "subject name" in detail:
        return "the upstream's certificate does not name the host of ra.upstream_url"
    return _WHY.get(code, f"libcurl error {code}")


def _reply(status: int, raw: bytes, headers: dict[str, str]) -> UpstreamReply:
    """Classify the upstream's answer (see the module's docstring)."""
    try:
        doc = bounded_json.loads(raw, "the upstream's answer", max_bytes=MAX_RESPONSE_BYTES)
    except ApplianceError:
        doc = None
    if 500 <= status < 600 or status == 429:
        hop = doc.get("hop") if isinstance(doc, dict) else None
        message = doc.get("message") if isinstance(doc, dict) else None
        why = f"HTTP {status}" + (f": {message[:300]}" if isinstance(message, str) else "")
        raise UpstreamUnavailable(f"the upstream is unavailable ({why})",
                                  hop=hop[:64] if isinstance(hop, str) else None,
                                  retry_after=headers.get("retry-after"))
    if 400 <= status < 500:
        raise UpstreamRefused.from_reply(status, doc)
    if not 200 <= status < 300:
        raise UpstreamUnavailable(f"the upstream answered HTTP {status}, not JSON")
    if not isinstance(doc, dict):
        raise UpstreamUnavailable("the upstream's answer is not a JSON object")
    return UpstreamReply(status, doc, headers)
