"""ACME end to end: real certbot and lego against ``appliance serve``, real SoftHSM, a real
DNS server on 127.0.0.1 (tests/acme_dns.py), real ``openssl ocsp`` and ``openssl verify``.

The appliance validates exactly as the RFCs say, except that this test configures the
port overrides and the resolver a private network would (``acme:`` in appliance.yaml):
names like ``app.test`` resolve to 127.0.0.1 through the test DNS server, and http-01 /
tls-alpn-01 go to the ports the clients listen on. Protocol errors that no real client
sends (bad nonces, reused EAB keys, key change) use tests/acme_client.py.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.server
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.acme_client import Client, b64, jwk_of, sign
from tests.acme_dns import DnsServer
from tests.conftest import run_cli
from tests.service_helpers import (
    Server,
    configure,
    free_port,
    load_pem,
    san_values,
    serving,
)

REPO = Path(__file__).resolve().parents[2]
LEGO_EXEC = REPO / "tests" / "acme_lego_dns_exec.sh"
ARI_CERTBOT = REPO / ".venv-clients" / "bin" / "certbot"  # certbot >= 4.1 speaks ARI

pytestmark = pytest.mark.skipif(not shutil.which("certbot") or not shutil.which("lego"),
                                reason="Debian's certbot and lego are installed by install.sh")


@dataclass
class Env:
    server: Server
    dns: DnsServer
    http01: int
    alpn: int
    records: Path
    work: Path

    def directory(self, provisioner: str = "acme") -> str:
        return f"{self.server.api}/acme/{provisioner}/directory"

    def client(self, provisioner: str = "acme") -> Client:
        return Client(self.directory(provisioner), self.server.roots)

    def eab(self, provisioner: str = "team", policy: Path | None = None) -> tuple[str, str]:
        args = ["eab", "add", "--provisioner", provisioner, "--reference",
                f"ref-{secrets.token_hex(3)}", "--json"]
        if policy is not None:
            args += ["--policy", str(policy)]
        out = json.loads(self.server.cli(*args).stdout)
        return out["key_id"], out["hmac_key"]

    def root_pem(self) -> str:
        (pem,) = self.server.get("/1.0/roots").json()["crts"]
        return str(pem)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    base = tmp_path_factory.mktemp("acme")
    d = base / "data"
    run_cli("quickstart", "--dir", str(d), check=True)
    records = base / "records.txt"
    records.touch()
    http01, alpn = free_port(), free_port()
    with DnsServer(records) as dns:
        configure(d, "acme", http01_port=http01, tls_alpn01_port=alpn,
                  resolvers=[f"127.0.0.1:{dns.port}"], ari_retry_after_seconds=120,
                  caa_identities=["ca.test"])
        run_cli("--dir", str(d), "provisioner", "add", "team", "--type", "acme",
                "--require-eab", check=True)
        with serving(d, rate_limit_per_minute=0) as srv:
            yield Env(srv, dns, http01, alpn, records, base)
        assert srv.proc.returncode == 0, srv.log.read_text()


def _clients_env(env: Env) -> dict[str, str]:
    out = dict(os.environ)
    out.update({"REQUESTS_CA_BUNDLE": str(env.server.roots),
                "LEGO_CA_CERTIFICATES": str(env.server.roots)})
    return out


def certbot(env: Env, home: Path, *args: str, binary: str = "certbot",
            check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [binary, *args, "--non-interactive", "--config-dir", str(home / "conf"),
           "--work-dir", str(home / "work"), "--logs-dir", str(home / "logs")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env=_clients_env(env), check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}\n"
                             + _tail(home / "logs" / "letsencrypt.log"))
    return proc


def certbot_certonly(env: Env, home: Path, *domains: str, provisioner: str = "acme",
                     eab: tuple[str, str] | None = None, binary: str = "certbot",
                     check: bool = True) -> subprocess.CompletedProcess[str]:
    args = ["certonly", "--standalone", "--http-01-port", str(env.http01),
            "--http-01-address", "127.0.0.1", "--agree-tos",
            "--register-unsafely-without-email", "--server", env.directory(provisioner),
            "--cert-name", "main"]
    for name in domains:
        args += ["-d", name]
    if eab is not None:
        args += ["--eab-kid", eab[0], "--eab-hmac-key", eab[1]]
    return certbot(env, home, *args, binary=binary, check=check)


def lego(env: Env, home: Path, *args: str, provisioner: str = "acme",
         eab: tuple[str, str] | None = None, extra_env: dict[str, str] | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["lego", "--path", str(home), "--accept-tos", "--email", "ops@example.com",
           "--server", env.directory(provisioner)]
    if eab is not None:
        cmd += ["--eab", "--kid", eab[0], "--hmac", eab[1]]
    cmd += list(args)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180,
                          env={**_clients_env(env), **(extra_env or {})}, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return ""


def openssl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["openssl", *args], capture_output=True, text=True, timeout=60,
                          check=False)


def ocsp_status(env: Env, leaf: Path, issuer: Path) -> str:
    proc = openssl("ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-url",
                   env.server.http + "/ocsp", "-CAfile", str(env.work / "root.pem"),
                   "-no_nonce")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = re.search(rf"{re.escape(str(leaf))}: (\w+)", proc.stdout)
    assert m, proc.stdout
    return m.group(1)


def split_chain(fullchain: Path, out: Path) -> tuple[Path, Path]:
    pems = re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n?",
                      fullchain.read_text(), re.S)
    assert len(pems) >= 2, "the chain holds the leaf and the issuing CA"
    leaf, issuer = out / "leaf.pem", out / "issuer.pem"
    leaf.write_text(pems[0])
    issuer.write_text(pems[1])
    return leaf, issuer


def verify(env: Env, leaf: Path, issuer: Path) -> None:
    root = env.work / "root.pem"
    root.write_text(env.root_pem())
    proc = openssl("verify", "-CAfile", str(root), "-untrusted", str(issuer), str(leaf))
    assert proc.returncode == 0 and ": OK" in proc.stdout, proc.stdout + proc.stderr


# -- real clients ---------------------------------------------------------------------------


def test_certbot_http01_with_eab_then_revoke_makes_ocsp_revoked(env: Env, tmp_path: Path
                                                                 ) -> None:
    key = env.eab()
    certbot_certonly(env, tmp_path, "web.team.test", provisioner="team", eab=key)
    live = tmp_path / "conf" / "live" / "main"
    leaf, issuer = split_chain(live / "fullchain.pem", tmp_path)
    verify(env, leaf, issuer)
    cert = load_pem(leaf.read_text())
    assert san_values(cert) == ["web.team.test"]
    aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert any(a.access_location.value == env.server.http + "/ocsp" for a in aia)
    cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    assert ocsp_status(env, leaf, issuer) == "good"  # pre-signed at issuance

    accounts = [e for e in env.server.events("acme.account.created")
                if e["object_ids"]["eab_key"] == key[0]]
    assert len(accounts) == 1
    assert any(e["details"]["identifier"]["value"] == "web.team.test"
               and e["details"]["type"] == "http-01"
               for e in env.server.events("acme.challenge.validated"))

    certbot(env, tmp_path, "revoke", "--cert-path", str(live / "cert.pem"), "--reason",
            "keycompromise", "--no-delete-after-revoke", "--server",
            env.directory("team"))
    assert ocsp_status(env, leaf, issuer) == "revoked"
    revoked = env.server.events("certificate.revoked")
    assert revoked[-1]["object_ids"]["serial"] == f"{cert.serial_number:x}"
    assert revoked[-1]["details"]["reason"] == "keyCompromise"


def test_without_eab_refused_where_required(env: Env, tmp_path: Path) -> None:
    proc = certbot_certonly(env, tmp_path / "cb", "noeab.test", provisioner="team",
                            check=False)
    assert proc.returncode != 0
    assert "externalAccountRequired" in proc.stdout + proc.stderr + _tail(
        tmp_path / "cb" / "logs" / "letsencrypt.log", 400)
    proc = lego(env, tmp_path / "lg", "--domains", "noeab.test", "--http", "--http.port",
                f"127.0.0.1:{env.http01}", "run", provisioner="team", check=False)
    assert proc.returncode != 0
    assert "External Account Binding" in proc.stdout + proc.stderr


def test_lego_http01_and_tls_alpn01_with_eab(env: Env, tmp_path: Path) -> None:
    lego(env, tmp_path / "h", "--domains", "h.team.test", "--http", "--http.port",
         f"127.0.0.1:{env.http01}", "run", provisioner="team", eab=env.eab())
    lego(env, tmp_path / "t", "--domains", "t.team.test", "--tls",
         "--tls.port", f"127.0.0.1:{env.alpn}", "run", provisioner="team", eab=env.eab())
    for home, names in ((tmp_path / "h", ["h.team.test"]),
                        (tmp_path / "t", ["t.team.test"])):
        crt = home / "certificates" / f"{names[0]}.crt"
        leaf, issuer = split_chain(crt, home)
        verify(env, leaf, issuer)
        assert sorted(san_values(load_pem(leaf.read_text()))) == sorted(names)
    types = {e["details"]["type"] for e in env.server.events("acme.challenge.validated")}
    assert {"http-01", "tls-alpn-01"} <= types


def test_lego_dns01_wildcard_against_local_dns(env: Env, tmp_path: Path) -> None:
    lego(env, tmp_path, "--domains", "*.wild.test", "--domains", "wild.test", "--dns", "exec",
         "--dns.resolvers", f"127.0.0.1:{env.dns.port}", "--dns.disable-cp", "run",
         extra_env={"EXEC_PATH": str(LEGO_EXEC), "ACME_DNS_RECORDS": str(env.records),
                    "EXEC_PROPAGATION_TIMEOUT": "20", "EXEC_POLLING_INTERVAL": "1",
                    "EXEC_SEQUENCE_INTERVAL": "1"})
    crt = tmp_path / "certificates" / "_.wild.test.crt"
    leaf, issuer = split_chain(crt, tmp_path)
    verify(env, leaf, issuer)
    assert sorted(san_values(load_pem(leaf.read_text()))) == ["*.wild.test", "wild.test"]
    assert any(q[0] == "_acme-challenge.wild.test" and q[1] == "TXT" for q in env.dns.queries)


def test_eab_key_policy_refuses_outside_names(env: Env, tmp_path: Path) -> None:
    pol = tmp_path / "policy.yaml"
    pol.write_text('x509:\n  allow:\n    dns: ["*.team-a.test"]\n')
    key = env.eab(policy=pol)
    home = tmp_path / "lg"
    proc = lego(env, home, "--domains", "db.other.test", "--http", "--http.port",
                f"127.0.0.1:{env.http01}", "run", provisioner="team", eab=key, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "rejectedIdentifier" in out and "db.other.test" in out
    assert f"EAB key {key[0]}" in out, out  # the refusing level is named
    # The same account (lego keeps it) gets a name its policy allows.
    lego(env, home, "--domains", "api.team-a.test", "--http", "--http.port",
         f"127.0.0.1:{env.http01}", "run", provisioner="team", eab=key)


def test_certbot_renews_when_ari_says_so(env: Env, tmp_path: Path) -> None:
    """certbot >= 4.1 (PyPI, in .venv-clients) asks renewalInfo; Debian's 2.1 cannot."""
    if not ARI_CERTBOT.exists():
        pytest.skip("no ARI-capable certbot in .venv-clients (scripts/install.sh makes it)")
    binary = str(ARI_CERTBOT)
    certbot_certonly(env, tmp_path, "ari.test", binary=binary)
    conf = tmp_path / "conf" / "renewal" / "main.conf"
    proc = certbot(env, tmp_path, "renew", "--no-random-sleep-on-renew", binary=binary)
    assert "not yet due for renewal" in proc.stdout + proc.stderr
    # certbot stored the Retry-After our renewalInfo sent (120 s in this configuration).
    m = re.search(r"ari_retry_after = (\S+)", conf.read_text())
    assert m, conf.read_text()
    wait = (datetime.fromisoformat(m.group(1)) - datetime.now()).total_seconds()
    assert 60 < wait <= 125, wait

    live = tmp_path / "conf" / "live" / "main" / "cert.pem"
    serial = f"{load_pem(live.read_text()).serial_number:x}"
    env.server.cli("revoke", serial, "--reason", "superseded")
    conf.write_text(re.sub(r"(?ms)^\[acme_renewal_info\].*?(?=^\[|\Z)", "", conf.read_text()))
    proc = certbot(env, tmp_path, "renew", "-v", "--no-random-sleep-on-renew", binary=binary)
    log = _tail(tmp_path / "logs" / "letsencrypt.log", 4000)
    assert "Congratulations, all renewals succeeded" in proc.stdout + proc.stderr, log
    # ARI decided, before certbot's own OCSP check could ("certificate is revoked").
    assert "Should renew, certificate is revoked" not in log
    renewed = load_pem((tmp_path / "conf" / "live" / "main" / "cert.pem").read_text())
    assert f"{renewed.serial_number:x}" != serial


# -- protocol details (tests/acme_client.py) ------------------------------------------------


def test_directory_and_nonces(env: Env) -> None:
    c = env.client("team")
    assert c.dir["meta"]["externalAccountRequired"] is True
    assert env.client().dir["meta"]["externalAccountRequired"] is False
    for k in ("newNonce", "newAccount", "newOrder", "revokeCert", "keyChange", "renewalInfo"):
        assert c.dir[k].startswith(env.server.api + "/acme/team/")
    r = c.session.get(c.dir["newNonce"], verify=str(env.server.roots), timeout=30)
    assert r.status_code == 204 and r.headers["Cache-Control"] == "no-store"
    assert r.headers["Replay-Nonce"] != c.new_nonce()


def test_bad_nonce_and_replay_refused_with_a_fresh_nonce(env: Env) -> None:
    c = env.client()
    r = c.post(c.dir["newAccount"], {"termsOfServiceAgreed": True}, nonce="AAAA" * 12,
               use_jwk=True)
    assert r.status_code == 400
    assert r.headers["Content-Type"] == "application/problem+json"
    assert r.json()["type"] == "urn:ietf:params:acme:error:badNonce"
    assert r.headers["Replay-Nonce"]
    nonce = c.new_nonce()
    r1 = c.post(c.dir["newAccount"], {"termsOfServiceAgreed": True}, nonce=nonce,
                use_jwk=True)
    assert r1.status_code == 201, r1.text
    r2 = c.post(c.dir["newAccount"], {"termsOfServiceAgreed": True}, nonce=nonce,
                use_jwk=True)
    assert r2.json()["type"] == "urn:ietf:params:acme:error:badNonce"


def test_nonce_made_by_another_process_is_honoured_once(env: Env) -> None:
    """Nonces are MACed with a key in the shared database: a nonce made elsewhere (here, this
    test process) is valid in whichever worker gets it, and only once."""
    with env.server.db() as conn:
        (mac_key,) = conn.execute(
            "SELECT value FROM acme_secrets WHERE name = 'nonce-mac'").fetchone()
    body = int(time.time()).to_bytes(8, "big") + secrets.token_bytes(12)
    nonce = b64(body + hmac.new(mac_key, body, hashlib.sha256).digest()[:16])
    c = env.client()
    r = c.post(c.dir["newAccount"], {"termsOfServiceAgreed": True}, nonce=nonce, use_jwk=True)
    assert r.status_code == 201, r.text
    forged = b64(body + bytes(16))
    r = c.post(c.dir["newAccount"], {}, nonce=forged, use_jwk=True)
    assert r.json()["type"] == "urn:ietf:params:acme:error:badNonce"
    r = c.post(c.dir["newAccount"], {}, nonce=nonce, use_jwk=True)
    assert r.json()["type"] == "urn:ietf:params:acme:error:badNonce"


def test_jws_url_must_match(env: Env) -> None:
    c = env.client()
    r = c.post(c.dir["newAccount"], {"termsOfServiceAgreed": True}, use_jwk=True,
               signed_url=c.dir["newOrder"])
    assert r.status_code == 403 and r.json()["type"].endswith(":unauthorized")


def test_eab_single_use_wrong_mac_and_revoked(env: Env) -> None:
    kid, mac = env.eab()
    wrong = b64(b"x" * 32)
    c = env.client("team")
    r = c.register(eab=(kid, wrong))
    assert r.status_code == 403 and "MAC" in r.json()["detail"]
    assert c.register(eab=(kid, mac)).status_code == 201
    other = env.client("team")
    r = other.register(eab=(kid, mac))
    assert r.status_code == 403 and "already used" in r.json()["detail"]
    # The account is bound; revoking its key shuts it out.
    assert c.order(("dns", "a.team.test")).status_code == 201
    env.server.cli("eab", "revoke", kid)
    r = c.order(("dns", "b.team.test"))
    assert r.status_code == 403 and "revoked" in r.json()["detail"]
    listed = {k["key_id"]: k for k in json.loads(env.server.cli("eab", "list", "--json").stdout)}
    assert listed[kid]["status"] == "revoked"
    assert env.server.events("acme.eab.revoked")[-1]["object_ids"]["eab_key"] == kid
    # An EAB key of another provisioner is unknown here.
    key_other = env.eab(provisioner="acme")
    r = env.client("team").register(eab=key_other)
    assert r.status_code == 403 and "unknown EAB key" in r.json()["detail"]


def test_key_change_and_deactivation(env: Env) -> None:
    c = env.client()
    assert c.register().status_code == 201
    new_key = ec.generate_private_key(ec.SECP256R1())
    inner_protected = {"alg": "ES256", "url": c.dir["keyChange"], "jwk": jwk_of(new_key)}
    inner = sign(new_key, inner_protected, {"account": c.kid, "oldKey": jwk_of(c.key)})
    r = c.post(c.dir["keyChange"], inner)
    assert r.status_code == 200, r.text
    old_key = c.key
    r = c.order(("dns", "old.key.test"))  # still signed with the old key
    assert r.status_code == 403
    c.key = new_key
    assert c.order(("dns", "new.key.test")).status_code == 201
    # the new key now finds the account; the old one finds none
    probe = env.client()
    probe.key = old_key
    r = probe.post(probe.dir["newAccount"], {"onlyReturnExisting": True}, use_jwk=True)
    assert r.json()["type"].endswith(":accountDoesNotExist")
    r = c.post(c.kid or "", {"status": "deactivated"})
    assert r.status_code == 200 and r.json()["status"] == "deactivated"
    r = c.order(("dns", "after.deactivation.test"))
    assert r.status_code == 403 and "deactivated" in r.json()["detail"]
    kinds = {e["event_type"] for e in env.server.events()
             if e["object_ids"].get("account") == (c.kid or "").rsplit("/", 1)[-1]}
    assert {"acme.account.created", "acme.account.key_changed",
            "acme.account.deactivated"} <= kinds


def _csr(*names: str, cn: str | None = None,
         key: ec.EllipticCurvePrivateKey | None = None) -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    b = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    sans: list[x509.GeneralName] = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    b = b.add_extension(x509.SubjectAlternativeName(sans), False)
    return b64(b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER))


def test_order_flow_errors_and_failed_validation_is_audited(env: Env) -> None:
    c = env.client()
    assert c.register().status_code == 201
    r = c.order(("dns", "nobody.listens.test"))
    assert r.status_code == 201
    order_url, order = r.headers["Location"], r.json()
    # reading an order is POST-as-GET; a payload is refused
    assert c.post(order_url, {}).json()["type"].endswith(":malformed")
    assert c.post(order_url, None).json()["status"] == "pending"
    r = c.post(order["finalize"], {"csr": _csr("nobody.listens.test")})
    assert r.status_code == 403 and r.json()["type"].endswith(":orderNotReady")
    authz = c.post(order["authorizations"][0], None).json()
    assert {ch["type"] for ch in authz["challenges"]} == {"http-01", "dns-01", "tls-alpn-01"}
    http01 = next(ch for ch in authz["challenges"] if ch["type"] == "http-01")
    r = c.post(http01["url"], {})  # nothing listens on the http-01 port now
    assert r.status_code == 200 and r.json()["status"] == "invalid"
    assert r.json()["error"]["type"] == "urn:ietf:params:acme:error:connection"
    assert 'rel="up"' in r.headers["Link"]
    assert c.post(order_url, None).json()["status"] == "invalid"
    failed = env.server.events("acme.challenge.failed")[-1]
    assert failed["outcome"] == "failure"
    assert failed["details"]["identifier"]["value"] == "nobody.listens.test"


def test_ip_identifier_and_rejections(env: Env) -> None:
    c = env.client()
    assert c.register().status_code == 201
    r = c.order(("ip", "127.0.0.1"))
    authz = c.post(r.json()["authorizations"][0], None).json()
    assert {ch["type"] for ch in authz["challenges"]} == {"http-01", "tls-alpn-01"}
    order = _ready_order(env, c, "127.0.0.1", "ip")
    r = c.post(order["finalize"], {"csr": _csr("127.0.0.1")})
    assert r.json()["status"] == "valid", r.text
    pems = x509.load_pem_x509_certificates(c.post(r.json()["certificate"], None).content)
    assert san_values(pems[0]) == ["127.0.0.1"]
    r = c.order(("email", "a@b.test"))
    assert r.json()["type"].endswith(":unsupportedIdentifier")
    r = c.order(("dns", "bad_name.test"))
    assert r.json()["type"].endswith(":rejectedIdentifier")
    r = c.order(*[("dns", f"n{i}.test") for i in range(101)])
    assert r.json()["type"].endswith(":malformed")


@contextlib.contextmanager
def _answering_http01(env: Env, key_authorization: str) -> Iterator[None]:
    """A tiny http-01 responder on the port the appliance validates against."""
    answer = key_authorization.encode()

    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *a: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", env.http01), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        srv.shutdown()
        srv.server_close()


def _ready_order(env: Env, c: Client, name: str, kind: str = "dns",
                 **extra: Any) -> dict[str, Any]:
    """An order whose http-01 challenge a tiny local server answers."""
    r = c.order((kind, name), **extra)
    order = r.json() | {"url": r.headers["Location"]}
    authz = c.post(order["authorizations"][0], None).json()
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    with _answering_http01(env, c.key_authorization(ch["token"])):
        assert c.post(ch["url"], {}).json()["status"] == "valid"
    assert c.post(order["url"], None).json()["status"] == "ready"
    return order


def test_finalize_checks_csr_then_download_and_ari(env: Env) -> None:
    c = env.client()
    assert c.register().status_code == 201
    order = _ready_order(env, c, "fin.test")
    r = c.post(order["finalize"], {"csr": _csr("fin.test", "extra.test")})
    assert r.json()["type"].endswith(":badCSR") and "extra.test" in r.json()["detail"]
    r = c.post(order["finalize"], {"csr": _csr("fin.test", cn="other.test")})
    assert r.json()["type"].endswith(":badCSR")
    r = c.post(order["finalize"], {"csr": _csr("fin.test", cn="fin.test")})
    assert r.status_code == 200 and r.json()["status"] == "valid", r.text
    r = c.post(r.json()["certificate"], None)
    assert r.headers["Content-Type"].startswith("application/pem-certificate-chain")
    pems = x509.load_pem_x509_certificates(r.content)
    leaf = pems[0]
    assert len(pems) == 2 and san_values(leaf) == ["fin.test"]
    # another account cannot download it
    other = env.client()
    other.register()
    assert other.post(c.dir["newOrder"].replace("new-order", "cert/") + f"{leaf.serial_number:x}",
                      None).status_code == 404
    # ARI: the window is the last third of the lifetime, until revoked
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    n = leaf.serial_number
    cert_id = f"{b64(aki.key_identifier)}.{b64(n.to_bytes(n.bit_length() // 8 + 1, 'big'))}"
    url = f"{c.dir['renewalInfo']}/{cert_id}"
    r = c.session.get(url, verify=str(env.server.roots), timeout=30)
    assert r.status_code == 200 and r.headers["Retry-After"] == "120"
    w = r.json()["suggestedWindow"]
    start, end = (datetime.fromisoformat(w[k].replace("Z", "+00:00")) for k in ("start", "end"))
    life = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert abs((start - (leaf.not_valid_after_utc - life / 3)).total_seconds()) <= 1
    assert start < end < leaf.not_valid_after_utc
    # revokeCert signed by the certificate's own key is refused for another key...
    der = b64(leaf.public_bytes(serialization.Encoding.DER))
    stranger = env.client()
    r = stranger.post(c.dir["revokeCert"], {"certificate": der, "reason": 1}, use_jwk=True)
    assert r.status_code == 403
    # ... and honoured for the ordering account, once
    r = c.post(c.dir["revokeCert"], {"certificate": der, "reason": 6})
    assert r.json()["type"].endswith(":badRevocationReason")
    assert c.post(c.dir["revokeCert"], {"certificate": der, "reason": 4}).status_code == 200
    r = c.post(c.dir["revokeCert"], {"certificate": der, "reason": 4})
    assert r.json()["type"].endswith(":alreadyRevoked")
    w = c.session.get(url, verify=str(env.server.roots), timeout=30).json()["suggestedWindow"]
    assert datetime.fromisoformat(w["end"].replace("Z", "+00:00")) <= datetime.now(UTC)
    r = c.session.get(f"{c.dir['renewalInfo']}/{b64(b'nope')}.{b64(bytes([1]))}",
                      verify=str(env.server.roots), timeout=30)
    assert r.status_code == 404


def test_revoke_by_certificate_key_and_authorization_deactivation(env: Env) -> None:
    c = env.client()
    assert c.register().status_code == 201
    order = _ready_order(env, c, "bykey.test")
    cert_key = ec.generate_private_key(ec.SECP256R1())
    r = c.post(order["finalize"], {"csr": _csr("bykey.test", key=cert_key)})
    leaf = x509.load_pem_x509_certificates(c.post(r.json()["certificate"], None).content)[0]
    der = b64(leaf.public_bytes(serialization.Encoding.DER))
    holder = env.client()  # no account: the JWS carries the certificate's own key
    holder.key = cert_key
    r = holder.post(holder.dir["revokeCert"], {"certificate": der, "reason": 1}, use_jwk=True)
    assert r.status_code == 200, r.text
    with env.server.db() as conn:
        row = conn.execute("SELECT status, revocation_reason FROM certificates "
                           "WHERE serial_hex = ?", (f"{leaf.serial_number:x}",)).fetchone()
    assert (row["status"], row["revocation_reason"]) == ("revoked", "keyCompromise")
    # an authorization deactivated by its account invalidates its order
    r = c.order(("dns", "deact.test"))
    order_url, authz_url = r.headers["Location"], r.json()["authorizations"][0]
    assert c.post(authz_url, {"status": "valid"}).json()["type"].endswith(":malformed")
    r = c.post(authz_url, {"status": "deactivated"})
    assert r.status_code == 200 and r.json()["status"] == "deactivated"
    assert c.post(order_url, None).json()["status"] == "invalid"
    assert env.server.events("acme.authorization.deactivated")
    # another account cannot read it
    other = env.client()
    other.register()
    assert other.post(authz_url, None).status_code == 404


def test_cli_refuses_bad_acme_settings_and_changes_nothing(env: Env) -> None:
    before = env.server.cli("eab", "list", "--json").stdout
    r = env.server.cli("eab", "add", "--provisioner", "admin", "--reference", "x", check=False)
    assert r.returncode == 1 and "is jwk, not acme" in r.stderr
    r = env.server.cli("eab", "add", "--provisioner", "team", "--reference", "", check=False)
    assert r.returncode == 1 and "--reference" in r.stderr
    r = env.server.cli("provisioner", "add", "bad", "--type", "acme", "--challenges",
                       "http-01,foo-01", check=False)
    assert r.returncode == 2 and "challenges" in r.stderr
    assert env.server.cli("eab", "list", "--json").stdout == before
    r = env.server.cli("provisioner", "show", "bad", check=False)
    assert r.returncode == 1
    shown = json.loads(env.server.cli("provisioner", "show", "team", "--json").stdout)
    assert shown["require_eab"] is True and shown["directory"] == env.directory("team")


def test_rate_limit_answers_rate_limited_problems(env: Env, tmp_path: Path) -> None:
    """new-account, new-order, finalize, key-change, revoke-cert and challenge POSTs share the
    per-client limit (a challenge makes the CA connect out to a host the client names)."""
    from tests.ceremony_helpers import clone_data_dir

    d = clone_data_dir(env.server.data_dir, tmp_path / "data")
    for leftover in ("serve.log",):
        (d / leftover).unlink(missing_ok=True)
    with serving(d, rate_limit_per_minute=6) as srv:  # a burst of 1, then one per 10 s
        c = Client(f"{srv.api}/acme/acme/directory", srv.roots)
        assert c.register().status_code == 201
        r = c.order(("dns", "limited.test"))
        assert r.status_code == 429
        assert r.headers["Content-Type"] == "application/problem+json"
        assert r.json()["type"] == "urn:ietf:params:acme:error:rateLimited"
        assert r.headers["Retry-After"] and r.headers["Replay-Nonce"]
        r = c.post(f"{srv.api}/acme/acme/chall/whatever", {})
        assert r.status_code == 429
        # reads are not limited
        assert c.post(c.kid or "", None).status_code == 200


@pytest.mark.postgres
def test_certbot_issues_and_revokes_on_postgresql(env: Env, tmp_path: Path,
                                                  pg_available: bool,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The same ACME flow with the database on PostgreSQL (several nodes share one CA so):
    the hot paths' SQL, nonces and the audit chain on the other dialect."""
    from tests.conftest import create_pg_database, drop_pg_database, require_pg

    require_pg(pg_available)
    url = create_pg_database()
    try:
        monkeypatch.setenv("APPLIANCE_DATABASE_URL", url)
        d = tmp_path / "data"
        run_cli("quickstart", "--dir", str(d), check=True)
        configure(d, "acme", http01_port=env.http01, resolvers=[f"127.0.0.1:{env.dns.port}"])
        with serving(d) as srv:
            pg_env = Env(srv, env.dns, env.http01, env.alpn, env.records, tmp_path)
            certbot_certonly(pg_env, tmp_path / "cb", "pg.test")
            live = tmp_path / "cb" / "conf" / "live" / "main"
            leaf, issuer = split_chain(live / "fullchain.pem", tmp_path)
            verify(pg_env, leaf, issuer)
            certbot(pg_env, tmp_path / "cb", "revoke", "--cert-path", str(live / "cert.pem"),
                    "--no-delete-after-revoke", "--server", pg_env.directory())
            assert ocsp_status(pg_env, leaf, issuer) == "revoked"
            out = srv.cli("audit", "verify").stdout
            assert "intact" in out, out
        assert srv.proc.returncode == 0, srv.log.read_text()
    finally:
        drop_pg_database(url)


def test_operator_lists_shows_and_revokes_an_account(env: Env) -> None:
    c = env.client()
    contact = f"mailto:ops-{secrets.token_hex(3)}@example.com"
    assert c.register(contact=[contact]).status_code == 201
    account_id = (c.kid or "").rsplit("/", 1)[-1]
    order = _ready_order(env, c, "operator.test")
    r = c.post(order["finalize"], {"csr": _csr("operator.test")})
    assert r.json()["status"] == "valid", r.text
    serial = r.json()["certificate"].rsplit("/", 1)[-1]
    assert c.order(("dns", "second.operator.test")).status_code == 201

    listed = json.loads(env.server.cli("acme", "account", "list", "--provisioner", "acme",
                                       "--status", "valid", "--json").stdout)
    mine = next(a for a in listed if a["id"] == account_id)
    assert mine["contact"] == [contact] and mine["orders"] == 2 and mine["certificates"] == 1
    assert mine["provisioner"] == "acme" and mine["status"] == "valid"
    shown = json.loads(env.server.cli("acme", "account", "show", account_id, "--json").stdout)
    by_name = {o["identifiers"][0]: o for o in shown["recent_orders"]}  # same second: any order
    assert set(by_name) == {"second.operator.test", "operator.test"}
    assert by_name["operator.test"]["certificate_serial"] == serial
    assert by_name["second.operator.test"]["status"] == "pending"
    text = env.server.cli("acme", "account", "show", account_id).stdout
    assert contact in text and serial in text

    env.server.cli("acme", "account", "revoke", account_id, "--reason", "key leaked in CI")
    r = c.order(("dns", "after.operator.test"))
    assert r.status_code == 403 and r.json()["type"].endswith(":unauthorized")
    assert "revoked" in r.json()["detail"]
    (event,) = [e for e in env.server.events("acme.account.revoked")
                if e["object_ids"]["account"] == account_id]
    assert event["details"]["reason"] == "key leaked in CI"
    assert account_id in env.server.cli("acme", "account", "list", "--status",
                                        "revoked").stdout
    # refusals change nothing and say why
    again = env.server.cli("acme", "account", "revoke", account_id, "--reason", "x",
                           check=False)
    assert again.returncode != 0 and "already revoked" in again.stderr
    for bad in (["show", "no/such"], ["show", "nosuchaccount"]):
        r2 = env.server.cli("acme", "account", *bad, check=False)
        assert r2.returncode != 0 and "ACME account" in r2.stderr
    assert env.server.cli("acme", "account", "list", "--limit", "0",
                          check=False).returncode == 2
    assert len([e for e in env.server.events("acme.account.revoked")
                if e["object_ids"]["account"] == account_id]) == 1


def test_prune_deletes_orders_that_ended_long_ago_and_nothing_else(
        env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Orders are made for real; time passing is the ``now`` handed to the pruner, on a
    copy of the data directory (the other tests keep theirs)."""
    from datetime import timedelta

    from appliance import config
    from appliance.audit.log import Actor
    from appliance.ops import acme_retention
    from appliance.runtime import Appliance
    from tests.ceremony_helpers import clone_data_dir

    c = env.client()
    assert c.register().status_code == 201
    t0 = datetime.now(UTC)
    pending = c.order(("dns", "pending.prune.test")).headers["Location"]
    failed = c.order(("dns", "nobody.prune.test"))
    authz = c.post(failed.json()["authorizations"][0], None).json()
    http01 = next(ch for ch in authz["challenges"] if ch["type"] == "http-01")
    assert c.post(http01["url"], {}).json()["status"] == "invalid"
    short = (t0 + timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    order = _ready_order(env, c, "valid.prune.test", notAfter=short)
    r = c.post(order["finalize"], {"csr": _csr("valid.prune.test")})
    assert r.json()["status"] == "valid", r.text
    serial = r.json()["certificate"].rsplit("/", 1)[-1]
    ids = {"pending": pending.rsplit("/", 1)[-1],
           "failed": failed.headers["Location"].rsplit("/", 1)[-1],
           "valid": order["url"].rsplit("/", 1)[-1]}

    # today nothing of this has ended 30 days ago
    dry = json.loads(env.server.cli("acme", "prune", "--dry-run", "--json").stdout)
    assert dry["orders_ended"] == 0 and dry["orders_expired_certificate"] == 0
    bad = env.server.cli("acme", "prune", "--older-than", "soon", check=False)
    assert bad.returncode == 2 and "--older-than" in bad.stderr

    d = clone_data_dir(env.server.data_dir, tmp_path / "copy")
    (d / "serve.log").unlink(missing_ok=True)
    app = Appliance(config.load(d / "appliance.yaml"))
    actor = Actor("test", "operator")

    def left() -> set[str]:
        with app.db.read() as conn:
            rows = conn.exec_driver_sql("SELECT id FROM acme_orders").scalars().all()
        return {k for k, v in ids.items() if v in rows}

    def count(sql: str) -> int:
        with app.db.read() as conn:
            return int(conn.exec_driver_sql(sql).scalar_one())

    try:
        challenges_before = count("SELECT count(*) FROM acme_challenges")
        # 30 days and an hour on: the certificate (10 minutes) ended before the cutoff;
        # the failed and the pending orders expire only a day after they were made
        done = acme_retention.prune(app, timedelta(days=30), actor,
                                    now=t0 + timedelta(days=30, hours=1))
        assert left() == {"pending", "failed"}
        assert done.orders_expired_certificate >= 1
        # two days later both have ended 30 days ago; in batches of one, each audited
        monkeypatch.setattr(acme_retention, "BATCH", 1)
        done = acme_retention.prune(app, timedelta(days=30), actor,
                                    now=t0 + timedelta(days=32))
        assert left() == set() and done.orders_ended >= 2
        # authorizations and challenges went with their orders; nothing else did
        assert count("SELECT count(*) FROM acme_authorizations WHERE order_id IN "
                     f"('{ids['pending']}', '{ids['failed']}', '{ids['valid']}')") == 0
        assert count("SELECT count(*) FROM acme_challenges") < challenges_before
        assert count(f"SELECT count(*) FROM certificates WHERE serial_hex = '{serial}'") == 1
        assert count("SELECT count(*) FROM acme_accounts WHERE id = "
                     f"'{(c.kid or '').rsplit('/', 1)[-1]}'") == 1
        with app.db.read() as conn:
            events = conn.exec_driver_sql(
                "SELECT details FROM audit_events WHERE event_type = 'acme.pruned'"
            ).scalars().all()
        assert sum(json.loads(e).get("orders", 0) for e in events) >= 3
        assert all(json.loads(e).get("orders", 1) == 1 for e in events[1:])  # batches of 1
        # nothing left to do: nothing deleted, nothing audited
        again = acme_retention.prune(app, timedelta(days=30), actor,
                                     now=t0 + timedelta(days=32))
        assert (again.orders_ended, again.orders_expired_certificate) == (0, 0)
    finally:
        app.close()
    verified = run_cli("--dir", str(d), "audit", "verify", check=False)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_caa_is_honoured_after_a_passing_challenge(env: Env) -> None:
    """CAA (RFC 8659, RFC 8657) through the real server: the test DNS server publishes the
    records, the appliance (acme.caa_identities: [ca.test]) reads them after http-01."""
    assert env.client().dir["meta"]["caaIdentities"] == ["ca.test"]
    c = env.client()
    assert c.register().status_code == 201
    env.dns.set_caa("caa-other.test", "issue", "letsencrypt.org")
    r = c.order(("dns", "www.caa-other.test"))
    order_url = r.headers["Location"]
    authz = c.post(r.json()["authorizations"][0], None).json()
    ch = next(x for x in authz["challenges"] if x["type"] == "http-01")
    with _answering_http01(env, c.key_authorization(ch["token"])):
        got = c.post(ch["url"], {}).json()
    assert got["status"] == "invalid", got
    assert got["error"]["type"] == "urn:ietf:params:acme:error:caa"
    assert "letsencrypt.org" in got["error"]["detail"]
    assert c.post(order_url, None).json()["status"] == "invalid"
    failed = env.server.events("acme.challenge.failed")[-1]
    assert failed["details"]["identifier"]["value"] == "www.caa-other.test"
    # bound to this very account (RFC 8657 accounturi): allowed, and the audit says why
    env.dns.set_caa("caa-mine.test", "issue", f"ca.test; accounturi={c.kid}")
    order = _ready_order(env, c, "caa-mine.test")
    r = c.post(order["finalize"], {"csr": _csr("caa-mine.test")})
    assert r.json()["status"] == "valid", r.text
    ok = [e for e in env.server.events("acme.challenge.validated")
          if e["details"]["identifier"]["value"] == "caa-mine.test"]
    assert "CAA at caa-mine.test" in ok[-1]["details"]["checked"]
    # another account is not that account
    other = env.client()
    assert other.register().status_code == 201
    r = other.order(("dns", "caa-mine.test"))
    authz = other.post(r.json()["authorizations"][0], None).json()
    ch = next(x for x in authz["challenges"] if x["type"] == "dns-01")
    env.dns.set_txt("_acme-challenge.caa-mine.test", _dns01_value(other, ch["token"]))
    got = other.post(ch["url"], {}).json()
    assert got["status"] == "invalid" and got["error"]["type"].endswith(":caa"), got


def _dns01_value(c: Client, token: str) -> str:
    from appliance.acme.validation import dns01_txt_value

    return dns01_txt_value(c.key_authorization(token))
