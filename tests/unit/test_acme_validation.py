"""ACME challenge validators against real local servers on 127.0.0.1.

Nothing is mocked: http-01 talks to an http.server, dns-01 and name resolution to the
dnslib server in tests/acme_dns.py, tls-alpn-01 to a Python ssl server presenting a
certificate built with cryptography.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.acme.validation import (
    ACME_IDENTIFIER_OID,
    ValidationError,
    ValidationSettings,
    dns01_txt_value,
    key_authorization,
    validate,
)
from tests.acme_dns import DnsServer, free_port

pytestmark = pytest.mark.timeout(30)

TOKEN = "evaGxfADs6pSRb2LAv9IZf17Dt3juxGJ-PCt92wr-oA"
THUMB = "nP1qzpXGymHBrUEepNY9HCsQk7K8KhOypzEt62jcerQ"
KA = key_authorization(TOKEN, THUMB)
PATH = f"/.well-known/acme-challenge/{TOKEN}"
REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- servers


class HttpServer:
    """An http.server answering from ``routes``: path -> (status, body, headers)."""

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.routes: dict[str, tuple[int, bytes, dict[str, str]]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Host)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests.append((self.path, self.headers.get("Host")))
                status, body, headers = owner.routes.get(self.path, (404, b"nope", {}))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls_context is not None:
            self.httpd.socket = tls_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class RawServer:
    """Accepts connections and hands each to ``behaviour`` (silence, slow drip, ...)."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.behaviour = behaviour
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.behaviour(conn)

    def close(self) -> None:
        self.sock.close()
        for c in self.conns:
            c.close()


class TlsAlpnServer:
    """A TLS server presenting one certificate, optionally offering ALPN acme-tls/1."""

    def __init__(self, cert_file: Path, key_file: Path, alpn: bool = True) -> None:
        self.snis: list[str | None] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        if alpn:
            ctx.set_alpn_protocols(["acme-tls/1"])
        ctx.sni_callback = lambda _obj, name, _ctx: self.snis.append(name)  # type: ignore[assignment,return-value]
        self.ctx = ctx
        self.raw = RawServer(self._serve)
        self.port = self.raw.port

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    def close(self) -> None:
        self.raw.close()


@pytest.fixture
def dns_server() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


@pytest.fixture
def http() -> Iterator[HttpServer]:
    server = HttpServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def settings(dns_server: DnsServer | None = None, **kw: object) -> ValidationSettings:
    if dns_server is not None:
        kw.setdefault("resolvers", (dns_server.resolver,))
    kw.setdefault("timeout", 3.0)
    return ValidationSettings(**kw)  # type: ignore[arg-type]


def expect(problem: str, fn: Callable[[], object], *needles: str) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        fn()
    assert info.value.problem == problem, str(info.value)
    for needle in needles:
        assert needle in str(info.value), str(info.value)
    return info.value


def acme_cert(tmp_path: Path, key: ec.EllipticCurvePrivateKey, sans: list[x509.GeneralName],
              ka: str = KA, critical: bool = True,
              extension: bool = True) -> tuple[Path, Path]:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "acme challenge")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    if extension:
        value = b"\x04\x20" + hashlib.sha256(ka.encode()).digest()
        builder = builder.add_extension(
            x509.UnrecognizedExtension(ACME_IDENTIFIER_OID, value), critical=critical
        )
    cert = builder.sign(key, hashes.SHA256())
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


# --------------------------------------------------------------------------- basics


def test_key_authorization_and_txt_value() -> None:
    assert key_authorization("tok", "thumb") == "tok.thumb"
    # SHA-256 of the empty string, base64url without padding.
    assert dns01_txt_value("") == "47DEQpj8HBSa-_TImW-5JCeuQeRkm5NMpJWZG3hSuFU"
    assert dns01_txt_value(KA) != dns01_txt_value(KA + "x")
    assert "=" not in dns01_txt_value(KA)


def test_settings_are_checked() -> None:
    ValidationSettings(resolvers=("127.0.0.1", "127.0.0.1:5353", "[::1]:53", "::1"))
    for bad in ("localhost", "127.0.0.1:0", "[::1", "1.2.3.4:x", "[::1]x"):
        with pytest.raises(ValueError):
            ValidationSettings(resolvers=(bad,))
    with pytest.raises(ValueError):
        ValidationSettings(timeout=0)
    with pytest.raises(ValueError):
        ValidationSettings(http_port=70000)


def test_malformed_requests_are_refused() -> None:
    s = settings()
    expect("malformed", lambda: validate("http-02", "dns", "a.test", TOKEN, KA, s), "http-02")
    expect("malformed", lambda: validate("http-01", "email", "a.test", TOKEN, KA, s))
    expect("malformed", lambda: validate("dns-01", "ip", "127.0.0.1", TOKEN, KA, s), "dns-01")
    expect("malformed", lambda: validate("http-01", "dns", "*.a.test", TOKEN, KA, s),
           "wildcard")
    expect("malformed", lambda: validate("tls-alpn-01", "dns", "*.a.test", TOKEN, KA, s))
    expect("malformed", lambda: validate("http-01", "dns", "127.0.0.1", TOKEN, KA, s))
    expect("malformed", lambda: validate("http-01", "dns", "a.test/x#", TOKEN, KA, s))
    expect("malformed", lambda: validate("http-01", "ip", "300.1.1.1", TOKEN, KA, s))
    expect("malformed", lambda: validate("http-01", "dns", "a.test", "../x", KA, s), "token")


# --------------------------------------------------------------------------- http-01


def test_http01_good_via_configured_resolver(http: HttpServer, dns_server: DnsServer) -> None:
    http.routes[PATH] = (200, KA.encode() + b"\r\n \n", {})
    got = validate("http-01", "dns", "App.Test", TOKEN, KA,
                   settings(dns_server, http_port=http.port))
    assert got == f"http://app.test:{http.port}{PATH} from 127.0.0.1"
    assert http.requests == [(PATH, f"app.test:{http.port}")]
    assert ("app.test", "A") in dns_server.queries


def test_http01_wrong_body(http: HttpServer, dns_server: DnsServer) -> None:
    http.routes[PATH] = (200, b"something else", {})
    expect("incorrectResponse",
           lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, http_port=http.port)),
           "something else", f"app.test:{http.port}")


def test_http01_oversized_body(http: HttpServer, dns_server: DnsServer) -> None:
    http.routes[PATH] = (200, KA.encode() + b" " * 9000, {})
    expect("incorrectResponse",
           lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, http_port=http.port)), "8192")


def test_http01_not_found(http: HttpServer, dns_server: DnsServer) -> None:
    expect("unauthorized",
           lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, http_port=http.port)), "404")


def test_http01_redirects_are_followed_with_the_new_host(http: HttpServer,
                                                         dns_server: DnsServer) -> None:
    dns_server.set_a("other.test", "127.0.0.1")
    http.routes[PATH] = (302, b"", {"Location": f"http://other.test:{http.port}/step"})
    http.routes["/step"] = (301, b"", {"Location": "/final?x=1"})
    http.routes["/final?x=1"] = (200, KA.encode(), {})
    got = validate("http-01", "dns", "app.test", TOKEN, KA,
                   settings(dns_server, http_port=http.port))
    assert http.requests == [
        (PATH, f"app.test:{http.port}"),
        ("/step", f"other.test:{http.port}"),
        ("/final?x=1", f"other.test:{http.port}"),
    ]
    assert got.endswith(f"http://other.test:{http.port}/final?x=1 from 127.0.0.1")


def test_http01_redirect_to_other_port_or_scheme_is_refused(http: HttpServer,
                                                           dns_server: DnsServer) -> None:
    s = settings(dns_server, http_port=http.port)
    http.routes[PATH] = (302, b"", {"Location": "http://app.test:8081/x"})
    expect("connection", lambda: validate("http-01", "dns", "app.test", TOKEN, KA, s),
           "port 8081")
    http.routes[PATH] = (302, b"", {"Location": "ftp://app.test/x"})
    expect("connection", lambda: validate("http-01", "dns", "app.test", TOKEN, KA, s), "ftp")
    assert [p for p, _ in http.requests] == [PATH, PATH]  # never followed


def test_http01_redirect_loop_is_bounded(http: HttpServer, dns_server: DnsServer) -> None:
    http.routes[PATH] = (302, b"", {"Location": "/loop"})
    http.routes["/loop"] = (307, b"", {"Location": "/loop"})
    expect("connection",
           lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, http_port=http.port, max_redirects=3)),
           "more than 3 redirects")
    assert len(http.requests) == 4


def test_http01_https_redirect_skips_certificate_verification(
        http: HttpServer, dns_server: DnsServer, tmp_path: Path,
        key: ec.EllipticCurvePrivateKey) -> None:
    # A self-signed certificate for an unrelated name: must still be followed (§8.3).
    cert_file, key_file = acme_cert(tmp_path, key, [x509.DNSName("unrelated.example")],
                                    extension=False)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_file, key_file)
    https = HttpServer(ctx)
    try:
        https.routes["/secure"] = (200, KA.encode(), {})
        http.routes[PATH] = (302, b"", {"Location": f"https://app.test:{https.port}/secure"})
        got = validate("http-01", "dns", "app.test", TOKEN, KA,
                       settings(dns_server, http_port=http.port, tls_alpn_port=https.port))
        assert https.requests == [("/secure", f"app.test:{https.port}")]
        assert f"https://app.test:{https.port}/secure from 127.0.0.1" in got
    finally:
        https.close()


def test_http01_ignores_proxy_environment(http: HttpServer, dns_server: DnsServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    for var in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, dead)
    http.routes[PATH] = (200, KA.encode(), {})
    validate("http-01", "dns", "app.test", TOKEN, KA, settings(dns_server, http_port=http.port))
    assert http.requests == [(PATH, f"app.test:{http.port}")]


def test_http01_connection_refused(dns_server: DnsServer) -> None:
    port = free_port()
    expect("connection",
           lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, http_port=port)),
           "refused", f"127.0.0.1:{port}")


def test_http01_silent_server_times_out(dns_server: DnsServer) -> None:
    silent = RawServer(lambda conn: time.sleep(30))
    try:
        start = time.monotonic()
        expect("connection",
               lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                                settings(dns_server, http_port=silent.port, timeout=0.5)),
               "timed out")
        assert time.monotonic() - start < 2
    finally:
        silent.close()


def test_http01_slow_drip_is_cut_at_the_deadline(dns_server: DnsServer) -> None:
    # Each byte arrives well within any per-recv timeout; only the overall deadline stops it.
    def drip(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        for _ in range(300):
            conn.sendall(b"a")
            time.sleep(0.05)

    slow = RawServer(drip)
    try:
        start = time.monotonic()
        expect("connection",
               lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                                settings(dns_server, http_port=slow.port, timeout=0.7)),
               "timed out")
        assert time.monotonic() - start < 2
    finally:
        slow.close()


def test_http01_garbage_response(dns_server: DnsServer) -> None:
    def garbage(conn: socket.socket) -> None:
        conn.recv(4096)
        conn.sendall(b"SSH-2.0-OpenSSH\r\n")
        conn.close()

    server = RawServer(garbage)
    try:
        expect("connection",
               lambda: validate("http-01", "dns", "app.test", TOKEN, KA,
                                settings(dns_server, http_port=server.port)), "bad HTTP")
    finally:
        server.close()


def test_http01_unresolvable_name(dns_server: DnsServer) -> None:
    dns_server.set_nxdomain("gone.test")
    expect("dns",
           lambda: validate("http-01", "dns", "gone.test", TOKEN, KA,
                            settings(dns_server, http_port=free_port())),
           "gone.test", "NXDOMAIN")


def test_http01_ip_identifier(http: HttpServer) -> None:
    http.routes[PATH] = (200, KA.encode(), {})
    got = validate("http-01", "ip", "127.0.0.1", TOKEN, KA, settings(http_port=http.port))
    assert got == f"http://127.0.0.1:{http.port}{PATH} from 127.0.0.1"
    assert http.requests == [(PATH, f"127.0.0.1:{http.port}")]


def test_http01_system_resolver(http: HttpServer) -> None:
    try:
        socket.getaddrinfo("localhost", None)
    except OSError:
        pytest.skip("no system resolution of localhost here")
    http.routes[PATH] = (200, KA.encode(), {})
    got = validate("http-01", "dns", "localhost", TOKEN, KA, settings(http_port=http.port))
    assert got.endswith("from 127.0.0.1")
    assert http.requests == [(PATH, f"localhost:{http.port}")]


# --------------------------------------------------------------------------- dns-01


def test_dns01_good(dns_server: DnsServer) -> None:
    dns_server.set_txt("_acme-challenge.app.test", "unrelated")
    dns_server.set_txt("_acme-challenge.app.test", dns01_txt_value(KA))
    got = validate("dns-01", "dns", "app.test", TOKEN, KA, settings(dns_server))
    assert got == f"TXT _acme-challenge.app.test via 127.0.0.1:{dns_server.port}"


def test_dns01_wrong_value(dns_server: DnsServer) -> None:
    dns_server.set_txt("_acme-challenge.app.test", dns01_txt_value(KA + "x"))
    expect("unauthorized",
           lambda: validate("dns-01", "dns", "app.test", TOKEN, KA, settings(dns_server)),
           "_acme-challenge.app.test", dns01_txt_value(KA))


def test_dns01_missing_record(dns_server: DnsServer) -> None:
    expect("dns",
           lambda: validate("dns-01", "dns", "app.test", TOKEN, KA, settings(dns_server)),
           "no TXT records")
    dns_server.set_nxdomain("_acme-challenge.app.test")
    expect("dns",
           lambda: validate("dns-01", "dns", "app.test", TOKEN, KA, settings(dns_server)),
           "NXDOMAIN")


def test_dns01_wildcard_uses_base_name(dns_server: DnsServer) -> None:
    dns_server.set_txt("_acme-challenge.app.test", dns01_txt_value(KA))
    got = validate("dns-01", "dns", "*.app.test", TOKEN, KA, settings(dns_server))
    assert got.startswith("TXT _acme-challenge.app.test ")
    assert ("_acme-challenge.app.test", "TXT") in dns_server.queries
    dns_server.clear_txt("_acme-challenge.app.test")
    expect("dns",
           lambda: validate("dns-01", "dns", "*.app.test", TOKEN, KA, settings(dns_server)))


def test_dns01_records_file_via_lego_exec_script(tmp_path: Path) -> None:
    records = tmp_path / "records"
    script = REPO / "tests" / "acme_lego_dns_exec.sh"
    env = dict(os.environ, ACME_DNS_RECORDS=str(records))
    value = dns01_txt_value(KA)
    with DnsServer(records) as server:
        s = settings(server)
        subprocess.run([script, "present", "_acme-challenge.app.test.", value], env=env,
                       check=True)
        subprocess.run([script, "present", "_acme-challenge.other.test.", "x"], env=env,
                       check=True)
        validate("dns-01", "dns", "app.test", TOKEN, KA, s)
        subprocess.run([script, "cleanup", "_acme-challenge.app.test.", value], env=env,
                       check=True)
        assert records.read_text() == "_acme-challenge.other.test. x\n"
        expect("dns", lambda: validate("dns-01", "dns", "app.test", TOKEN, KA, s))


def test_dns01_unreachable_resolver() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))  # bound, never answers
        port = udp.getsockname()[1]
        start = time.monotonic()
        expect("dns",
               lambda: validate("dns-01", "dns", "app.test", TOKEN, KA,
                                ValidationSettings(resolvers=(f"127.0.0.1:{port}",),
                                                   timeout=0.5)),
               "_acme-challenge.app.test")
        assert time.monotonic() - start < 2


# --------------------------------------------------------------------------- tls-alpn-01


@pytest.fixture
def tls_server(tmp_path: Path,
               key: ec.EllipticCurvePrivateKey) -> Iterator[Callable[..., TlsAlpnServer]]:
    servers: list[TlsAlpnServer] = []

    def make(sans: list[x509.GeneralName], alpn: bool = True, **kw: object) -> TlsAlpnServer:
        cert_file, key_file = acme_cert(tmp_path, key, sans, **kw)  # type: ignore[arg-type]
        server = TlsAlpnServer(cert_file, key_file, alpn=alpn)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


def test_tls_alpn01_good(tls_server: Callable[..., TlsAlpnServer],
                         dns_server: DnsServer) -> None:
    server = tls_server([x509.DNSName("app.test")])
    got = validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                   settings(dns_server, tls_alpn_port=server.port))
    assert got == f"tls-alpn-01 on 127.0.0.1:{server.port} with SNI app.test"
    assert server.snis == ["app.test"]


def test_tls_alpn01_ip_identifier(tls_server: Callable[..., TlsAlpnServer]) -> None:
    server = tls_server([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    validate("tls-alpn-01", "ip", "127.0.0.1", TOKEN, KA, settings(tls_alpn_port=server.port))
    assert server.snis == ["1.0.0.127.in-addr.arpa"]  # RFC 8738 §6
    # A dNSName for the address is not the iPAddress SAN RFC 8738 asks for.
    other = tls_server([x509.DNSName("127.0.0.1")])
    expect("incorrectResponse",
           lambda: validate("tls-alpn-01", "ip", "127.0.0.1", TOKEN, KA,
                            settings(tls_alpn_port=other.port)), "subjectAltName")


def test_tls_alpn01_wrong_digest(tls_server: Callable[..., TlsAlpnServer],
                                 dns_server: DnsServer) -> None:
    server = tls_server([x509.DNSName("app.test")], ka=KA + "x")
    expect("incorrectResponse",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=server.port)), "acmeIdentifier")


def test_tls_alpn01_extension_not_critical(tls_server: Callable[..., TlsAlpnServer],
                                           dns_server: DnsServer) -> None:
    server = tls_server([x509.DNSName("app.test")], critical=False)
    expect("incorrectResponse",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=server.port)), "not critical")


def test_tls_alpn01_extension_missing(tls_server: Callable[..., TlsAlpnServer],
                                      dns_server: DnsServer) -> None:
    server = tls_server([x509.DNSName("app.test")], extension=False)
    expect("incorrectResponse",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=server.port)),
           "no acmeIdentifier")


def test_tls_alpn01_extra_san(tls_server: Callable[..., TlsAlpnServer],
                              dns_server: DnsServer) -> None:
    server = tls_server([x509.DNSName("app.test"), x509.DNSName("evil.test")])
    expect("incorrectResponse",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=server.port)), "evil.test")


def test_tls_alpn01_alpn_not_negotiated(tls_server: Callable[..., TlsAlpnServer],
                                        dns_server: DnsServer) -> None:
    server = tls_server([x509.DNSName("app.test")], alpn=False)
    expect("tls",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=server.port)), "acme-tls/1")


def test_tls_alpn01_not_tls_and_refused(http: HttpServer, dns_server: DnsServer) -> None:
    expect("tls",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=http.port)), "handshake")
    expect("connection",
           lambda: validate("tls-alpn-01", "dns", "app.test", TOKEN, KA,
                            settings(dns_server, tls_alpn_port=free_port())), "refused")


# --------------------------------------------------------------------------- CAA (RFC 8659)

ACCOUNT = "https://ca.test/acme/acme/account/abc"


def caa_settings(dns_server: DnsServer) -> ValidationSettings:
    return settings(dns_server, caa_identities=("ca.test", "Alias.CA.test."))


def dns01(dns_server: DnsServer, name: str, account: str | None = ACCOUNT) -> str:
    base = name.removeprefix("*.")
    dns_server.clear_txt(f"_acme-challenge.{base}")
    dns_server.set_txt(f"_acme-challenge.{base}", dns01_txt_value(KA))
    return validate("dns-01", "dns", name, TOKEN, KA, caa_settings(dns_server),
                    account_uri=account)


def test_caa_absent_allows_and_climbs_to_the_top(dns_server: DnsServer) -> None:
    got = dns01(dns_server, "a.b.app.test")
    assert "CAA: no records at a.b.app.test or above" in got
    asked = [q for q, t in dns_server.queries if t == "CAA"]
    assert asked == ["a.b.app.test", "b.app.test", "app.test", "test"]
    # without identities configured CAA is not looked at
    dns_server.queries.clear()
    validate("dns-01", "dns", "a.b.app.test", TOKEN, KA, settings(dns_server))
    assert not [q for q, t in dns_server.queries if t == "CAA"]


def test_caa_issue_for_this_ca_allows_any_alias_any_case(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue", "other.example")
    dns_server.set_caa("app.test", "issue", "alias.ca.test")
    got = dns01(dns_server, "www.app.test")
    assert "CAA at app.test" in got and "'alias.ca.test'" in got


def test_caa_issue_for_another_ca_refuses_naming_the_record(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue", "letsencrypt.org")
    dns_server.set_caa("app.test", "iodef", "mailto:sec@app.test")
    expect("caa", lambda: dns01(dns_server, "www.app.test"), "CAA at app.test",
           "'letsencrypt.org'", "www.app.test", "ca.test")


def test_caa_closest_rrset_wins(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue", "letsencrypt.org")
    dns_server.set_caa("www.app.test", "issue", "ca.test")
    assert "CAA at www.app.test" in dns01(dns_server, "www.app.test")
    expect("caa", lambda: dns01(dns_server, "api.app.test"))


def test_caa_empty_issue_forbids_everyone(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue", ";")
    expect("caa", lambda: dns01(dns_server, "app.test"))


def test_caa_without_issue_properties_allows(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "iodef", "mailto:sec@app.test")
    assert "no issue property" in dns01(dns_server, "app.test")


def test_caa_issuewild_governs_wildcards(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue", "ca.test")
    dns_server.set_caa("app.test", "issuewild", ";")
    assert "issue 'ca.test'" in dns01(dns_server, "app.test")
    expect("caa", lambda: dns01(dns_server, "*.app.test"), "issuewild")
    dns_server.clear_caa("app.test")
    dns_server.set_caa("app.test", "issue", "ca.test")  # no issuewild: issue applies
    assert "issue 'ca.test'" in dns01(dns_server, "*.app.test")


def test_caa_critical_unknown_tag_forbids_known_or_noncritical_does_not(
        dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue", "ca.test")
    dns_server.set_caa("app.test", "futuretag", "x")  # not critical: ignored
    dns01(dns_server, "app.test")
    dns_server.set_caa("app.test", "tbs", "x", flags=128)
    expect("caa", lambda: dns01(dns_server, "app.test"), "critical", "tbs")


def test_caa_account_and_method_binding_rfc8657(dns_server: DnsServer) -> None:
    dns_server.set_caa("app.test", "issue",
                       f"ca.test; accounturi={ACCOUNT}; validationmethods=dns-01,http-01")
    assert "accounturi" in dns01(dns_server, "app.test")
    expect("caa", lambda: dns01(dns_server, "app.test", account=ACCOUNT + "x"),
           "this account")
    dns_server.clear_caa("app.test")
    dns_server.set_caa("app.test", "issue", "ca.test; validationmethods=http-01")
    expect("caa", lambda: dns01(dns_server, "app.test"), "dns-01")
    dns_server.clear_caa("app.test")
    dns_server.set_caa("app.test", "issue", "ca.test; somefutureparam=1")  # ignored
    dns01(dns_server, "app.test")


def test_caa_lookup_failure_fails_closed_and_nxdomain_climbs(dns_server: DnsServer) -> None:
    dns_server.set_servfail("app.test")
    expect("dns", lambda: dns01(dns_server, "www.app.test"), "CAA app.test")
    dns_server.set_servfail("app.test", on=False)
    dns_server.set_caa("app.test", "issue", "ca.test")
    dns_server.set_nxdomain("www.app.test")  # no such name: its parents decide
    assert "CAA at app.test" in dns01(dns_server, "www.app.test")


def test_caa_not_checked_for_ip_identifiers(http: HttpServer, dns_server: DnsServer) -> None:
    http.routes[PATH] = (200, KA.encode(), {})
    got = validate("http-01", "ip", "127.0.0.1", TOKEN, KA, settings(
        dns_server, caa_identities=("ca.test",), http_port=http.port))
    assert "CAA" not in got
    assert not [q for q, t in dns_server.queries if t == "CAA"]


def test_caa_identities_are_checked() -> None:
    with pytest.raises(ValueError, match="not a domain name"):
        ValidationSettings(caa_identities=("bad name",))
    with pytest.raises(ValueError, match="not a string"):
        ValidationSettings(caa_identities="ca.test")  # type: ignore[arg-type]
