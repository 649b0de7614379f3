"""The RA's upstream client (appliance/ra/upstream.py) against a real ``appliance serve``:
mutual TLS whose client key is IN A TOKEN (OpenSSL's pkcs11 engine through libcurl), the
upstream verified against its root only, and every failure classified as the RA spec says.

The proof that the server saw the token-held key: ``/1.0/renew`` authenticated by mTLS
renews exactly the certificate presented, so a renewed certificate for the token key can
only come from a handshake signed by that key."""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pycurl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from appliance.errors import ConfigError
from appliance.hsm import keys
from appliance.hsm.module import load_module
from appliance.hsm.pool import SessionPool
from appliance.hsm.signer import TokenECPrivateKey, token_private_key
from appliance.ra.errors import UpstreamRefused, UpstreamUnavailable
from appliance.ra.upstream import Upstream, check_base_url, engine_module, key_uri
from tests.conftest import TestToken, run_cli
from tests.service_helpers import Server, free_port, serving

NAME = "edge-1.ra.test"


def _spki(key: object) -> bytes:
    der: bytes = key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return der


@dataclass
class Ra:
    """An RA's credential: a P-256 key made in its own token, a certificate from the CA."""

    token: TestToken
    pool: SessionPool
    key: TokenECPrivateKey
    cert: x509.Certificate
    cert_file: Path

    def upstream(self, server: Server, root: Path | None = None, **kw: object) -> Upstream:
        return Upstream(server.api, root or server.roots, self.cert_file, self.token.profile(),
                        "ra-credential", **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("ra-upstream") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    with serving(d, keepalive_seconds=1) as srv:
        yield srv


@pytest.fixture(scope="module")
def ra(server: Server, new_token, tmp_path_factory: pytest.TempPathFactory  # type: ignore[no-untyped-def]
       ) -> Iterator[Ra]:
    tok: TestToken = new_token("ra credential")
    pool = SessionPool(tok.profile())
    key = token_private_key(pool, keys.generate_keypair(pool, "ra-credential", "ec-p256"))
    assert isinstance(key, TokenECPrivateKey)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(NAME)]), False)
           .sign(key, hashes.SHA256()))  # signed in the token
    resp = server.sign(csr.public_bytes(serialization.Encoding.PEM).decode(), server.token(NAME))
    assert resp.status_code == 201, resp.text
    data = resp.json()
    cert_file = tmp_path_factory.mktemp("ra-cred") / "credential.pem"
    cert_file.write_text("".join(data["certChain"][:-1]))  # leaf + intermediates
    yield Ra(tok, pool, key, x509.load_pem_x509_certificate(data["crt"].encode()), cert_file)
    pool.close()


def test_mtls_with_the_token_key_renews_that_certificate(server: Server, ra: Ra) -> None:
    up = ra.upstream(server)
    reply = up.post("/1.0/renew", {})
    assert reply.status == 201
    new = x509.load_pem_x509_certificate(reply.body["crt"].encode())
    assert new.serial_number != ra.cert.serial_number
    assert _spki(new.public_key()) == _spki(ra.key.public_key())  # the token's key
    assert new.subject == ra.cert.subject
    assert reply.headers["content-type"].startswith("application/json")
    events = [e for e in server.events("certificate.renewed")
              if e["details"]["renewal_of"] == f"{ra.cert.serial_number:x}"]
    assert len(events) == 1
    # Beside python-pkcs11 in this process: the token still signs for the pool afterwards.
    ra.key.sign(b"still here", ec.ECDSA(hashes.SHA256()))
    up.close()


def test_connections_are_kept_alive_per_thread(server: Server, ra: Ra) -> None:
    up = ra.upstream(server)
    assert up.probe().status == 200
    first = up._handle()
    assert up.probe().status == 200
    assert first.getinfo(pycurl.NUM_CONNECTS) == 0  # the second request reused the first's
    seen: list[object] = []

    def other() -> None:
        up.probe()
        seen.append(up._handle())
        up.close()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert len(seen) == 1 and seen[0] is not first
    # The server closes idle connections after 1 s (keepalive_seconds; swept once a second):
    # the next request finds its connection gone and still succeeds, on a fresh one.
    time.sleep(2.5)
    assert up.probe().status == 200
    assert first.getinfo(pycurl.NUM_CONNECTS) == 1
    up.close()


def test_a_forked_child_makes_its_own_handle(server: Server, ra: Ra, tmp_path: Path) -> None:
    up = ra.upstream(server)
    assert up.probe().status == 200
    parent_handle = up._handle()
    pid = os.fork()
    if pid == 0:  # the child: a new handle; the parent's connection is left alone
        code = 1
        try:
            code = 0 if up.probe().status == 200 and up._handle() is not parent_handle else 2
        except BaseException as exc:  # reported to the parent
            (tmp_path / "child-error").write_text(repr(exc))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    error = tmp_path / "child-error"
    assert os.waitstatus_to_exitcode(status) == 0, error.exists() and error.read_text()
    assert up.probe().status == 200 and up._handle() is parent_handle
    assert parent_handle.getinfo(pycurl.NUM_CONNECTS) == 0  # its connection survived the child
    up.close()


def test_the_engine_survives_a_reinitialised_module(server: Server, ra: Ra) -> None:
    """The session pool re-initialises the module when the token seems gone: the engine's
    own instance of the module (engine_module) is not touched, so mTLS goes on."""
    up = ra.upstream(server)
    assert up.probe().status == 200
    module = load_module(ra.token.profile())
    with module.gate.exclusive(10) as alone:
        assert alone
        module.reinitialize()
    up.close()  # a new handle, so the key is looked up again after the re-initialisation
    assert up.post("/1.0/renew", {}).status == 201
    ra.key.sign(b"the pool reconnects too", ec.ECDSA(hashes.SHA256()))
    assert engine_module(ra.token.profile()) != Path(ra.token.profile().module)
    up.close()


def test_a_closed_port_is_unavailable_quickly(ra: Ra, server: Server) -> None:
    up = Upstream(f"https://127.0.0.1:{free_port()}", server.roots, ra.cert_file,
                  ra.token.profile(), "ra-credential", timeout=10)
    started = time.monotonic()
    with pytest.raises(UpstreamUnavailable, match="connection refused") as info:
        up.post("/1.0/ra/sign", {"csr": "x"})
    assert time.monotonic() - started < 3
    assert info.value.status == 503 and info.value.code == "upstream_unavailable"
    assert info.value.server_fault and info.value.public_detail


def test_an_upstream_that_does_not_answer_times_out(ra: Ra, server: Server) -> None:
    import socket

    with socket.socket() as silent:  # accepts the TCP connection, never speaks TLS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        up = Upstream(f"https://127.0.0.1:{silent.getsockname()[1]}", server.roots,
                      ra.cert_file, ra.token.profile(), "ra-credential", timeout=1)
        started = time.monotonic()
        with pytest.raises(UpstreamUnavailable, match="timed out"):
            up.post("/1.0/ra/sign", {})
        assert time.monotonic() - started < 2.5


def test_an_upstream_not_under_the_configured_root_is_refused(ra: Ra, server: Server,
                                                              tmp_path: Path) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other Root")])
    now = dt.datetime.now(dt.UTC)
    root = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(other.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(other, hashes.SHA256()))
    wrong = tmp_path / "wrong-root.pem"
    wrong.write_bytes(root.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(UpstreamUnavailable, match="does not verify against"):
        ra.upstream(server, root=wrong).post("/1.0/renew", {})
    # The system's CA bundle is no root of ours either: only ra.upstream_root counts.
    system = Path("/etc/ssl/certs/ca-certificates.crt")
    if system.exists():
        with pytest.raises(UpstreamUnavailable, match="does not verify against"):
            ra.upstream(server, root=system).probe()


def test_a_host_name_the_certificate_does_not_name_is_refused(ra: Ra, server: Server) -> None:
    up = Upstream(f"https://localhost:{server.api_port}", server.roots, ra.cert_file,
                  ra.token.profile(), "ra-credential")
    with pytest.raises(UpstreamUnavailable, match="does not name the host"):
        up.probe()


def test_a_4xx_is_a_refusal_with_the_upstreams_code(ra: Ra, server: Server) -> None:
    up = ra.upstream(server)
    with pytest.raises(UpstreamRefused) as info:
        up.post("/1.0/sign", {"csr": "not a CSR", "ott": "not a token"})
    assert 400 <= info.value.status < 500 and info.value.code in ("bad_request", "unauthorized")
    assert info.value.hop is None and not info.value.server_fault
    with pytest.raises(UpstreamRefused) as info:
        up.post("/1.0/no-such-endpoint", {})
    assert info.value.status == 404


def test_bad_configuration_is_refused_before_any_connection(ra: Ra) -> None:
    for url in ("http://127.0.0.1:1", "https://127.0.0.1:1/path", "https://u:p@h",
                "https://h?q=1", "ftp://h"):
        with pytest.raises(ConfigError):
            check_base_url(url)
    assert check_base_url("https://ca.example:8443/") == "https://ca.example:8443"
    assert key_uri(ra.token.profile(), "ra credential") == \
        f"pkcs11:token={ra.token.label};object=ra%20credential;type=private"


# -- answers the appliance never gives, from a small HTTPS upstream of the test's own -------

_CANNED: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/1.0/ra/big": (200, {"Content-Type": "application/json"},
                    b'{"pad":"' + b"x" * (1 << 21) + b'"}'),
    "/1.0/ra/fault": (503, {"Content-Type": "application/json", "Retry-After": "7"},
                      b'{"status":503,"code":"upstream_unavailable","message":"the CA is '
                      b'down","hop":"edge-1"}'),
    "/1.0/ra/refused": (403, {"Content-Type": "application/json"},
                        b'{"status":403,"error":"policy_refused","message":"refused at '
                        b'edge-1: dns name x refused","hop":"edge-1"}'),
    "/1.0/ra/html": (200, {"Content-Type": "text/html"}, b"<html>hello</html>"),
    "/1.0/ra/deep": (200, {"Content-Type": "application/json"}, b"[" * 100 + b"]" * 100),
}


_DROP = [0]  # connections the canned server closes at once, before TLS
_SEEN: list[str] = []  # request paths it read


@pytest.fixture(scope="module")
def canned(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS server on 127.0.0.1 under a root of its own, answering ``_CANNED``; it asks
    for a client certificate under the CA's roots, like the appliance's API does."""
    import http.server
    import ipaddress
    import ssl

    folder = tmp_path_factory.mktemp("canned")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "canned")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (folder / "root.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "server.pem").write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            _SEEN.append(self.path)
            if self.path == "/1.0/ra/swallow":  # read, maybe acted on, never answered
                self.close_connection = True
                return
            status, headers, body = _CANNED[self.path]
            self.send_response(status)
            for k, v in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(folder / "server.pem")
    ctx.load_verify_locations(server.roots)
    ctx.verify_mode = ssl.CERT_OPTIONAL

    class Server_(http.server.ThreadingHTTPServer):
        def get_request(self) -> tuple[object, object]:
            sock, addr = self.socket.accept()
            if _DROP[0] > 0:  # a connection that dies before TLS: nothing was sent on it
                _DROP[0] -= 1
                sock.close()
                raise OSError("dropped")
            return ctx.wrap_socket(sock, server_side=True), addr

    httpd = Server_(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", folder / "root.pem"
    httpd.shutdown()
    httpd.server_close()


def test_answers_are_classified(ra: Ra, canned: tuple[str, Path]) -> None:
    url, root = canned
    up = Upstream(url, root, ra.cert_file, ra.token.profile(), "ra-credential", timeout=10)
    with pytest.raises(UpstreamUnavailable, match="larger than 1048576 bytes"):
        up.post("/1.0/ra/big", {})
    with pytest.raises(UpstreamUnavailable, match="HTTP 503: the CA is down") as fault:
        up.post("/1.0/ra/fault", {})
    assert fault.value.hop == "edge-1" and fault.value.retry_after == "7"
    with pytest.raises(UpstreamRefused) as refused:
        up.post("/1.0/ra/refused", {})
    assert (refused.value.status, refused.value.code, refused.value.hop) == \
        (403, "policy_refused", "edge-1")
    assert str(refused.value) == "refused at edge-1: dns name x refused"
    assert refused.value.acme_type == "rejectedIdentifier"
    for path in ("/1.0/ra/html", "/1.0/ra/deep"):
        with pytest.raises(UpstreamUnavailable, match="not a JSON object"):
            up.post(path, {})
    up.close()


def test_a_request_is_sent_again_only_if_none_of_it_was_sent(ra: Ra,
                                                             canned: tuple[str, Path]) -> None:
    url, root = canned
    up = Upstream(url, root, ra.cert_file, ra.token.profile(), "ra-credential", timeout=10)
    _SEEN.clear()
    _DROP[0] = 1  # the first connection dies before a byte of the request went out
    with pytest.raises(UpstreamRefused, match="refused at edge-1"):
        up.post("/1.0/ra/refused", {})
    assert _SEEN == ["/1.0/ra/refused"] and _DROP[0] == 0  # retried once, on a new connection
    up.close()  # the next request needs a new connection
    _DROP[0] = 2  # dies twice: one retry only, then unavailable
    with pytest.raises(UpstreamUnavailable, match=r"TLS handshake failed|connection"):
        up.post("/1.0/ra/refused", {})
    assert _SEEN == ["/1.0/ra/refused"] and _DROP[0] == 0
    # A request the upstream read but never answered (it may have issued) is NOT resent.
    with pytest.raises(UpstreamUnavailable, match="closed without an answer"):
        up.post("/1.0/ra/swallow", {"csr": "..."})
    assert _SEEN == ["/1.0/ra/refused", "/1.0/ra/swallow"]
    up.close()


def test_from_app_reads_the_ra_block_and_the_token_profile(server: Server, ra: Ra,
                                                           tmp_path: Path) -> None:
    from types import SimpleNamespace

    from appliance import config
    from appliance.runtime import Appliance

    # The CA's own configuration names no upstream.
    with pytest.raises(ConfigError, match=r"ra\.upstream_url is not set"):
        Upstream.from_app(Appliance(config.load(server.data_dir / "appliance.yaml")))
    # An RA node's: paths relative to its folder, the defaults of the RA spec otherwise.
    # (A stand-in for the ``ra:`` block until config.py carries it.)
    (tmp_path / "ra").mkdir()
    (tmp_path / "ra" / "credential.pem").write_bytes(ra.cert_file.read_bytes())
    (tmp_path / "ra" / "upstream-root.pem").write_bytes(server.roots.read_bytes())
    ra_block = SimpleNamespace(upstream_url=server.api, upstream_root=None,
                               credential_cert=None, credential_label=None,
                               upstream_timeout_seconds=5.0)
    app = SimpleNamespace(settings=SimpleNamespace(config=SimpleNamespace(ra=ra_block),
                                                   base_dir=tmp_path),
                          hsm_profile=ra.token.profile())
    up = Upstream.from_app(app)  # type: ignore[arg-type]
    assert (up.root_file, up.cert_file, up.key_label, up.timeout) == (
        tmp_path / "ra" / "upstream-root.pem", tmp_path / "ra" / "credential.pem",
        "ra-credential", 5.0)
    assert up.probe().status == 200
    up.close()


def test_a_narrowed_tls_table_is_what_the_client_offers(server: Server, ra: Ra) -> None:
    from appliance.x509 import algorithms

    with algorithms.using(algorithms.FIPS):  # AES-GCM suites, NIST groups only
        up = ra.upstream(server)
        assert up.probe().status == 200  # libcurl took the table's suite and group names
        up.close()
