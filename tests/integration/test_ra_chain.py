"""Registration authorities end to end (issue 15): real nodes, real mTLS, real clients.

One topology for the whole module (made once: the suite must stay fast), every node its
own data directory, database, audit log and SoftHSM token, served by ``appliance serve``
on 127.0.0.1::

    CA <- edge-1 <- edge-2      (chained; edge-1's ``ra`` provisioner for edge-2 has a policy)
    CA <- edge-3                (direct)

certbot and lego run against edge-2's ACME directory (EAB on edge-2, challenges validated
by edge-2 against the test DNS server and the clients' own listeners); the REST API is
driven with one-time tokens of each RA's own ``admin`` JWK provisioner (``ra init`` makes
it as quickstart does). What each test asserts is an outcome someone outside could see:
``openssl verify`` against the CA's root, ``openssl ocsp`` against the CA's responder,
the path the CA stored (``appliance cert show --json``), each node's ``audit verify``.

The CA is stopped and restarted in the middle (``test_ca_down_...``) and edge-1 is cut off
at the CA by the LAST test, so the order of the tests in this file matters.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.acme_client import Client, b64
from tests.acme_dns import DnsServer
from tests.ra_helpers import (
    Node,
    cert_show,
    make_ca,
    ra_import,
    ra_init,
    register,
    revoke,
    revoke_as_ra,
    root_pem,
    wait_for,
)
from tests.service_helpers import configure, free_port, san_values

pytestmark = [
    pytest.mark.skipif(not shutil.which("certbot") or not shutil.which("lego"),
                       reason="Debian's certbot and lego are installed by install.sh"),
    pytest.mark.timeout(600),  # the first test also pays for the module's topology
]

DOMAIN = "edge.test"  # what edge-1 lets edge-2 ask for (edge-1's policy for edge-2)
# 127.0.0.1: edge-2's own API certificate comes through edge-1 as well, under this policy.
EDGE2_POLICY = (f'x509:\n  allow:\n    dns: ["*.{DOMAIN}", "{DOMAIN}"]\n'
                '    ip: ["127.0.0.1"]\n')
CONCURRENT = 200
CLIENT_THREADS = 40


@dataclass
class Topology:
    ca: Node
    edge1: Node
    edge2: Node
    edge3: Node
    dns: DnsServer
    http01: int
    work: Path

    @property
    def nodes(self) -> list[Node]:
        return [self.ca, self.edge1, self.edge2, self.edge3]

    @property
    def root(self) -> Path:
        """The CA's root: the only trust anchor any client of any node is given."""
        return self.work / "ca-root.pem"

    def directory(self) -> str:
        return f"{self.edge2.api}/acme/team/directory"

    def eab(self) -> tuple[str, str]:
        out = json.loads(self.edge2.cli("eab", "add", "--provisioner", "team", "--reference",
                                        f"ref-{secrets.token_hex(3)}", "--json").stdout)
        return out["key_id"], out["hmac_key"]


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    base = tmp_path_factory.mktemp("ra")
    records = base / "records.txt"
    records.touch()
    http01 = free_port()
    started: list[Node] = []
    with DnsServer(records) as dns:
        try:
            ca = make_ca(base)
            started.append(ca)
            ca.start()
            (base / "ca-root.pem").write_text(root_pem(ca))
            # edge-1 and edge-3 are independent: their init runs side by side.
            with ThreadPoolExecutor(2) as pool:
                f1 = pool.submit(ra_init, base, "edge-1", ca, ca)
                f3 = pool.submit(ra_init, base, "edge-3", ca, ca)
                (edge1, csr1), (edge3, csr3) = f1.result(), f3.result()
            ra_import(edge1, register(ca, "edge-1", csr1))
            ra_import(edge3, register(ca, "edge-3", csr3))
            started += [edge1, edge3]
            with ThreadPoolExecutor(2) as pool:
                list(pool.map(Node.start, [edge1, edge3]))
            edge2, csr2 = ra_init(base, "edge-2", edge1, ca, retry_interval_seconds=1.0)
            ra_import(edge2, register(edge1, "edge-2", csr2, policy=EDGE2_POLICY))
            configure(edge2.data_dir, "acme", http01_port=http01,
                      resolvers=[f"127.0.0.1:{dns.port}"])
            edge2.cli("provisioner", "add", "team", "--type", "acme", "--require-eab")
            started.append(edge2)
            edge2.start()
            yield Topology(ca, edge1, edge2, edge3, dns, http01, base)
        finally:
            for node in reversed(started):
                node.stop()
    unclean = [n for n in started if not all(n.stopped_cleanly)]
    assert not unclean, "\n".join(  # every serve exited 0 on SIGTERM, nothing left behind
        f"{n.name}: {n.stopped_cleanly}\n" + (n.data_dir / f"serve-{n.starts}.log").read_text(
            errors="replace")[-3000:] for n in unclean)


# -- helpers --------------------------------------------------------------------------------


def csr_pem(*names: str, key: ec.EllipticCurvePrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
           .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def sign(node: Node, *names: str, session: requests.Session | None = None,
         **extra: Any) -> requests.Response:
    """``POST /1.0/sign`` at NODE with a one-time token of NODE's own ``admin``, trusting
    only the CA's root (an RA's API certificate is issued through its upstream)."""
    srv = node.srv
    body = {"csr": csr_pem(*names), "ott": srv.token(*names), **extra}
    s = session or srv.session
    root = node.data_dir.parent / "ca-root.pem"  # written by the fixture
    return s.post(node.api + "/1.0/sign", json=body, verify=str(root), timeout=90)


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def split(pems: str, out: Path) -> tuple[Path, Path]:
    found = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?", pems,
                       re.S)
    assert len(found) >= 2, f"the chain holds the leaf and the issuing CA:\n{pems}"
    out.mkdir(parents=True, exist_ok=True)
    leaf, issuer = out / f"leaf-{secrets.token_hex(3)}.pem", out / "issuer.pem"
    leaf.write_text(found[0])
    issuer.write_text("".join(found[1:]))
    return leaf, issuer


def verify(topo: Topology, leaf: Path, issuer: Path) -> None:
    proc = openssl("verify", "-CAfile", str(topo.root), "-untrusted", str(issuer), str(leaf))
    assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr


def ocsp_status(topo: Topology, leaf: Path, issuer: Path, via: Node | None = None) -> str:
    """The CA's OCSP answer, from the CA's responder or relayed by an RA (``via``); either
    way the response is checked against the CA's root (signed by the CA, never an RA)."""
    proc = openssl("ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-url",
                   (via or topo.ca).http + "/ocsp", "-CAfile", str(topo.root), "-no_nonce")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(rf"{re.escape(str(leaf))}: (\w+)", proc.stdout)
    assert m, proc.stdout
    return m.group(1)


def serial_of(leaf: Path) -> str:
    return f"{x509.load_pem_x509_certificate(leaf.read_bytes()).serial_number:x}"


def ra_path(topo: Topology, serial: str) -> Any:
    return cert_show(topo.ca, serial)["ra_path"]


def refusal(r: requests.Response) -> dict[str, Any]:
    assert r.headers.get("Content-Type", "").startswith("application/json"), r.text
    body: dict[str, Any] = r.json()
    return body


def _clients_env(topo: Topology) -> dict[str, str]:
    return {**os.environ, "REQUESTS_CA_BUNDLE": str(topo.root),
            "LEGO_CA_CERTIFICATES": str(topo.root)}


# -- the topology ---------------------------------------------------------------------------


def test_ra_nodes_hold_no_ca_keys_and_serve_under_the_ca_root(topo: Topology) -> None:
    for node in (topo.edge1, topo.edge2, topo.edge3):
        labels = {k["label"] for k in json.loads(node.cli("hsm", "keys", "--json").stdout)}
        assert labels == {"audit-key", "ra-credential"}, (node.name, labels)
        # Its API answers under a certificate issued through its upstream.
        r = requests.get(node.api + "/1.0/health", verify=str(topo.root), timeout=10)
        assert r.status_code == 200, (node.name, r.text)
    at_ca = {r["name"]: r for r in json.loads(topo.ca.cli("ra", "list", "--json").stdout)}
    assert {"edge-1", "edge-2", "edge-3"} <= set(at_ca), at_ca
    # edge-2 was registered through edge-1: the CA knows it as edge-1's child.
    assert at_ca["edge-2"]["parent"] == "edge-1", at_ca["edge-2"]
    assert at_ca["edge-1"]["parent"] in (None, "-") and at_ca["edge-1"]["state"] == "enabled"
    at_edge1 = {r["name"] for r in json.loads(topo.edge1.cli("ra", "list", "--json").stdout)}
    assert "edge-2" in at_edge1


# -- real ACME clients against edge-2 -------------------------------------------------------


def test_certbot_through_two_hops(topo: Topology, tmp_path: Path) -> None:
    kid, mac = topo.eab()
    name = f"www.{DOMAIN}"
    cmd = ["certbot", "certonly", "--standalone", "--http-01-port", str(topo.http01),
           "--http-01-address", "127.0.0.1", "--agree-tos", "--register-unsafely-without-email",
           "--server", topo.directory(), "--cert-name", "main", "-d", name,
           "--eab-kid", kid, "--eab-hmac-key", mac, "--non-interactive",
           "--config-dir", str(tmp_path / "conf"), "--work-dir", str(tmp_path / "work"),
           "--logs-dir", str(tmp_path / "logs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env=_clients_env(topo), check=False)
    log = tmp_path / "logs" / "letsencrypt.log"
    assert proc.returncode == 0, proc.stdout + proc.stderr + (
        log.read_text()[-6000:] if log.exists() else "")
    leaf, issuer = split((tmp_path / "conf" / "live" / "main" / "fullchain.pem").read_text(),
                         tmp_path)
    verify(topo, leaf, issuer)
    assert san_values(x509.load_pem_x509_certificate(leaf.read_bytes())) == [name]
    serial = serial_of(leaf)
    assert ra_path(topo, serial) == ["edge-2", "edge-1"]
    shown = topo.ca.cli("cert", "show", serial).stdout
    assert "edge-2 → edge-1 → CA" in shown, shown
    # Every hop audited the forwarding, with the CA's answer (the serial); the CA audited
    # the issuance with the path.
    for node in (topo.edge2, topo.edge1):
        assert any(serial in json.dumps(e) for e in node.events("ra.forwarded")), node.name
    assert any(e["object_ids"]["serial"] == serial
               and e["details"].get("ra_path") == ["edge-2", "edge-1"]
               for e in topo.ca.events("certificate.issued"))


def test_lego_through_two_hops(topo: Topology, tmp_path: Path) -> None:
    kid, mac = topo.eab()
    name = f"lego.{DOMAIN}"
    cmd = ["lego", "--path", str(tmp_path), "--accept-tos", "--email", "ops@example.com",
           "--server", topo.directory(), "--eab", "--kid", kid, "--hmac", mac,
           "--domains", name, "--http", "--http.port", f"127.0.0.1:{topo.http01}", "run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env=_clients_env(topo), check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    leaf, issuer = split((tmp_path / "certificates" / f"{name}.crt").read_text(), tmp_path)
    verify(topo, leaf, issuer)
    assert ra_path(topo, serial_of(leaf)) == ["edge-2", "edge-1"]


# -- the REST API ---------------------------------------------------------------------------


def test_sign_with_edge3_jwk_token(topo: Topology, tmp_path: Path) -> None:
    name = "direct.edge3.test"
    r = sign(topo.edge3, name)
    assert r.status_code == 201, r.text
    body = r.json()
    leaf, issuer = split("".join(body["certChain"]), tmp_path)
    verify(topo, leaf, issuer)
    serial = body["serial"]
    assert serial == serial_of(leaf)
    shown = cert_show(topo.ca, serial)
    assert shown["ra_path"] == ["edge-3"]
    assert "edge-3" in shown["requester"] and "admin" in shown["requester"], shown
    assert shown["provisioner"] == "edge-3"
    # edge-3 keeps what it forwarded, as issued, with the same path.
    local = cert_show(topo.edge3, serial)
    assert local["status"] == "issued" and local["ra_path"] == ["edge-3"], local


def test_renew_by_mtls_through_two_hops(topo: Topology, tmp_path: Path) -> None:
    """The holder renews at edge-2 with its certificate (mTLS); the CA renews it, along
    the same path, and every hop keeps the renewed copy."""
    name = f"renew.{DOMAIN}"
    key = ec.generate_private_key(ec.SECP256R1())
    srv = topo.edge2.srv
    r = srv.session.post(topo.edge2.api + "/1.0/sign", verify=str(topo.root), timeout=90,
                         json={"csr": csr_pem(name, key=key), "ott": srv.token(name)})
    assert r.status_code == 201, r.text
    old = r.json()
    crt, pem_key = tmp_path / "holder.crt", tmp_path / "holder.key"
    crt.write_text(old["crt"] + old["ca"])
    pem_key.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    r = requests.post(topo.edge2.api + "/1.0/renew", cert=(str(crt), str(pem_key)),
                      verify=str(topo.root), timeout=90)
    assert r.status_code == 201, r.text
    new = r.json()
    leaf, issuer = split("".join(new["certChain"]), tmp_path)
    verify(topo, leaf, issuer)
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert new["serial"] != old["serial"] and san_values(cert) == [name]
    shown = cert_show(topo.ca, new["serial"])
    assert shown["renewed_from"] == old["serial"], shown
    assert shown["ra_path"] == ["edge-2", "edge-1"], shown
    assert cert_show(topo.edge2, new["serial"])["status"] == "issued"


@contextlib.contextmanager
def ca_caps_edge3(topo: Topology, cap: str) -> Iterator[None]:
    """The CA's ``ra`` provisioner for edge-3 with ``--max-duration CAP`` for the block."""
    topo.ca.cli("provisioner", "update", "edge-3", "--max-duration", cap)
    try:
        yield
    finally:
        topo.ca.cli("provisioner", "update", "edge-3", "--max-duration", "24h")


def test_an_ra_cannot_lengthen_what_its_parent_allows(topo: Topology) -> None:
    """edge-3's own claims allow 20 h; the CA's ``ra`` provisioner for edge-3 allows 12 h:
    the CA decides again, and refuses, naming itself."""
    srv = topo.edge3.srv
    with ca_caps_edge3(topo, "12h"):
        name = "long.edge3.test"
        r = srv.session.post(topo.edge3.api + "/1.0/sign", verify=str(topo.root), timeout=90,
                             json={"csr": csr_pem(name),
                                   "ott": srv.token(name, cert_lifetime=20 * 3600)})
        assert r.status_code == 400, r.text
        assert refusal(r)["hop"] == "CA" and "43200" in r.json()["message"], r.text
        name = "short.edge3.test"
        r = srv.session.post(topo.edge3.api + "/1.0/sign", verify=str(topo.root), timeout=90,
                             json={"csr": csr_pem(name),
                                   "ott": srv.token(name, cert_lifetime=6 * 3600)})
        assert r.status_code == 201, r.text


def test_a_default_lifetime_through_an_ra_fits_the_parents_cap(topo: Topology) -> None:
    with ca_caps_edge3(topo, "12h"):
        r = sign(topo.edge3, "default.edge3.test")
        assert r.status_code == 201, r.text
        cert = x509.load_pem_x509_certificate(r.json()["crt"].encode())
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life.total_seconds() <= 12 * 3600 + 120


def test_name_edge1_refuses_is_refused_naming_edge1(topo: Topology) -> None:
    before = set(topo.ca.offline().certificate_rows())
    name = "db.elsewhere.test"  # edge-2 has no policy of its own: it would allow this
    r = sign(topo.edge2, name)
    body = refusal(r)
    assert r.status_code == 403, r.text
    assert body["hop"] == "edge-1", body
    assert body["message"].startswith("refused at edge-1: "), body
    assert name in body["message"], body
    assert set(topo.ca.offline().certificate_rows()) == before  # the CA never saw it
    # edge-2 audited the refusal its upstream answered, naming the refusing hop.
    assert any(name in json.dumps(e) and "edge-1" in json.dumps(e)
               for e in topo.edge2.events("ra.forwarded")), topo.edge2.events("ra.forwarded")
    # A name edge-1 allows goes through from the same requester.
    assert sign(topo.edge2, f"ok.{DOMAIN}").status_code == 201


def test_revoke_through_edge2_shows_in_ca_ocsp(topo: Topology, tmp_path: Path) -> None:
    r = sign(topo.edge2, f"revoke-me.{DOMAIN}")
    assert r.status_code == 201, r.text
    leaf, issuer = split("".join(r.json()["certChain"]), tmp_path)
    serial = r.json()["serial"]
    assert ocsp_status(topo, leaf, issuer) == "good"
    done = revoke(topo.edge2, serial, reason=1)
    assert done.status_code == 200, done.text
    assert done.json()["reason"] == "keyCompromise"
    assert ocsp_status(topo, leaf, issuer) == "revoked"
    # edge-2's own private network asks edge-2, which relays the CA's signed answer.
    assert ocsp_status(topo, leaf, issuer, via=topo.edge2) == "revoked"
    assert cert_show(topo.ca, serial)["status"] == "revoked"
    assert cert_show(topo.edge2, serial)["status"] == "revoked"  # its copy follows
    assert any(e["object_ids"].get("serial") == serial
               for e in topo.ca.events("certificate.revoked"))


def test_edge3_cannot_revoke_edge2_certificate(topo: Topology, tmp_path: Path) -> None:
    r = sign(topo.edge2, f"not-yours.{DOMAIN}")
    assert r.status_code == 201, r.text
    leaf, issuer = split("".join(r.json()["certChain"]), tmp_path)
    serial = r.json()["serial"]
    # Through edge-3's API: edge-3 never forwarded it, so it refuses itself.
    refused = revoke(topo.edge3, serial)
    assert refused.status_code == 404, refused.text  # as the CA answers another provisioner
    assert refusal(refused)["hop"] == "edge-3", refused.text  # every refusal at an RA names it
    # Straight to the CA with edge-3's credential and assertion: the CA refuses, since
    # edge-3 is not on the certificate's stored path.
    direct = revoke_as_ra(topo.edge3, serial)
    assert direct["status"] == 403 and direct["hop"] == "CA", direct
    assert ocsp_status(topo, leaf, issuer) == "good"
    assert cert_show(topo.ca, serial)["status"] == "issued"


def test_concurrent_signs_through_the_chain_get_unique_serials(topo: Topology) -> None:
    srv = topo.edge2.srv
    names = [f"c{i}-{secrets.token_hex(2)}.{DOMAIN}" for i in range(CONCURRENT)]
    bodies = [json.dumps({"csr": csr_pem(n), "ott": srv.token(n)}) for n in names]
    local = threading.local()
    root = str(topo.root)

    def post(body: str) -> tuple[int, dict[str, Any]]:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = requests.Session()
        r = s.post(topo.edge2.api + "/1.0/sign", data=body, verify=root, timeout=120,
                   headers={"Content-Type": "application/json"})
        return r.status_code, (r.json() if r.content else {})

    t0 = time.monotonic()
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        results = list(pool.map(post, bodies))
    elapsed = time.monotonic() - t0
    bad = [(s, b) for s, b in results if s != 201]
    assert not bad, f"{len(bad)} of {CONCURRENT} failed, e.g. {bad[:3]}"
    serials = {b["serial"] for _, b in results}
    assert len(serials) == CONCURRENT, f"{CONCURRENT - len(serials)} duplicate serials"
    rows = topo.ca.offline().certificate_rows()
    assert serials <= set(rows)
    assert all(json.loads(rows[s]["ra_path"]) == ["edge-2", "edge-1"] for s in serials)
    print(f"{CONCURRENT} signs through edge-2 -> edge-1 -> CA at {CLIENT_THREADS} clients: "
          f"{elapsed:.1f} s")


# -- the CA down, then back -----------------------------------------------------------------


@contextlib.contextmanager
def answering_http01(port: int, key_authorization: str) -> Iterator[None]:
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


def test_ca_down_503_and_nothing_issued_then_pending_order_completes(topo: Topology,
                                                                     tmp_path: Path) -> None:
    name = f"pending.{DOMAIN}"
    c = Client(topo.directory(), topo.root)
    assert c.register(eab=topo.eab()).status_code == 201
    r = c.order(("dns", name))
    assert r.status_code == 201, r.text
    order_url = r.headers["Location"]
    order = r.json()
    authz = c.post(order["authorizations"][0], None).json()
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    with answering_http01(topo.http01, c.key_authorization(ch["token"])):
        c.post(ch["url"], {})
        wait_for(lambda: c.post(order_url, None).json()["status"] == "ready", 30,
                 what="the order to be ready")

    ca_before = set(topo.ca.offline().certificate_rows())
    edge2_issued = topo.edge2.offline().issued_count()
    topo.ca.stop()
    try:
        r = sign(topo.edge2, f"while-down.{DOMAIN}")
        assert r.status_code == 503, r.text
        assert r.json()["error"] == "upstream_unavailable", r.text  # REST errors: "error"
        assert int(r.headers["Retry-After"]) > 0
        key = ec.generate_private_key(ec.SECP256R1())
        der = x509.load_pem_x509_csr(csr_pem(name, key=key).encode()).public_bytes(
            serialization.Encoding.DER)
        fin = c.post(order["finalize"], {"csr": b64(der)})
        assert fin.status_code in (200, 503), fin.text
        assert c.post(order_url, None).json()["status"] in ("processing", "ready"), fin.text
        time.sleep(1.5)  # a retry or two of edge-2's queue while the CA is away
        assert c.post(order_url, None).json()["status"] == "processing"
        assert set(topo.ca.offline().certificate_rows()) == ca_before
        assert topo.edge2.offline().issued_count() == edge2_issued
    finally:
        topo.ca.start()
    done = wait_for(lambda: (o := c.post(order_url, None).json())["status"] == "valid" and o,
                    60, interval=0.5, what="the pending order to complete")
    pems = c.post(done["certificate"], None).text
    leaf, issuer = split(pems, tmp_path)
    verify(topo, leaf, issuer)
    cert = x509.load_pem_x509_certificate(leaf.read_bytes())
    assert san_values(cert) == [name]
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    assert ra_path(topo, serial_of(leaf)) == ["edge-2", "edge-1"]


# -- integrity, then the cut (LAST) ---------------------------------------------------------


def _audit_intact(topo: Topology) -> None:
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(Node.audit_verify, topo.nodes))
    for node, proc in zip(topo.nodes, results, strict=True):
        assert proc.returncode == 0, f"{node.name}: {proc.stdout}\n{proc.stderr}"


def test_every_node_audit_log_verifies(topo: Topology) -> None:
    _audit_intact(topo)


def test_edge1_disabled_at_ca_cuts_edge1_and_edge2(topo: Topology) -> None:
    assert sign(topo.edge1, f"before.{DOMAIN}").status_code == 201
    topo.ca.cli("provisioner", "update", "edge-1", "--disable")
    before = set(topo.ca.offline().certificate_rows())
    for node, name in ((topo.edge1, f"cut.{DOMAIN}"), (topo.edge2, f"cut2.{DOMAIN}")):
        r = sign(node, name)
        assert r.status_code in (401, 403), (node.name, r.status_code, r.text)
        assert refusal(r)["hop"] == "CA", r.text
    assert set(topo.ca.offline().certificate_rows()) == before
    # edge-3 is not below edge-1: unaffected.
    assert sign(topo.edge3, "still.edge3.test").status_code == 201
    listed = {r["name"]: r for r in json.loads(topo.ca.cli("ra", "list", "--json").stdout)}
    assert listed["edge-1"]["state"] == "disabled", listed["edge-1"]
    assert listed["edge-2"]["state"] == "cut off (RA edge-1 above it is disabled)", listed
    assert listed["edge-3"]["state"] == "enabled", listed
    assert listed["edge-1"]["last_contact"] and listed["edge-3"]["last_contact"], listed
    below1 = {r["name"]: r for r in json.loads(topo.edge1.cli("ra", "list", "--json").stdout)}
    assert below1["edge-2"]["last_contact"], below1
    _audit_intact(topo)
    assert any("edge-1" in json.dumps(e) for e in topo.ca.events()
               if "provisioner" in e["event_type"])
