"""OCSP end to end: real SoftHSM, real ``appliance serve`` (two gunicorn workers), real
``openssl ocsp``, real Redis (127.0.0.1:6379, a key prefix of its own per run).

One quickstarted appliance serves the module. Token work the tests do themselves
(re-signing after a revocation) runs in a subprocess with the data directory's own
SoftHSM configuration, as the revoke path would run it in an API worker.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from appliance import config, lint
from appliance.ocsp import cache
from appliance.ocsp.certid import cert_id_hashes
from appliance.runtime import Appliance
from tests.ceremony_helpers import clone_data_dir, openssl
from tests.conftest import run_cli
from tests.service_helpers import Server, configure, load_pem, make_csr, serving_two_workers

REDIS_URL = "redis://127.0.0.1:6379/15"
OCSP_TYPE = "application/ocsp-response"


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except Exception:
        return False


REDIS = _redis_up()


@dataclass
class Ctx:
    server: Server
    root: Path
    issuing: Path
    cafile: Path  # root + issuing
    prefix: str
    spare: Path  # a copy of the data directory made before serving (its own token)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ctx]:
    d = tmp_path_factory.mktemp("ocsp") / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    spare = clone_data_dir(d, d.parent / "spare")
    prefix = f"test-ocsp-{secrets.token_hex(6)}:"
    if REDIS:
        configure(d, "ocsp", redis_url=REDIS_URL, redis_prefix=prefix)
    with serving_two_workers(d) as srv:
        r = requests.get(srv.http + "/ca/root.pem", timeout=10)
        root = d.parent / "root.pem"
        root.write_text(r.text)
        issuing = d.parent / "issuing.pem"
        issuing.write_text(requests.get(srv.http + "/ca/issuing.pem", timeout=10).text)
        cafile = d.parent / "cafile.pem"
        cafile.write_text(root.read_text() + issuing.read_text())
        try:
            yield Ctx(srv, root, issuing, cafile, prefix, spare)
        finally:
            if REDIS:
                import redis

                client = redis.Redis.from_url(REDIS_URL)
                keys = list(client.scan_iter(match=prefix + "*"))
                if keys:
                    client.delete(*keys)


@dataclass
class Leaf:
    pem: Path
    cert: x509.Certificate
    serial_hex: str
    id: int


def issue(ctx: Ctx, work: Path, name: str | None = None) -> Leaf:
    name = name or f"h{secrets.token_hex(4)}.example.com"
    csr = make_csr(work, f"DNS:{name}", cn=name)
    r = ctx.server.sign(csr, ctx.server.token(name))
    assert r.status_code == 201, r.text
    cert = load_pem(r.json()["crt"])
    pem = work / f"{name}.pem"
    pem.write_text(r.json()["crt"])
    serial_hex = f"{cert.serial_number:x}"
    row = ctx.server.certificate_rows()[serial_hex]
    return Leaf(pem, cert, serial_hex, int(row["id"]))


def issuer_cert(ctx: Ctx) -> x509.Certificate:
    return x509.load_pem_x509_certificate(ctx.issuing.read_bytes())


def request_der(leaf: x509.Certificate, issuer: x509.Certificate,
                algorithm: hashes.HashAlgorithm | None = None, nonce: int = 0) -> bytes:
    b = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, algorithm or hashes.SHA1())
    if nonce:
        b = b.add_extension(x509.OCSPNonce(os.urandom(nonce)), critical=False)
    return b.build().public_bytes(serialization.Encoding.DER)


def post(ctx: Ctx, der: bytes, session: requests.Session | None = None) -> requests.Response:
    return (session or requests).post(ctx.server.http + "/ocsp", data=der, timeout=10,
                                      headers={"Content-Type": "application/ocsp-request"})


def ocsp_cli(ctx: Ctx, leaf: Path | None, *extra: str,
             issuer: Path | None = None) -> subprocess.CompletedProcess[str]:
    args = ["ocsp", "-issuer", str(issuer or ctx.issuing)]
    if leaf is not None:
        args += ["-cert", str(leaf)]
    return openssl(*args, *extra, "-url", ctx.server.http + "/ocsp", "-CAfile",
                   str(ctx.cafile), "-no_nonce", check=False)


def in_data_dir(ctx: Ctx, code: str) -> str:
    """Run ``code`` (with ``app`` bound to this data directory's appliance) in a subprocess:
    the token is only reachable through the data directory's own SoftHSM configuration."""
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    prog = textwrap.dedent("""
        import sys
        from pathlib import Path
        from appliance import config
        from appliance.runtime import Appliance
        app = Appliance(config.load(Path(sys.argv[1])))
    """) + textwrap.dedent(code) + "\napp.close()\n"
    proc = subprocess.run([sys.executable, "-c", prog, str(ctx.server.data_dir / "appliance.yaml")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def revoke_in_db(ctx: Ctx, leaf: Leaf, reason: str = "keyCompromise") -> datetime:
    when = datetime.now(UTC).replace(microsecond=0)
    with ctx.server.db(readonly=False) as conn:
        conn.execute("UPDATE certificates SET status = 'revoked', revoked_at = ?, "
                     "revocation_reason = ? WHERE id = ?",
                     (when.replace(tzinfo=None).isoformat(" "), reason, leaf.id))
    conn.close()
    return when


def parse(r: requests.Response) -> ocsp.OCSPResponse:
    return ocsp.load_der_ocsp_response(r.content)


# -- good, through openssl --------------------------------------------------------------------


def test_good_by_openssl_with_the_delegated_signer(ctx: Ctx, tmp_path: Path) -> None:
    leaf = issue(ctx, tmp_path)
    # Pre-signed at issuance: both CertID variants are in the database already.
    with ctx.server.db() as conn:
        row = conn.execute("SELECT status, der, der_sha256, this_update, next_update "
                           "FROM ocsp_responses WHERE certificate_id = ?", (leaf.id,)).fetchone()
    conn.close()
    assert row is not None and row["status"] == "good" and row["der_sha256"]
    for digest in ([], ["-sha256"]):
        proc = ocsp_cli(ctx, None, *digest, "-cert", str(leaf.pem), "-resp_text")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 0, out
        assert "Response verify OK" in out, out
        assert f"{leaf.pem}: good" in out, out
        # Signed by the delegated responder, whose certificate rides along.
        assert "Responder Id: " in out and "OCSP Responder" in out, out
        assert ("Hash Algorithm: sha256" if digest else "Hash Algorithm: sha1") in out, out
    resp = parse(post(ctx, request_der(leaf.cert, issuer_cert(ctx))))
    assert resp.certificate_status == ocsp.OCSPCertStatus.GOOD
    (signer,) = resp.certificates
    assert x509.ExtendedKeyUsageOID.OCSP_SIGNING in signer.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage).value
    signer.extensions.get_extension_for_class(x509.OCSPNoCheck)
    assert resp.responder_key_hash is not None and resp.responder_name is None
    assert resp.signature_hash_algorithm is not None
    assert resp.signature_hash_algorithm.name == "sha256"
    assert resp.next_update_utc is not None
    assert resp.next_update_utc - resp.this_update_utc == timedelta(days=4)
    assert abs((resp.this_update_utc - datetime.now(UTC)).total_seconds() + 300) < 120
    for der in (row["der"], row["der_sha256"]):
        assert lint.blocking(lint.lint_ocsp_response(bytes(der))) == []


# -- refusals -------------------------------------------------------------------------------


def _no_cache(r: requests.Response, status: ocsp.OCSPResponseStatus, http: int = 200) -> None:
    assert r.status_code == http, r.content
    assert r.headers["Content-Type"] == OCSP_TYPE
    assert r.headers["Cache-Control"] == "max-age=0, no-cache"
    assert "ETag" not in r.headers and "Expires" not in r.headers
    assert parse(r).response_status == status


def test_unknown_serial_and_unknown_issuer_are_unauthorized(ctx: Ctx, tmp_path: Path) -> None:
    proc = ocsp_cli(ctx, None, "-serial", "0x1234")
    assert "Responder Error: unauthorized (6)" in proc.stdout + proc.stderr, proc
    # A CA that is not ours, and a certificate it issued with a serial we did issue.
    leaf = issue(ctx, tmp_path)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Some Other CA")])
    now = datetime.now(UTC)
    other = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
             .public_key(key.public_key()).serial_number(7)
             .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(key, hashes.SHA256()))
    twin = (x509.CertificateBuilder().subject_name(leaf.cert.subject).issuer_name(name)
            .public_key(key.public_key()).serial_number(leaf.cert.serial_number)
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=9))
            .sign(key, hashes.SHA256()))
    (tmp_path / "other.pem").write_bytes(other.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "twin.pem").write_bytes(twin.public_bytes(serialization.Encoding.PEM))
    proc = ocsp_cli(ctx, tmp_path / "twin.pem", issuer=tmp_path / "other.pem")
    assert "Responder Error: unauthorized (6)" in proc.stdout + proc.stderr, proc
    _no_cache(post(ctx, request_der(twin, other)), ocsp.OCSPResponseStatus.UNAUTHORIZED)
    # Our issuer's name with another key (and the reverse), for a serial we did issue.
    ours = cert_id_hashes(issuer_cert(ctx))["sha1"]
    theirs = cert_id_hashes(other)["sha1"]
    for name_hash, key_hash in ((ours[0], theirs[1]), (theirs[0], ours[1])):
        der = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
            name_hash, key_hash, leaf.cert.serial_number, hashes.SHA1()).build().public_bytes(
            serialization.Encoding.DER)
        _no_cache(post(ctx, der), ocsp.OCSPResponseStatus.UNAUTHORIZED)
    # A CertID hash we do not answer for.
    _no_cache(post(ctx, request_der(leaf.cert, issuer_cert(ctx), hashes.SHA384())),
              ocsp.OCSPResponseStatus.UNAUTHORIZED)
    # The issuing CA's own certificate, asked of the root: not a serial in our table.
    issuing = issuer_cert(ctx)
    root = x509.load_pem_x509_certificate(ctx.root.read_bytes())
    _no_cache(post(ctx, request_der(issuing, root)), ocsp.OCSPResponseStatus.UNAUTHORIZED)


def test_malformed_oversized_and_wrong_methods(ctx: Ctx) -> None:
    base = ctx.server.http
    for body in (b"", b"\x30\x03garbage", b"hello", b"\x30\x80\x00\x00"):
        _no_cache(requests.post(base + "/ocsp", data=body, timeout=10,
                                headers={"Content-Type": "application/ocsp-request"}),
                  ocsp.OCSPResponseStatus.MALFORMED_REQUEST, 400)
    for path in ("/ocsp", "/ocsp/", "/ocsp/!!!notbase64", "/ocsp/aGVsbG8="):
        _no_cache(requests.get(base + path, timeout=10),
                  ocsp.OCSPResponseStatus.MALFORMED_REQUEST, 400)
    big = b"\x30\x82\x27\x11" + b"\x00" * 10_001
    _no_cache(requests.post(base + "/ocsp", data=big, timeout=10),
              ocsp.OCSPResponseStatus.MALFORMED_REQUEST, 400)
    # Chunked (no Content-Length): still bounded.
    _no_cache(requests.post(base + "/ocsp", data=iter([big[:6000], big[6000:]]), timeout=10),
              ocsp.OCSPResponseStatus.MALFORMED_REQUEST, 400)
    for method in ("PUT", "DELETE", "PATCH"):
        r = requests.request(method, base + "/ocsp", data=b"x", timeout=10)
        assert r.status_code == 405 and "POST" in r.headers["Allow"], r


# -- GET, caching headers -------------------------------------------------------------------


def _b64_with_plus_and_slash(leaf: x509.Certificate, issuer: x509.Certificate) -> str:
    for _ in range(500):  # nonces are ignored: vary one until both + and / appear
        text = base64.b64encode(request_der(leaf, issuer, nonce=16 + _ % 3)).decode()
        if "+" in text and "/" in text and text.endswith("="):
            return text
    raise AssertionError("no request with + and / in its base64")


def test_get_variants_serve_the_same_bytes(ctx: Ctx, tmp_path: Path) -> None:
    leaf = issue(ctx, tmp_path)
    b64 = _b64_with_plus_and_slash(leaf.cert, issuer_cert(ctx))
    expected = post(ctx, request_der(leaf.cert, issuer_cert(ctx))).content
    variants = {
        "plain": b64,
        "url-encoded": quote(b64, safe=""),
        "encoded twice": quote(quote(b64, safe=""), safe=""),
        "no padding": b64.rstrip("="),
        "plus as space": b64.replace("+", "%20"),
        "url-safe alphabet": b64.replace("+", "-").replace("/", "_").rstrip("="),
        "double slash": "/" + b64,
    }
    for what, tail in variants.items():
        r = requests.get(f"{ctx.server.http}/ocsp/{tail}", timeout=10)
        assert r.status_code == 200, (what, r.status_code, r.content)
        assert r.content == expected, what  # nonces ignored: identical, cacheable bytes
    # openssl sends GET for small requests with -method GET... its default is POST; both:
    proc = ocsp_cli(ctx, leaf.pem)
    assert f"{leaf.pem}: good" in proc.stdout, proc


def test_success_headers_etag_and_304(ctx: Ctx, tmp_path: Path) -> None:
    leaf = issue(ctx, tmp_path)
    b64 = quote(base64.b64encode(request_der(leaf.cert, issuer_cert(ctx))).decode(), safe="")
    url = f"{ctx.server.http}/ocsp/{b64}"
    r = requests.get(url, timeout=10)
    assert r.status_code == 200
    resp = parse(r)
    h = r.headers
    assert h["Content-Type"] == OCSP_TYPE
    assert int(h["Content-Length"]) == len(r.content)
    assert parsedate_to_datetime(h["Last-Modified"]) == resp.this_update_utc
    assert resp.next_update_utc is not None
    assert parsedate_to_datetime(h["Expires"]) == resp.next_update_utc
    m = re.fullmatch(r"max-age=(\d+), public, no-transform, must-revalidate", h["Cache-Control"])
    assert m, h["Cache-Control"]
    left = (resp.next_update_utc - datetime.now(UTC)).total_seconds()
    assert left - 10 <= int(m.group(1)) <= left
    etag = h["ETag"]
    assert re.fullmatch(r'"[0-9a-f]{32}"', etag)  # strong
    r304 = requests.get(url, headers={"If-None-Match": etag}, timeout=10)
    assert r304.status_code == 304 and r304.content == b""
    assert r304.headers["ETag"] == etag and r304.headers["Expires"] == h["Expires"]
    r2 = requests.get(url, headers={"If-None-Match": f'"nope", {etag}'}, timeout=10)
    assert r2.status_code == 304
    r3 = requests.get(url, headers={"If-None-Match": '"nope"'}, timeout=10)
    assert r3.status_code == 200 and r3.content == r.content
    head = requests.head(url, timeout=10)
    assert head.status_code == 200 and head.content == b"" and head.headers["ETag"] == etag
    # The SHA-256 CertID has its own bytes and ETag.
    r256 = post(ctx, request_der(leaf.cert, issuer_cert(ctx), hashes.SHA256()))
    assert r256.status_code == 200 and r256.headers["ETag"] != etag
    assert parse(r256).hash_algorithm.name == "sha256"


def test_a_response_past_its_next_update_is_never_served(ctx: Ctx, tmp_path: Path) -> None:
    leaf = issue(ctx, tmp_path)
    past = datetime.now(UTC).replace(tzinfo=None) - timedelta(hours=1)
    with ctx.server.db(readonly=False) as conn:
        conn.execute("UPDATE ocsp_responses SET this_update = ?, next_update = ? "
                     "WHERE certificate_id = ?",
                     ((past - timedelta(days=4)).isoformat(" "), past.isoformat(" "), leaf.id))
    conn.close()
    for _ in range(4):
        r = post(ctx, request_der(leaf.cert, issuer_cert(ctx)))
        _no_cache(r, ocsp.OCSPResponseStatus.TRY_LATER)
    assert "past its nextUpdate" in ctx.server.log.read_text()
    # The pre-signer's --stale run picks it up (oldest first) and the responder serves again.
    out = ctx.server.cli("ocsp", "presign", "--stale").stdout
    assert re.search(r"stale: \d+ candidates, [1-9]\d* signed, 0 failed", out), out
    assert parse(post(ctx, request_der(leaf.cert, issuer_cert(ctx)))).certificate_status \
        == ocsp.OCSPCertStatus.GOOD


# -- revocation: the status store wins -------------------------------------------------------


def _answers(ctx: Ctx, leaf: Leaf, n: int) -> set[str]:
    """``n`` answers, each on a new connection (so both workers are asked)."""
    seen = set()
    der = request_der(leaf.cert, issuer_cert(ctx))
    for _ in range(n):
        r = post(ctx, der)  # requests.post: a new connection every time
        resp = parse(r)
        if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
            seen.add(resp.response_status.name)
        else:
            status = resp.certificate_status.name
            if resp.revocation_reason is not None:
                status += ":" + resp.revocation_reason.value
            seen.add(status)
    return seen


def _workers_with_memory_hits(ctx: Ctx) -> set[str]:
    seen: set[str] = set()
    for _ in range(40):  # each scrape lands on one worker
        text = requests.get(ctx.server.http + "/metrics", timeout=10).text
        seen |= {m.group(1) for m in re.finditer(
            r'ocsp_cache_hits_total\{worker="(\d+)",layer="memory"\} ([1-9]\d*)', text)}
        if len(seen) >= 2:
            break
    return seen


def test_revocation_is_served_by_every_worker_at_once(ctx: Ctx, tmp_path: Path) -> None:
    leaf = issue(ctx, tmp_path)
    assert _answers(ctx, leaf, 24) == {"GOOD"}  # now cached "good" in memory (and Redis)
    assert len(_workers_with_memory_hits(ctx)) == 2  # both workers answer from memory
    revoked_at = revoke_in_db(ctx, leaf)
    # As the revoke path does it: committed, then the epoch bump ... and until the response
    # is re-signed, nobody may say "good" any more.
    in_data_dir(ctx, f"""
        from appliance.ocsp import cache
        cache.revocation_happened(app, {leaf.serial_hex!r})
    """)
    assert _answers(ctx, leaf, 16) == {"TRY_LATER"}
    in_data_dir(ctx, f"""
        from appliance.ocsp import presign
        print(presign.presign_one(app, {leaf.id}).status)
    """)
    assert _answers(ctx, leaf, 24) == {"REVOKED:keyCompromise"}
    proc = ocsp_cli(ctx, leaf.pem)
    out = proc.stdout + proc.stderr
    assert f"{leaf.pem}: revoked" in out and "Reason: keyCompromise" in out, out
    assert "Response verify OK" in out
    resp = parse(post(ctx, request_der(leaf.cert, issuer_cert(ctx))))
    assert resp.revocation_time_utc == revoked_at
    assert lint.blocking(lint.lint_ocsp_response(resp.public_bytes(
        serialization.Encoding.DER))) == []


def test_a_stale_good_row_is_not_served_even_without_the_announcement(ctx: Ctx,
                                                                      tmp_path: Path) -> None:
    """The database row says good, the certificate says revoked (a revoker that died between
    its commit and its epoch bump): a database read never serves it; the pre-signer repairs
    it (and bumps every epoch)."""
    leaf = issue(ctx, tmp_path)
    revoke_in_db(ctx, leaf, "superseded")
    # Not cached anywhere yet: straight from the database, whose status wins.
    assert _answers(ctx, leaf, 8) == {"TRY_LATER"}
    out = ctx.server.cli("ocsp", "presign", "--stale").stdout
    assert ", 0 failed" in out, out
    assert _answers(ctx, leaf, 8) == {"REVOKED:superseded"}


@pytest.mark.parametrize("server_kind", ["gthread", "uvicorn"])
def test_the_other_listeners_answer_the_same(ctx: Ctx, tmp_path: Path, server_kind: str) -> None:
    """``service.http_server: gthread`` (the WSGI app under gunicorn's threaded worker) and
    ``uvicorn`` (the ASGI app under its uvicorn worker); the default is ``httptools``."""
    with serving_two_workers(ctx.spare, http_server=server_kind, http_workers=1) as srv:
        other = Ctx(srv, ctx.root, ctx.issuing, ctx.cafile, ctx.prefix, ctx.spare)
        leaf = issue(other, tmp_path)
        proc = ocsp_cli(other, leaf.pem)
        assert f"{leaf.pem}: good" in proc.stdout and "Response verify OK" in proc.stderr + \
            proc.stdout, proc
        b64 = _b64_with_plus_and_slash(leaf.cert, issuer_cert(ctx))
        r = requests.get(f"{srv.http}/ocsp/{quote(b64, safe='')}", timeout=10)
        assert r.status_code == 200 and parse(r).certificate_status == ocsp.OCSPCertStatus.GOOD
        assert requests.get(f"{srv.http}/ocsp/{b64.rstrip('=')}", timeout=10,
                            headers={"If-None-Match": r.headers["ETag"]}).status_code == 304
        _no_cache(requests.post(srv.http + "/ocsp", data=b"\x30\x00", timeout=10),
                  ocsp.OCSPResponseStatus.MALFORMED_REQUEST, 400)
        _no_cache(requests.post(srv.http + "/ocsp", data=b"\x30" * 10_001, timeout=10),
                  ocsp.OCSPResponseStatus.MALFORMED_REQUEST, 400)
        assert requests.put(srv.http + "/ocsp", data=b"x", timeout=10).status_code == 405
        expected = "gthread" if server_kind == "gthread" else "uvicorn_worker.UvicornWorker"
        assert expected in " ".join(_gunicorn_commands(srv))
        assert requests.get(srv.http + "/ca/root.pem", timeout=10).text == ctx.root.read_text()


def _gunicorn_commands(srv: Server) -> list[str]:
    out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True,
                         check=False).stdout
    return [line for line in out.splitlines() if f"127.0.0.1:{srv.http_port}" in line]


def test_the_default_listener_is_the_prefork_server_with_two_workers(ctx: Ctx) -> None:
    lines = _gunicorn_commands(ctx.server)
    # A supervisor and two workers of appliance.web.prefork (httptools on uvloop).
    assert len(lines) == 3 and all("-m appliance.web.prefork" in line for line in lines), lines
    assert all("--workers 2" in line for line in lines), lines
    assert requests.get(ctx.server.http + "/ca/root.pem", timeout=10).text == \
        ctx.root.read_text()
    assert requests.get(ctx.server.http + "/ca/root.crt", timeout=10).headers["Content-Type"] \
        == "application/pkix-cert"
    head = requests.head(ctx.server.http + "/health", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert requests.get(ctx.server.http + "/nothing", timeout=10).status_code == 404
    assert requests.post(ctx.server.http + "/health", timeout=10).status_code == 405


def test_a_second_listener_on_the_same_address_is_refused(ctx: Ctx) -> None:
    """SO_REUSEPORT would let a second instance share the port silently; it must fail."""
    env = dict(os.environ, APPLIANCE_CONFIG=str(ctx.server.data_dir / "appliance.yaml"))
    proc = subprocess.run([sys.executable, "-m", "appliance.web.prefork", "--bind",
                           f"127.0.0.1:{ctx.server.http_port}", "--workers", "1"],
                          capture_output=True, text=True, timeout=30, env=env, check=False)
    assert proc.returncode == 2 and "already serves" in proc.stderr, proc


def test_keep_alive_pipelining_and_framing_limits(ctx: Ctx, tmp_path: Path) -> None:
    """Raw HTTP/1.1 against the default listener: pipelined requests (an OCSP GET, a CA
    certificate answered from the thread pool, a POST) come back in order on one
    connection; broken framing and oversized heads get a 400 and the connection closes."""
    import socket

    leaf = issue(ctx, tmp_path)
    der = request_der(leaf.cert, issuer_cert(ctx))
    b64 = base64.urlsafe_b64encode(der).rstrip(b"=").decode()
    host = f"Host: 127.0.0.1:{ctx.server.http_port}\r\n"
    pipelined = (f"GET /ocsp/{b64} HTTP/1.1\r\n{host}\r\n"
                 f"GET /ca/root.pem HTTP/1.1\r\n{host}\r\n"
                 f"POST /ocsp HTTP/1.1\r\n{host}Content-Length: {len(der)}\r\n\r\n"
                 ).encode() + der

    def exchange(data: bytes, until_closed: bool = True) -> bytes:
        with socket.create_connection(("127.0.0.1", ctx.server.http_port), timeout=10) as s:
            s.sendall(data)
            if not until_closed:
                s.shutdown(socket.SHUT_WR)
            out = b""
            while chunk := s.recv(65536):
                out += chunk
            return out

    out = exchange(pipelined + f"GET /health HTTP/1.1\r\n{host}Connection: close\r\n\r\n"
                   .encode())
    statuses = re.findall(rb"HTTP/1\.1 (\d{3}) ", out)
    assert statuses == [b"200", b"200", b"200", b"200"], out[:400]
    ocsp_get, ca, ocsp_post = out.split(b"HTTP/1.1 ")[1:4]
    assert b"application/ocsp-response" in ocsp_get and b"BEGIN CERTIFICATE" in ca
    assert b"Connection: close" in out and out.endswith(b"ok\n")
    body_get = ocsp_get.split(b"\r\n\r\n", 1)[1]
    assert body_get and body_get == ocsp_post.split(b"\r\n\r\n", 1)[1].split(b"HTTP/")[0]
    # HTTP/1.0 without keep-alive: answered, then closed.
    out = exchange(f"GET /ocsp/{b64} HTTP/1.0\r\n\r\n".encode(), until_closed=False)
    assert out.startswith(b"HTTP/1.1 200 ") and b"Connection: close" in out
    # Garbage, an over-long URL, too many header fields: 400 and closed.
    for bad in (b"NOT HTTP AT ALL\r\n\r\n",
                b"GET /ocsp/" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n",
                f"GET /health HTTP/1.1\r\n{host}".encode() + b"X-A: b\r\n" * 101 + b"\r\n"):
        out = exchange(bad)
        assert out.startswith(b"HTTP/1.1 400 "), out[:200]
    out = exchange(b"GET /ocsp/" + b"A" * 9000 + b" HTTP/1.1\r\n\r\n")
    assert out.endswith(b"\r\n\r\n" + bytes.fromhex("30030a0101"))  # malformedRequest


# -- the pre-signer CLI, metrics, Redis -------------------------------------------------------


def test_presign_cli_and_audit(ctx: Ctx, tmp_path: Path) -> None:
    issue(ctx, tmp_path)
    proc = ctx.server.cli("ocsp", "presign", "--all", "--progress", "--batch", "1")
    out = proc.stdout
    m = re.search(r"all: (\d+) candidates, (\d+) signed, 0 failed", out)
    assert m and int(m.group(1)) == int(m.group(2)) >= 2, out
    # progress on stderr (asked for: not a terminal), from none to all; the summary on stdout
    assert f"all: 0/{m.group(1)} (0%)" in proc.stderr, proc.stderr
    assert f"all: {m.group(1)}/{m.group(1)} (100%)" in proc.stderr, proc.stderr
    assert "(100%)" not in out
    again = ctx.server.cli("ocsp", "presign", "--stale").stdout
    assert again.startswith("stale: 0 candidates"), again
    events = ctx.server.events("ocsp.presign")
    assert events[-1]["details"]["mode"] == "stale" and events[-2]["details"]["mode"] == "all"
    assert events[-2]["details"]["signed"] == int(m.group(2))


def test_metrics_and_health(ctx: Ctx, tmp_path: Path) -> None:
    leaf = issue(ctx, tmp_path)
    post(ctx, request_der(leaf.cert, issuer_cert(ctx)))
    text = requests.get(ctx.server.http + "/metrics", timeout=10).text
    for name in ("ocsp_responses_total", "ocsp_cache_hits_total",
                 "ocsp_response_age_seconds_bucket", "ocsp_presigned_responses",
                 "ocsp_presigned_oldest_age_seconds", "ocsp_presigned_missing 0"):
        assert name in text, text
    assert requests.get(ctx.server.http + "/health", timeout=10).text == "ok\n"


@pytest.mark.skipif(not REDIS, reason="no Redis on 127.0.0.1:6379")
def test_redis_cache_layer(ctx: Ctx, tmp_path: Path) -> None:
    import redis

    leaf = issue(ctx, tmp_path)
    assert _answers(ctx, leaf, 2) == {"GOOD"}
    client = redis.Redis.from_url(REDIS_URL)
    key = f"{ctx.prefix}r:{leaf.serial_hex}"
    packed = client.get(key)
    assert packed is not None and client.ttl(key) > 3 * 86400
    # A process that has never seen the serial answers from Redis, not the database.
    settings = config.load(ctx.server.data_dir / "appliance.yaml")
    app = Appliance(settings)
    try:
        store = cache.ResponseStore(app)
        assert store.redis is not None and store.redis.prefix == ctx.prefix
        with ctx.server.db() as conn:
            authority_id = conn.execute("SELECT authority_id FROM certificates WHERE id = ?",
                                        (leaf.id,)).fetchone()[0]
        conn.close()
        found = store.lookup(leaf.serial_hex, {authority_id})
        assert isinstance(found, cache.Entry) and found.status == "good"
        assert store.hits == {"memory": 0, "redis": 1, "database": 0, "database_down": 0}
        assert store.lookup(leaf.serial_hex, {authority_id}) is found
        assert store.hits["memory"] == 1
        assert store.lookup(leaf.serial_hex, {authority_id + 999}) == cache.UNKNOWN
        # The revocation announcement drops the Redis entry and this process's copy.
        revoke_in_db(ctx, leaf)
        cache.revocation_happened(app, leaf.serial_hex)
        assert client.get(key) is None and leaf.serial_hex not in store.memory
        assert store.lookup(leaf.serial_hex, {authority_id}) == cache.UNAVAILABLE
        # A stale "good" written back to Redis by a slow worker carries the old epoch: ignored.
        client.set(key, packed)
        assert store.lookup(leaf.serial_hex, {authority_id}) == cache.UNAVAILABLE
    finally:
        app.close()


# -- the store on both databases (no token needed) --------------------------------------------


def test_store_layers_and_the_status_guard_on_each_database(db_url: str, tmp_path: Path) -> None:
    from appliance.config import ApplianceConfig, DatabaseConfig, Settings
    from appliance.ocsp import presign
    from appliance.ocsp.signer import CertStatus, SignedResponse
    from appliance.store import migrate
    from appliance.store.models import Authority, Certificate

    settings = Settings(ApplianceConfig(database=DatabaseConfig(url=db_url)), tmp_path)
    app = Appliance(settings)
    try:
        migrate.upgrade(app.db)
        now = datetime.now(UTC)
        with app.db.transaction() as db:
            db.add(Authority(id=1, name="ca", kind="intermediate", subject="CN=ca",
                             certificate_der=b"x", fingerprint_sha256="0" * 64,
                             not_before=now, not_after=now + timedelta(days=9),
                             created_at=now))
            for i, status in ((1, "issued"), (2, "revoked"), (3, "reserved"), (4, "issued")):
                db.add(Certificate(id=i, serial_hex=f"a{i}", authority_id=1,
                                   provisioner_name="p", requester="r", template="t",
                                   status=status, not_after=now + timedelta(days=1),
                                   reserved_at=now))

        def signed(cid: int, status: str, der: bytes, next_update: datetime
                   ) -> SignedResponse:
            return SignedResponse(cid, 1, f"a{cid}", status, der, der + b"256",
                                  next_update - timedelta(days=4), next_update, now)

        def expect(cid: int, status: str) -> dict[int, CertStatus]:
            return {cid: CertStatus(cid, 1, f"a{cid}", status)}

        with app.db.transaction() as db:
            assert presign.store_signed(db, [signed(1, "good", b"g1", now + timedelta(days=4))],
                                        expect(1, "issued")) == 1
            # Signed as good, but the certificate is revoked by now: not stored.
            assert presign.store_signed(db, [signed(2, "good", b"g2", now + timedelta(days=4))],
                                        expect(2, "issued")) == 0
            # Stored once as good while it was (simulated), now revoked: out of step.
            assert presign.store_signed(db, [signed(4, "good", b"g4", now - timedelta(hours=1))],
                                        expect(4, "issued")) == 1
        with app.db.transaction() as db:  # an upsert replaces
            assert presign.store_signed(db, [signed(1, "good", b"G1", now + timedelta(days=4))],
                                        expect(1, "issued")) == 1

        store = cache.ResponseStore(app, use_redis=False)
        found = store.lookup("a1", {1})
        assert isinstance(found, cache.Entry) and found.der == b"G1"
        assert found.der_sha256 == b"G1256"
        again = store.lookup("a1", {1})
        sqlite = db_url.startswith("sqlite")
        # SQLite: an epoch file beside the database; elsewhere without Redis: no epoch, so a
        # cached "good" is re-read from the database every time.
        assert store.hits == ({"memory": 1, "redis": 0, "database": 1, "database_down": 0}
                              if sqlite else
                              {"memory": 0, "redis": 0, "database": 2, "database_down": 0}
                              ), store.hits
        assert isinstance(again, cache.Entry)
        assert store.lookup("a1", {2}) == cache.UNKNOWN  # another issuer's CertID
        assert store.lookup("a2", {1}) == cache.UNAVAILABLE  # revoked, no response yet
        assert store.lookup("a3", {1}) == cache.UNKNOWN  # reserved: never "good"
        assert store.lookup("a4", {1}) == cache.UNAVAILABLE  # past its nextUpdate
        assert store.lookup("ffff", {1}) == cache.UNKNOWN
        if sqlite:
            # A memory entry past its nextUpdate is dropped, not served.
            store.lookup("a1", {1})
            store.memory["a1"].next_update = time_now() - 1
            assert store.lookup("a1", {1}) is not again
            # An epoch bump of the serial's slot sends a cached "good" back to the database.
            before = dict(store.hits)
            cache.revocation_happened(app, "a1")
            store.lookup("a1", {1})
            assert store.hits["database"] == before["database"] + 1
            epoch = cache.file_epoch(app)
            assert epoch is not None
            assert epoch.current(cache.slot_of("a1")) == epoch.current(
                (cache.slot_of("a1") + 1) % cache.SLOTS) + 1  # only that slot moved
        # The pre-signer picks what is missing or out of step, oldest (missing) first.
        with app.db.transaction() as db:
            db.get(Certificate, 4).status = "revoked"  # type: ignore[union-attr]
        assert presign.candidates(app, stale_only=True) == [2, 4]
        assert presign.candidates(app, stale_only=False) == [2, 4, 1]
        assert "ocsp_presigned_responses" in \
            __import__("appliance.ocsp.responder", fromlist=["x"]).presigned_state(store.reader)
    finally:
        app.close()


def time_now() -> float:
    import time

    return time.time()


@pytest.mark.skipif(not REDIS, reason="no Redis on 127.0.0.1:6379")
def test_redis_epochs_never_repeat() -> None:
    """The epoch of a database other than SQLite lives in Redis; a counter that is evicted
    restarts from the clock, so an entry stamped with an old value never becomes valid."""
    prefix = f"test-ocsp-epoch-{secrets.token_hex(6)}:"
    layer = cache.RedisLayer(REDIS_URL, prefix)
    try:
        epoch = cache.RedisEpoch(layer)
        before = time.time_ns()
        first = epoch.current(3)  # unknown: started from the clock, and that value read back
        assert first is not None and before <= first <= time.time_ns()
        assert epoch.current(3) == first
        epoch.bump(3)
        assert epoch.current(3) == first + 1 and epoch.current(4) != first + 1
        layer.client.delete(f"{prefix}epoch:3")  # evicted
        epoch.bump(3)
        again = epoch.current(3)
        assert again is not None and again > first + 1
        epoch.bump(None)
        assert epoch.current(3) == again + 1
    finally:
        keys = list(layer.client.scan_iter(match=prefix + "*"))
        if keys:
            layer.client.delete(*keys)


def test_batch_backs_off_while_the_token_is_unavailable_and_survives_failures(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Token faults are injected (a token that comes and goes cannot be made on demand)."""
    from appliance.config import ApplianceConfig, DatabaseConfig, Settings
    from appliance.errors import HsmUnavailableError
    from appliance.ocsp import presign
    from appliance.ocsp.signer import CertStatus, SignedResponse
    from appliance.store import migrate
    from appliance.store.models import Authority, Certificate

    settings = Settings(ApplianceConfig(database=DatabaseConfig(
        url=f"sqlite:///{tmp_path / 'a.db'}")), tmp_path)
    app = Appliance(settings)
    now = datetime.now(UTC)
    migrate.upgrade(app.db)
    with app.db.transaction() as db:
        db.add(Authority(id=1, name="ca", kind="intermediate", subject="CN=ca",
                         certificate_der=b"x", fingerprint_sha256="0" * 64, not_before=now,
                         not_after=now + timedelta(days=9), created_at=now))
        for i in range(1, 8):
            db.add(Certificate(id=i, serial_hex=f"b{i}", authority_id=1, provisioner_name="p",
                               requester="r", template="t", status="issued",
                               not_after=now + timedelta(days=1), reserved_at=now))

    class FlakyToken:
        def __init__(self, down_for: int) -> None:
            self.down_for = down_for
            self.calls: list[int] = []

        def sign(self, cs: CertStatus) -> SignedResponse:
            self.calls.append(cs.certificate_id)
            if cs.certificate_id == 3:
                raise ValueError("this one is broken")
            if cs.certificate_id == 5 and self.down_for > 0:
                self.down_for -= 1
                raise HsmUnavailableError("token gone")
            return SignedResponse(cs.certificate_id, 1, cs.serial_hex, "good", b"d", b"e",
                                  now, now + timedelta(days=4), now)

    sleeps: list[float] = []
    monkeypatch.setattr(presign.time, "sleep", sleeps.append)
    try:
        flaky = FlakyToken(down_for=3)
        monkeypatch.setattr(presign, "signer_for", lambda _app: flaky)
        ids = presign.candidates(app, stale_only=True)
        assert ids == list(range(1, 8))
        r = presign.process_ids(app, ids, batch=3, backoff=(0.5, 1.0, 60.0))
        assert (r.signed, r.failed, r.not_attempted) == (6, 1, 0)
        assert sleeps == [0.5, 1.0, 1.0]  # doubling, capped
        assert flaky.calls.count(5) == 4
        # The token stays away longer than the budget: the rest waits for the next run.
        sleeps.clear()
        flaky = FlakyToken(down_for=100)
        r = presign.process_ids(app, [1, 2, 5, 6, 7], batch=2, backoff=(1.0, 4.0, 10.0))
        assert (r.signed, r.failed, r.not_attempted) == (2, 0, 3)
        assert sum(sleeps) <= 10.0 and flaky.calls[-1] == 5
        assert presign.candidates(app, stale_only=True) == [3]  # missing: still first in line
    finally:
        app.close()
