"""The API answers only to the hosts it is configured as, and every ACME URL comes from
``service.external_url``, never from the request's Host (issue 12: "URLs from
configuration"). Real server, real TLS; raw requests where ``requests`` would fix the
Host up itself."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives.asymmetric import ec

from tests import service_helpers
from tests.acme_client import jwk_of, sign
from tests.ceremony_helpers import clone_data_dir
from tests.conftest import run_cli
from tests.service_helpers import Server, free_port, make_csr, serving

EXTERNAL = "https://ca.example.com:9443"


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hosts") / "base"
    run_cli("quickstart", "--dir", str(d), check=True)
    return d


@pytest.fixture(scope="module")
def default(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """As quickstart leaves it: no external_url, no allowed_hosts."""
    data = clone_data_dir(base, tmp_path_factory.mktemp("default") / "data")
    with serving(data, rate_limit_per_minute=0) as s:
        yield s


@pytest.fixture(scope="module")
def configured(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Behind a name of its own (as through a proxy), with a second name and its address."""
    data = clone_data_dir(base, tmp_path_factory.mktemp("configured") / "data")
    # The API's port must be known before serving() writes the block that names it.
    ports = [free_port(), free_port()]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(service_helpers, "free_port", lambda: ports.pop(0) if ports else free_port())
        with serving(data, rate_limit_per_minute=0, external_url=EXTERNAL,
                     allowed_hosts=json.dumps([f"127.0.0.1:{ports[0]}", "CA2.example.com"])
                     ) as s:
            mp.undo()
            yield s


def _get(server: Server, path: str, host: str) -> requests.Response:
    return requests.get(server.api + path, headers={"Host": host}, verify=str(server.roots),
                        timeout=30)


def _raw(server: Server, request: bytes) -> tuple[int, bytes]:
    """One request as written, over TLS; the status and the body."""
    ctx = ssl.create_default_context(cafile=str(server.roots))
    with socket.create_connection(("127.0.0.1", server.api_port), timeout=30) as sock, \
            ctx.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
        tls.sendall(request)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


@pytest.mark.parametrize("path", ["/acme/acme/directory", "/1.0/roots"])
def test_a_foreign_host_is_refused(default: Server, path: str) -> None:
    r = _get(default, path, "evil.example")
    assert r.status_code == 400, r.text
    doc = r.json()
    assert "evil.example" in (doc.get("detail") or doc.get("message"))
    if path.startswith("/acme/"):
        assert r.headers["Content-Type"] == "application/problem+json"
        nonce = requests.head(default.api + "/acme/acme/new-nonce",
                              headers={"Host": "evil.example"}, verify=str(default.roots),
                              timeout=30)
        assert nonce.status_code == 400 and "Replay-Nonce" not in nonce.headers
        assert doc["type"] == "urn:ietf:params:acme:error:malformed"
    else:
        assert doc["error"] == "bad_host"


@pytest.mark.parametrize("path", ["/1.0/health", "/1.0/ready", "/metrics"])
def test_probes_answer_whatever_host_a_load_balancer_names(default: Server, path: str) -> None:
    r = _get(default, path, "10.0.0.7:8443")
    assert r.status_code == 200, r.text


def test_a_sign_request_to_a_foreign_host_does_nothing(default: Server, tmp_path: Path) -> None:
    name = "h.example.com"
    ott = default.token(name)
    before = default.issued_count()
    r = requests.post(default.api + "/1.0/sign", headers={"Host": "evil.example"},
                      json={"csr": make_csr(tmp_path, f"DNS:{name}", cn=name), "ott": ott},
                      verify=str(default.roots), timeout=30)
    assert r.status_code == 400 and r.json()["error"] == "bad_host", r.text
    assert default.issued_count() == before
    # The token was not even read: it still signs, at the right host.
    r = default.sign(make_csr(tmp_path, f"DNS:{name}", cn=name), ott)
    assert r.status_code == 201, r.text


def test_default_names_and_comparison(default: Server) -> None:
    port = default.api_port
    directory = _get(default, "/acme/acme/directory", f"127.0.0.1:{port}")
    assert directory.status_code == 200
    assert directory.json()["newNonce"] == f"https://127.0.0.1:{port}/acme/acme/new-nonce"
    # Port 443 is implied without one: not this API's port.
    assert _get(default, "/1.0/roots", "127.0.0.1").status_code == 400
    assert _get(default, "/1.0/roots", "127.0.0.1:443").status_code == 400
    status, body = _raw(default, b"GET /1.0/roots HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert status == 400 and b"no Host header" in body
    ok = f"GET /1.0/roots HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    assert _raw(default, ok.encode())[0] == 200
    assert _raw(default, b"GET /1.0/roots HTTP/1.0\r\n\r\n")[0] == 200
    absolute = (f"GET https://evil.example/1.0/roots HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                "Connection: close\r\n\r\n")
    status, body = _raw(default, absolute.encode())
    assert status == 400 and b"evil.example" in body


def test_urls_come_from_the_external_url(configured: Server) -> None:
    for host in (f"127.0.0.1:{configured.api_port}", "ca2.example.com", "CA2.EXAMPLE.COM:443",
                 "ca.example.com:9443"):
        r = _get(configured, "/acme/acme/directory", host)
        assert r.status_code == 200, (host, r.text)
        d = r.json()
        urls = [v for k, v in d.items() if k != "meta"]
        assert urls and all(u.startswith(f"{EXTERNAL}/acme/acme/") for u in urls), d
        assert r.headers["Link"] == f'<{EXTERNAL}/acme/acme/directory>;rel="index"'
    assert _get(configured, "/acme/acme/directory", "evil.example").status_code == 400
    # The name alone (port 443) is not the external URL's (9443).
    assert _get(configured, "/acme/acme/directory", "ca.example.com").status_code == 400


def test_the_jws_url_is_checked_against_the_external_url(configured: Server) -> None:
    """A client signs the URLs the directory gave it; one signed for the address it
    connected to instead (what Host would have said) is refused."""
    key = ec.generate_private_key(ec.SECP256R1())
    real = f"{configured.api}/acme/acme/new-account"

    def post(signed_url: str) -> requests.Response:
        nonce = requests.head(f"{configured.api}/acme/acme/new-nonce",
                              verify=str(configured.roots), timeout=30
                              ).headers["Replay-Nonce"]
        jws = sign(key, {"alg": "ES256", "url": signed_url, "nonce": nonce, "jwk": jwk_of(key)},
                   {"termsOfServiceAgreed": True})
        return requests.post(real, data=json.dumps(jws), verify=str(configured.roots),
                             headers={"Content-Type": "application/jose+json"}, timeout=30)

    refused = post(real)
    assert refused.status_code == 403, refused.text
    assert refused.json()["type"] == "urn:ietf:params:acme:error:unauthorized"
    assert "url" in refused.json()["detail"]
    created = post(f"{EXTERNAL}/acme/acme/new-account")
    assert created.status_code == 201, created.text
    assert created.headers["Location"].startswith(f"{EXTERNAL}/acme/acme/account/")


def test_a_token_for_the_external_url_is_good_at_this_node(configured: Server,
                                                           tmp_path: Path) -> None:
    """Behind a load balancer (external_url), a one-time token names the balancer's URL and
    is good at whichever node it reaches, once; this node's own URL stays good; any other
    audience is refused and nothing is issued for it."""
    before = configured.issued_count()
    for i, audience in enumerate((EXTERNAL + "/1.0/sign", configured.audience)):
        name = f"aud{i}.example.com"
        token = configured.token(name, audience=audience)
        r = configured.sign(make_csr(tmp_path, f"DNS:{name}", cn=name), token)
        assert r.status_code == 201, r.text
        again = configured.sign(make_csr(tmp_path, f"DNS:{name}", cn=name), token)
        assert again.status_code == 401, again.text  # spent
    for audience in ("https://other.example.com:9443/1.0/sign", EXTERNAL + "/1.0/revoke"):
        name = "aud-wrong.example.com"
        r = configured.sign(make_csr(tmp_path, f"DNS:{name}", cn=name),
                            configured.token(name, audience=audience))
        assert r.status_code == 401, r.text
    assert configured.issued_count() == before + 2
    # `appliance token` mints for the URL clients reach: the external one.
    minted = configured.cli("token", "admin", "--san", "aud-cli.example.com",
                            "--password-file", configured.password_file()).stdout.strip()
    assert jwt.decode(minted, options={"verify_signature": False})["aud"] == \
        EXTERNAL + "/1.0/sign"
