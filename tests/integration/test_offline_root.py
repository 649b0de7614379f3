"""An offline root: its key in a token of its own that the online service never opens.

``quickstart --offline-root`` makes two nodes: the offline root's (role offline-root: its
own token, database and audit log; it never serves) and the online one, whose token holds
only the issuing and OCSP keys. The tests look into both tokens with pkcs11-tool, serve the
online node, issue and check the chain, OCSP and CRLs with OpenSSL, revoke the issuing CA
by the offline node's crl ceremony, and show that serve refuses to start when the
configuration says the root is offline but the token can reach a root key.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from appliance.hsm import softhsm
from tests.ceremony_helpers import cli, openssl, run_ceremony, write_script
from tests.conftest import run_cli
from tests.service_helpers import Server, make_csr, serving


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("offline-root")
    online, offline = base / "online", base / "vault"
    run_cli("quickstart", "--dir", str(online), "--offline-root", "--offline-dir", str(offline),
            check=True)
    return online, offline


@pytest.fixture(scope="module")
def server(nodes: tuple[Path, Path]) -> Iterator[Server]:
    online, _ = nodes
    with serving(online) as s:
        # After serving moved public_base_url to the test's port (the leaves' CRL DP).
        s.cli("crl", "publish")
        yield s


def _token_objects(data_dir: Path, kind: str) -> str:
    """``pkcs11-tool --list-objects`` of a data directory's token (throw-away test PIN)."""
    pin = (data_dir / "secrets" / "user.pin").read_text().strip()
    env = dict(os.environ, SOFTHSM2_CONF=str(data_dir / "softhsm" / "softhsm2.conf"))
    proc = subprocess.run(
        ["pkcs11-tool", "--module", str(softhsm.find_module()), "--login", "--pin", pin,
         "--list-objects", "--type", kind], capture_output=True, text=True, env=env,
        timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _labels(listing: str) -> set[str]:
    return set(re.findall(r"label:\s+(\S+)", listing))


def _root_pem(offline: Path) -> bytes:
    (pem,) = offline.glob("ceremonies/*-offline-root/root.pem")
    return pem.read_bytes()


def test_the_online_token_holds_no_root_key(nodes: tuple[Path, Path]) -> None:
    online, offline = nodes
    root = x509.load_pem_x509_certificate(_root_pem(offline))
    online_priv = _token_objects(online, "privkey")
    offline_priv = _token_objects(offline, "privkey")
    assert "root-ca" in _labels(offline_priv)
    assert "root-ca" not in _labels(online_priv)
    assert _labels(online_priv) == {"audit-key", "issuing-ca", "issuing-ocsp"}
    # Not under another label either: no public key object in the online token is the root's.
    point = root.public_key().public_bytes(serialization.Encoding.X962,
                                           serialization.PublicFormat.UncompressedPoint).hex()
    online_pub = _token_objects(online, "pubkey").replace(" ", "").replace("\n", "").lower()
    offline_pub = _token_objects(offline, "pubkey").replace(" ", "").replace("\n", "").lower()
    assert point in offline_pub and point not in online_pub
    # What the appliance itself reports agrees.
    keys = json.loads(cli(online, "hsm", "keys", "--json", check=True).stdout)
    assert {k["label"] for k in keys} == {"audit-key", "issuing-ca", "issuing-ocsp"}
    authorities = {a["name"]: a for a in json.loads(
        cli(online, "authority", "list", "--json", check=True).stdout)}
    assert authorities["root"]["kind"] == "external-root"
    assert authorities["root"]["key_label"] is None
    assert authorities["issuing"]["parent"] == "root"


def test_each_node_has_its_own_audit_log_and_transcripts(nodes: tuple[Path, Path]) -> None:
    online, offline = nodes
    for node in nodes:
        assert cli(node, "audit", "verify", check=True).returncode == 0
    exported = cli(offline, "audit", "export", check=True).stdout
    types = [json.loads(line)["event_type"] for line in exported.splitlines()]
    assert "certificate.signed" in types and "crl.signed" in types
    online_types = [json.loads(line)["event_type"] for line in
                    cli(online, "audit", "export", check=True).stdout.splitlines()]
    assert "ceremony.import" in online_types and "crl.imported" in online_types
    for transcript in [*offline.glob("ceremonies/*/transcript.json"),
                       *online.glob("ceremonies/*/transcript.json")]:
        node = offline if offline in transcript.parents else online
        assert cli(node, "ceremony", "verify", str(transcript)).returncode == 0


def test_issuance_ocsp_and_crls_work_with_the_root_offline(server: Server, nodes: tuple[Path, Path],
                                                          tmp_path: Path) -> None:
    _, offline = nodes
    roots = server.get("/1.0/roots").json()["crts"]
    assert [x509.load_pem_x509_certificate(r.encode()) for r in roots] == [
        x509.load_pem_x509_certificate(_root_pem(offline))]
    csr = make_csr(tmp_path, "DNS:web.example.com", cn="web.example.com")
    r = server.sign(csr, server.token("web.example.com"))
    assert r.status_code == 201, r.text
    body = r.json()
    (tmp_path / "root.pem").write_bytes(_root_pem(offline))
    (tmp_path / "issuing.pem").write_text(body["ca"])
    (tmp_path / "leaf.pem").write_text(body["crt"])
    for name in ("root", "issuing"):
        crl = requests.get(f"{server.http}/crl/{name}.crl", timeout=10)
        assert crl.status_code == 200
        (tmp_path / f"{name}.crl").write_bytes(crl.content)
    openssl("crl", "-inform", "DER", "-in", str(tmp_path / "root.crl"),
            "-out", str(tmp_path / "root-crl.pem"))
    openssl("crl", "-inform", "DER", "-in", str(tmp_path / "issuing.crl"),
            "-out", str(tmp_path / "issuing-crl.pem"))
    # Each certificate against its issuer's CRL (the root's CRL from the offline ceremony).
    ok = openssl("verify", "-crl_check", "-CRLfile", str(tmp_path / "issuing-crl.pem"),
                 "-CAfile", str(tmp_path / "root.pem"), "-untrusted",
                 str(tmp_path / "issuing.pem"), str(tmp_path / "leaf.pem"))
    assert "leaf.pem: OK" in ok.stdout
    ok = openssl("verify", "-crl_check", "-CRLfile", str(tmp_path / "root-crl.pem"),
                 "-CAfile", str(tmp_path / "root.pem"), str(tmp_path / "issuing.pem"))
    assert "issuing.pem: OK" in ok.stdout
    status = openssl("ocsp", "-issuer", str(tmp_path / "issuing.pem"), "-cert",
                     str(tmp_path / "leaf.pem"), "-url", f"{server.http}/ocsp",
                     "-CAfile", str(tmp_path / "root.pem"), "-verify_other",
                     str(tmp_path / "issuing.pem"))
    assert "leaf.pem: good" in status.stdout
    assert "Response verify OK" in status.stdout + status.stderr


def test_no_root_ceremony_on_the_online_node(nodes: tuple[Path, Path], tmp_path: Path) -> None:
    online, _ = nodes
    script = write_script(tmp_path / "root.yaml", {
        "version": 1, "name": "sneaky-root", "operators": ["Mallory"],
        "steps": [{"id": "k", "type": "key", "label": "another-root", "key_type": "ec-p256"},
                  {"id": "r", "type": "root", "key": "k", "authority": "another",
                   "subject": {"CN": "Another Root"}, "validity": {"days": 30}}]})
    # The key step is a token key like any other; the root step is refused.
    result = run_ceremony(online, script, tmp_path / "rec")
    assert result.returncode != 0
    assert "root is offline" in result.stdout + result.stderr
    assert "another" not in cli(online, "authority", "list", check=True).stdout.split()


def test_the_offline_node_revokes_the_issuing_ca_by_its_crl_ceremony(
        nodes: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    # On copies: the served nodes above keep their state.
    from tests.ceremony_helpers import clone_data_dir

    base = tmp_path_factory.mktemp("revoke-issuing")
    online, offline = (clone_data_dir(n, base / n.name) for n in nodes)
    script = write_script(base / "revoke.yaml", {
        "version": 1, "name": "revoke-issuing", "operators": ["Root Officer"],
        "steps": [{"id": "arl", "type": "crl", "issuer": "root", "next_update_days": 30,
                   "crl_url": "http://127.0.0.1:8080/crl/root.crl",
                   "revoke_authorities": ["issuing"]}]})
    run_ceremony(offline, script, base / "rec", check=True)
    crl_file = base / "rec" / "arl.crl"
    issuing = x509.load_pem_x509_certificate(
        next(offline.glob("ceremonies/*-sign-issuing/issuing.pem")).read_bytes())
    crl = x509.load_der_x509_crl(crl_file.read_bytes())
    assert crl.get_revoked_certificate_by_serial_number(issuing.serial_number) is not None
    out = cli(online, "crl", "import", str(crl_file), "--authority", "root", check=True)
    assert "CRL #2" in out.stdout
    # The same CRL again is not newer: refused, nothing changes.
    again = cli(online, "crl", "import", str(crl_file), "--authority", "root")
    assert again.returncode != 0 and "not newer" in again.stderr
    # A CRL signed by another key is refused.
    other = next(online.glob("ceremonies/*-issuing-import/*.pem"))
    bad = cli(online, "crl", "import", str(other), "--authority", "root")
    assert bad.returncode != 0


def test_serve_refuses_when_the_root_key_is_reachable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("quickstart", "--dir", str(data), check=True)
    cfg = yaml.safe_load((data / "appliance.yaml").read_text())
    cfg.setdefault("hsm", {})["root_offline"] = True
    (data / "appliance.yaml").write_text(yaml.safe_dump(cfg))
    result = cli(data, "serve")
    assert result.returncode != 0
    assert "root is offline" in result.stderr and "root (token key 'root-ca')" in result.stderr


def test_sign_csr_checks_what_it_signs(nodes: tuple[Path, Path], tmp_path_factory:
                                       pytest.TempPathFactory) -> None:
    from tests.ceremony_helpers import clone_data_dir

    base = tmp_path_factory.mktemp("sign-csr")
    offline = clone_data_dir(nodes[1], base / "vault")
    work = base / "work"
    csr = make_csr(work, cn="Sub CA")
    (work / "sub.csr").write_text(csr)

    def sign(**step: object) -> subprocess.CompletedProcess[str]:
        doc = {"id": "sub", "type": "sign-csr", "csr": str(work / "sub.csr"), "issuer": "root",
               "authority": f"sub-{len(list(base.glob('rec-*')))}",
               "validity": {"days": 30}, "crl_urls": ["http://127.0.0.1:8080/crl/root.crl"],
               "ca_issuers_urls": ["http://127.0.0.1:8080/ca/root.crt"], **step}
        script = write_script(base / f"s-{len(list(base.glob('s-*')))}.yaml", {
            "version": 1, "name": "sign-sub", "operators": ["Root Officer"], "steps": [doc]})
        return run_ceremony(offline, script, base / f"rec-{len(list(base.glob('rec-*')))}")

    wrong_hash = sign(csr_sha256="0" * 64)
    assert wrong_hash.returncode != 0 and "not the" in wrong_hash.stdout + wrong_hash.stderr
    wrong_subject = sign(subject={"CN": "Someone Else"})
    assert wrong_subject.returncode != 0
    # The root has path length 1 and the issuing CA is below it already: a sub-CA with room
    # for more CAs below it is refused by the profile, one of path length 0 is signed.
    assert sign(path_length=1).returncode != 0
    done = sign(path_length=0)
    assert done.returncode == 0, done.stdout + done.stderr
    (rec,) = [p for p in base.glob("rec-*") if (p / "sub.pem").exists()]
    cert = x509.load_pem_x509_certificate((rec / "sub.pem").read_bytes())
    assert cert.subject.rfc4514_string() == "CN=Sub CA"
    assert (rec / "sub-chain.pem").read_bytes().count(b"BEGIN CERTIFICATE") == 2


def test_quickstart_writes_its_public_base_url_into_the_ca_certificates(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run_cli("quickstart", "--dir", str(data), "--public-base-url", "http://pki.example.test:8080",
            check=True)
    cfg = yaml.safe_load((data / "appliance.yaml").read_text())
    assert cfg["service"]["public_base_url"] == "http://pki.example.test:8080"
    issuing = json.loads(cli(data, "authority", "list", "--json", check=True).stdout)
    assert {a["name"] for a in issuing} >= {"root", "issuing", "issuing-ocsp"}
    (pem,) = data.glob("ceremonies/*-quickstart/issuing.pem")
    cert = x509.load_pem_x509_certificate(pem.read_bytes())
    dp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    assert dp[0].full_name[0].value == "http://pki.example.test:8080/crl/root.crl"
    # The script as run is kept, with the URL it carried.
    assert "pki.example.test" in (data / "ceremony-scripts" / "quickstart.yaml").read_text()
    bad = run_cli("quickstart", "--dir", str(tmp_path / "other"), "--public-base-url",
                  "ftp://x")
    assert bad.returncode == 2 and not (tmp_path / "other").exists()
    # Serving with another base URL: the CA still points at the old one, and serve says so.
    with serving(data) as server:
        pass
    log = server.log.read_text()
    assert "outside service.public_base_url" in log and "pki.example.test" in log
