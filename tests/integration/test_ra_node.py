"""An RA node (issue 15) with real processes: a CA (quickstart), an RA made by `ra init`,
registered by the CA's `provisioner add --type ra`, imported with `ra import`, served.

What the RA issues is the CA's (openssl verifies it with the CA's root alone); the RA's
own API certificate came through the CA too; a refusal at the RA names the RA, one at the
CA keeps the CA's hop; renewal and revocation at the RA are done by the CA; the RA renews
its credential in the background; the CA away is a 503 upstream_unavailable with
Retry-After and nothing issued, an ACME order finalized meanwhile stays processing and
completes when the CA is back; both audit logs verify.
"""

from __future__ import annotations

import contextlib
import http.server
import ipaddress
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import NameOID

from tests.acme_client import Client, b64
from tests.conftest import run_cli
from tests.service_helpers import (
    Server,
    _wait_ready,
    configure,
    free_port,
    load_pem,
    make_csr,
    serving,
    verify_chain,
)


@dataclass
class Pair:
    ca: Server
    ra: Server
    root_pem: str
    tmp: Path
    http01: int
    edge2: Server


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    tmp = tmp_path_factory.mktemp("ra-node")
    ca_dir, ra_dir = tmp / "ca", tmp / "edge-1"
    run_cli("quickstart", "--dir", str(ca_dir), check=True)
    with serving(ca_dir) as ca:
        root_pem = ca.get("/1.0/roots").json()["crts"][0]
        (tmp / "root.pem").write_text(root_pem)
        init = run_cli("ra", "init", "--dir", str(ra_dir), "--upstream", ca.api,
                       "--upstream-root", str(tmp / "root.pem"), "--name", "edge-1",
                       check=True)
        assert init.stdout.startswith("-----BEGIN CERTIFICATE REQUEST-----")
        (tmp / "edge-1.csr").write_text(init.stdout)
        # Before the import the RA refuses to serve, saying why.
        early = run_cli("--dir", str(ra_dir), "serve")
        assert early.returncode != 0
        assert "ra import" in early.stderr
        # Short-lived credentials, renewed by the RA's background job as soon as it runs.
        configure(ca_dir, "ra", credential_lifetime="10m")
        configure(ra_dir, "ra", renew_fraction=0.05, retry_interval_seconds=15)
        http01 = free_port()
        configure(ra_dir, "acme", http01_port=http01)
        added = ca.cli("provisioner", "add", "edge-1", "--type", "ra", "--csr",
                       str(tmp / "edge-1.csr"))
        (tmp / "edge-1.pem").write_text(added.stdout)
        run_cli("--dir", str(ra_dir), "ra", "import", str(tmp / "edge-1.pem"), check=True)
        with serving(ra_dir, workers=1, http_workers=1) as ra:
            # edge-2 below edge-1: registered through edge-1 (which forwards the
            # registration), its requests forwarded by edge-1.
            e2_dir = tmp / "edge-2"
            init2 = run_cli("ra", "init", "--dir", str(e2_dir), "--upstream", ra.api,
                            "--upstream-root", str(tmp / "root.pem"), "--name", "edge-2",
                            check=True)
            (tmp / "edge-2.csr").write_text(init2.stdout)
            added2 = ra.cli("provisioner", "add", "edge-2", "--type", "ra", "--csr",
                            str(tmp / "edge-2.csr"))
            (tmp / "edge-2.pem").write_text(added2.stdout)
            run_cli("--dir", str(e2_dir), "ra", "import", str(tmp / "edge-2.pem"), check=True)
            with serving(e2_dir, workers=1, http_workers=1) as edge2:
                yield Pair(ca, ra, root_pem, tmp, http01, edge2)


def test_sign_through_the_ra_is_the_cas_certificate(pair: Pair) -> None:
    ra, ca = pair.ra, pair.ca
    csr = make_csr(pair.tmp, "DNS:svc.example.test", cn="svc.example.test")
    resp = ra.sign(csr, ra.token("svc.example.test"))
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    cert = load_pem(doc["crt"])
    serial = f"{cert.serial_number:x}"
    assert doc["serial"] == serial
    checked = verify_chain(pair.tmp, pair.root_pem, doc["certChain"][1:], doc["crt"])
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The CA issued and keeps it; the RA keeps a copy, and audits the hop.
    assert ca.certificate_rows()[serial]["status"] == "issued"
    assert ra.certificate_rows()[serial]["status"] == "issued"
    hops = [e for e in ra.events("ra.forwarded") if e["object_ids"].get("serial") == serial]
    assert hops and hops[0]["outcome"] == "success"
    assert hops[0]["details"]["decision"] == "forwarded"


def test_a_one_time_token_is_spent_at_the_ra(pair: Pair) -> None:
    """The RA spends the token it authenticated: a replay, with the same CSR or another,
    is refused there (401) and nothing more is issued at the CA."""
    ra = pair.ra
    token = ra.token("once.example.test")
    csr = make_csr(pair.tmp, "DNS:once.example.test", cn="once.example.test")
    assert ra.sign(csr, token).status_code == 201
    before = pair.ca.issued_count()
    for again in (csr, make_csr(pair.tmp, "DNS:once.example.test", cn="once.example.test")):
        resp = ra.sign(again, token)
        assert resp.status_code == 401, resp.text
        assert "token already used" in resp.json()["message"]
    assert pair.ca.issued_count() == before


def test_a_chained_ra_forwards_through_its_parent(pair: Pair) -> None:
    e2, ra, ca = pair.edge2, pair.ra, pair.ca
    csr = make_csr(pair.tmp, "DNS:deep.example.test", cn="deep.example.test")
    resp = e2.sign(csr, e2.token("deep.example.test"))
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    assert verify_chain(pair.tmp, pair.root_pem, doc["certChain"][1:],
                        doc["crt"]).returncode == 0
    assert doc.get("raPath", ["edge-2", "edge-1"]) == ["edge-2", "edge-1"]
    serial = doc["serial"]
    assert ca.certificate_rows()[serial]["status"] == "issued"
    assert e2.certificate_rows()[serial]["status"] == "issued"
    middle = [e for e in ra.events("ra.forwarded") if e["object_ids"].get("serial") == serial]
    assert middle and middle[0]["details"]["child"] == "edge-2"


def test_the_ras_api_certificate_comes_from_the_ca(pair: Pair) -> None:
    ra = pair.ra
    # Clients of the RA trust the CA's root only.
    assert requests.get(ra.api + "/1.0/health", verify=str(pair.tmp / "root.pem"),
                        timeout=10).status_code == 200
    chain = (ra.data_dir / "tls" / "api.crt").read_text()
    leaf, *rest = [p + "-----END CERTIFICATE-----\n"
                   for p in chain.split("-----END CERTIFICATE-----\n") if p.strip()]
    assert verify_chain(pair.tmp, pair.root_pem, rest, leaf).returncode == 0
    # /1.0/roots on the RA answers the CA's root.
    assert ra.get("/1.0/roots").json()["crts"] == [pair.root_pem]


def test_a_refusal_at_the_ra_names_the_ra(pair: Pair) -> None:
    ra = pair.ra
    before = pair.ca.issued_count()
    csr = make_csr(pair.tmp, "DNS:long.example.test", cn="long.example.test")
    resp = ra.sign(csr, ra.token("long.example.test", cert_lifetime=30 * 86400))
    assert resp.status_code == 400, resp.text
    doc = resp.json()
    assert doc["hop"] == "edge-1"
    assert doc["message"].startswith("refused at edge-1: ")
    assert pair.ca.issued_count() == before


def test_a_refusal_upstream_keeps_the_upstreams_hop(pair: Pair) -> None:
    ra, ca = pair.ra, pair.ca
    deny = pair.tmp / "deny.yaml"
    deny.write_text("x509:\n  deny:\n    dns: [x.denied.test]\n")
    ca.cli("policy", "set", "--provisioner", "edge-1", str(deny))
    before = ra.issued_count()
    csr = make_csr(pair.tmp, "DNS:x.denied.test", cn="x.denied.test")
    resp = ra.sign(csr, ra.token("x.denied.test"))
    assert resp.status_code in (400, 403), resp.text
    assert resp.json()["hop"] == "CA"
    assert ra.issued_count() == before
    refused = ra.events("ra.forwarded")[-1]
    assert refused["details"]["decision"] == "refused upstream"
    assert refused["details"]["hop"] == "CA"


def _holder(pair: Pair, name: str) -> tuple[Path, Path, dict[str, Any]]:
    """A certificate issued through the RA, written as files for a TLS client."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
           .sign(key, hashes.SHA256()))
    resp = pair.ra.sign(csr.public_bytes(serialization.Encoding.PEM).decode(),
                        pair.ra.token(name))
    assert resp.status_code == 201, resp.text
    doc = resp.json()
    crt, pem_key = pair.tmp / f"{name}.crt", pair.tmp / f"{name}.key"
    crt.write_text("".join(doc["certChain"][:-1]) if len(doc["certChain"]) > 2
                   else doc["crt"] + doc["ca"])
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return crt, pem_key, doc


def test_renew_by_mtls_at_the_ra_is_renewed_by_the_ca(pair: Pair) -> None:
    ra, ca = pair.ra, pair.ca
    crt, key, doc = _holder(pair, "renew.example.test")
    resp = requests.post(ra.api + "/1.0/renew", cert=(str(crt), str(key)),
                         verify=str(ra.roots), timeout=30)
    assert resp.status_code == 201, resp.text
    new = load_pem(resp.json()["crt"])
    old = load_pem(doc["crt"])
    assert new.serial_number != old.serial_number
    assert new.public_key() == old.public_key()
    serial = f"{new.serial_number:x}"
    assert ca.certificate_rows()[serial]["renewed_from"] == doc["serial"]
    assert ra.certificate_rows()[serial]["status"] == "issued"


def test_revoke_at_the_ra_revokes_at_the_ca(pair: Pair) -> None:
    ra, ca = pair.ra, pair.ca
    _, _, doc = _holder(pair, "revoke.example.test")
    serial = doc["serial"]
    audience = ra.audience.replace("/1.0/sign", "/1.0/revoke")
    resp = ra.post("/1.0/revoke", json={"serial": serial, "reasonCode": 4,
                                        "ott": ra.token(serial, audience=audience)})
    assert resp.status_code == 200, resp.text
    assert resp.json()["reason"] == "superseded"
    assert ca.certificate_rows()[serial]["status"] == "revoked"
    assert ra.certificate_rows()[serial]["status"] == "revoked"
    # A serial this RA never issued is refused here, naming the RA's rule.
    other = ra.post("/1.0/revoke", json={"serial": "1234abcd", "ott": ra.token(
        "1234abcd", audience=audience)})
    assert other.status_code == 404, other.text


def test_ocsp_and_crls_at_the_ra_are_the_cas(pair: Pair) -> None:
    ra, ca = pair.ra, pair.ca
    _, _, doc = _holder(pair, "status.example.test")
    leaf, issuer = load_pem(doc["crt"]), load_pem(doc["ca"])
    req = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA1()).build()
    der = req.public_bytes(serialization.Encoding.DER)
    resp = requests.post(ra.http + "/ocsp", data=der, timeout=30,
                         headers={"Content-Type": "application/ocsp-request"})
    assert resp.status_code == 200, resp.text
    answer = ocsp.load_der_ocsp_response(resp.content)
    assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    assert answer.serial_number == leaf.serial_number
    assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
    direct = requests.post(ca.http + "/ocsp", data=der, timeout=30,
                           headers={"Content-Type": "application/ocsp-request"})
    assert resp.content == direct.content  # the CA's bytes, never re-signed
    dp = leaf.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    path = "/crl/" + str(dp[0].full_name[0].value).rsplit("/crl/", 1)[1]  # type: ignore[index]
    ca.cli("crl", "publish", "--authority", "issuing")
    crl = requests.get(ra.http + path, timeout=30)
    assert crl.status_code == 200, path
    assert crl.content == requests.get(ca.http + path, timeout=30).content


def test_the_credential_is_renewed_in_the_background(pair: Pair) -> None:
    ra = pair.ra
    first = load_pem((pair.tmp / "edge-1.pem").read_text())
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        renewed = [e for e in ra.events("ra.credential.renewed") if e["outcome"] == "success"]
        if renewed:
            break
        time.sleep(1)
    else:
        raise AssertionError("the credential was not renewed within 90 s")
    now = load_pem((ra.data_dir / "ra" / "credential.pem").read_text())
    assert now.serial_number != first.serial_number
    assert now.public_key() == first.public_key()  # the same key in the token
    # The workers use it without a restart.
    csr = make_csr(pair.tmp, "DNS:after.example.test", cn="after.example.test")
    resp = ra.sign(csr, ra.token("after.example.test"))
    assert resp.status_code == 201, resp.text


def test_upstream_down_is_503_and_nothing_is_issued(pair: Pair) -> None:
    ra, ca = pair.ra, pair.ca
    before = ra.issued_count()
    # An ACME order made ready while the CA is up...
    client = Client(ra.api + "/acme/acme/directory", ra.roots)
    assert client.register().status_code == 201
    r = client.order(("ip", "127.0.0.1"))
    order = r.json() | {"url": r.headers["Location"]}
    authz = client.post(order["authorizations"][0], None).json()
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    with _answering_http01(pair.http01, client.key_authorization(ch["token"])):
        assert client.post(ch["url"], {}).json()["status"] == "valid"
    ca.stop()
    csr = make_csr(pair.tmp, "DNS:down.example.test", cn="down.example.test")
    resp = ra.sign(csr, ra.token("down.example.test"))
    assert resp.status_code == 503, resp.text
    assert resp.json()["error"] == "upstream_unavailable"
    assert resp.json()["hop"] == "edge-1"  # the node that could not reach its upstream
    # edge-2 below: edge-1 answers it the same, and edge-2 passes edge-1's hop down.
    e2 = pair.edge2
    deep = e2.sign(make_csr(pair.tmp, "DNS:deep-down.example.test", cn="deep-down.example.test"),
                   e2.token("deep-down.example.test"))
    assert deep.status_code == 503, deep.text
    assert deep.json()["error"] == "upstream_unavailable"
    assert deep.json()["hop"] == "edge-1"
    assert int(resp.headers["Retry-After"]) >= 1
    assert ra.issued_count() == before
    down = ra.events("ra.forwarded")[-1]
    assert down["outcome"] == "failure"
    assert down["details"]["decision"] == "upstream unavailable"
    # The RA restarts while the CA is away: it serves with the API certificate it had.
    ra.stop()
    ra = _restart(ra)
    # ...and finalized while it is away stays processing, then completes when it is back.
    key = ec.generate_private_key(ec.SECP256R1())
    acme_csr = (x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
                .add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
                .sign(key, hashes.SHA256()))
    r = client.post(order["finalize"], {"csr": b64(acme_csr.public_bytes(
        serialization.Encoding.DER))})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "processing"
    assert int(r.headers["Retry-After"]) >= 1
    assert ra.issued_count() == before
    again = _restart(ca)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = client.post(order["url"], None).json()
            if state["status"] != "processing":
                break
            time.sleep(1)
        assert state["status"] == "valid", state
        chain = client.post(state["certificate"], None).text
        leaf, *rest = [p + "-----END CERTIFICATE-----\n"
                       for p in chain.split("-----END CERTIFICATE-----\n") if p.strip()]
        assert load_pem(leaf).public_key() == key.public_key()
        assert verify_chain(pair.tmp, pair.root_pem, rest, leaf).returncode == 0
        # Both audit logs are intact.
        for node in (again, ra):
            verified = node.cli("audit", "verify", check=False)
            assert verified.returncode == 0, verified.stdout + verified.stderr
    finally:
        again.stop()
        ra.stop()


def _restart(server: Server) -> Server:
    """``appliance serve`` again on the same ports (the RA's upstream URL names them)."""
    env = dict(os.environ)
    env.pop("SOFTHSM2_CONF", None)
    env.pop("APPLIANCE_CONFIG", None)
    with server.log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "appliance", "--dir", str(server.data_dir), "serve"],
            stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    again = Server(server.data_dir, server.api_port, server.http_port, proc, server.log)
    _wait_ready(again, time.monotonic() + 60)
    return again


@contextlib.contextmanager
def _answering_http01(port: int, key_authorization: str) -> Iterator[None]:
    """A tiny http-01 responder on the port the RA validates against."""
    answer = key_authorization.encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        srv.shutdown()
        srv.server_close()
